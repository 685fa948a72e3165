"""A full disk or a refused write fails at once, in one line, and leaves no partial file behind."""
import errno
import logging
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from jobs import ingest
from jobs.common import cli_main
from transforms.io.files import PARTIAL_SUFFIX, StorageError, publish, storage_failure, with_retries

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a real tmpfs (``options``) on a fresh folder; skipped where this machine cannot."""
    mounted = []

    def mount(options: str) -> pathlib.Path:
        folder = tmp_path / f"mnt{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def test_full_disk_fails_the_run_in_one_line_without_retries_or_partials(tmpfs, caplog):
    """Ingest into a 1 MiB filesystem: one attempt per file, no .partial left, the run says 'disk full'."""
    output = tmpfs("size=1m") / "out"
    with caplog.at_level(logging.WARNING):
        assert cli_main(ingest.run, ["--output", str(output)]) == 1
    lines = [record.getMessage() for record in caplog.records if record.name == "jobs.common"]
    assert len(lines) == 1 and lines[0].startswith(f"disk full writing {output}/") and "\n" not in lines[0]
    assert lines[0].endswith(": No space left on device")
    assert not [r for r in caplog.records if r.getMessage().startswith("retrying")]
    assert not list(output.glob(f"*{PARTIAL_SUFFIX}"))


def test_read_only_filesystem_is_refused_at_once(tmpfs):
    folder = tmpfs("ro,size=1m")
    with pytest.raises(StorageError, match=rf"^\[Errno {errno.EROFS}\] read-only file system writing {folder}/a.tar: "):
        publish(str(folder / "a.tar"), b"x" * 10)


def test_permission_denied_is_one_line_and_leaves_nothing(tmp_path):
    """As another user (root bypasses permissions): EACCES is told as 'permission denied writing ...'."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to write as an unprivileged user")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    script = f"import sys; sys.path.insert(0, {str(REPO)!r}); from transforms.io.files import publish; publish({str(locked / 'a.tar')!r}, b'x')"
    result = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert f"StorageError: [Errno 13] permission denied writing {locked}/a.tar: Permission denied" in result.stderr
    assert "retrying" not in result.stderr and not list(locked.iterdir())


def test_permanent_errors_are_not_retried_and_transient_ones_are():
    calls = []

    def full():
        calls.append(1)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StorageError) as raised:
        with_retries(full, base_delay_s=0, what="writing out/x.tar")
    assert len(calls) == 1 and str(raised.value.strerror) == "disk full writing out/x.tar: No space left on device"
    # As a runner reports it: the worker's exception as text inside another one.
    wrapped = RuntimeError(f"transforms.io.files.StorageError: {raised.value} [while running 'WriteShards/WriteBuckets']")
    assert storage_failure(wrapped) == "disk full writing out/x.tar: No space left on device"
    assert storage_failure(RuntimeError("something else")) is None
