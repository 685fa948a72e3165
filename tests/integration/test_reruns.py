"""Re-running into a folder that holds a finished run: refused, or replaced so no reader takes a mix."""
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
import yaml

import pipeline.finalize
from jobs import ingest
from pipeline.build import load_candidate_set
from pipeline.finalize import STATS, check_ledgers, holds_finished_run
from pipeline.runners import TEMP_FOLDER
from pipeline.testing import write_candidate_set
from transforms.io.shards import ShardMismatch


def _argv(samples_dir, output, *extra):
    return ["--input", str(samples_dir / "images"), "--output", str(output), *extra]


@pytest.fixture()
def finished(samples_dir, tmp_path):
    output = tmp_path / "run"
    ingest.run(_argv(samples_dir, output))
    return output


def _files(folder):
    return {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in folder.iterdir() if path.is_file()}


def test_a_finished_run_in_output_is_refused_in_one_line_before_any_work(samples_dir, finished, caplog):
    before = _files(finished)
    assert ingest.main(_argv(samples_dir, finished, "--jpeg_quality", "60")) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert errors == [f"{finished} already holds a finished run ({STATS}); pass --overwrite to replace it"]
    assert _files(finished) == before


def test_overwrite_replaces_the_run_and_is_not_recorded_in_its_config(samples_dir, finished):
    first = (finished / "lineage.json").read_text()
    stats = ingest.run(_argv(samples_dir, finished, "--jpeg_quality", "60", "--overwrite"))
    assert stats["ledger"]["closed"] and holds_finished_run(str(finished))
    assert "overwrite" not in yaml.safe_load((finished / "config.yaml").read_text())
    assert (finished / "lineage.json").read_text() != first


def test_a_replacement_killed_after_its_shards_leaves_a_folder_every_reader_refuses(samples_dir, finished, monkeypatch):
    """The issue's mix: new shards and manifest beside the old stats and lineage; it must not read as finished."""
    def killed(*_):
        raise RuntimeError("killed after the shards and the manifest were replaced")

    monkeypatch.setattr(pipeline.finalize, "content_digest", killed)
    with pytest.raises(Exception, match="killed after"):
        ingest.run(_argv(samples_dir, finished, "--jpeg_quality", "60", "--overwrite"))
    monkeypatch.undo()
    assert not holds_finished_run(str(finished))
    with pytest.raises(Exception):
        check_ledgers(str(finished))
    with pytest.raises(ValueError, match=f"not a finished bootstrap run \\(no {STATS}\\)"):
        load_candidate_set(str(finished))
    # An unfinished folder is resumed without --overwrite and ends finished with the new configuration.
    stats = ingest.run(_argv(samples_dir, finished, "--jpeg_quality", "60"))
    assert stats["ledger"]["closed"] and "jpeg_quality: 60" in (finished / "config.yaml").read_text()


def test_build_refuses_a_folder_whose_shards_are_not_the_ones_its_manifest_lists(tmp_path):
    """A killed re-run's mix: the old stats.json and manifest beside shards the re-run replaced."""
    finished_run = write_candidate_set(tmp_path / "run", 6, seed=1)
    rerun = write_candidate_set(tmp_path / "rerun", 6, seed=2)
    for shard in rerun.glob("shard-*"):
        shutil.copy(shard, finished_run / shard.name)
    with pytest.raises(ShardMismatch, match="does not match the manifest"):
        load_candidate_set(str(finished_run))


def test_rejections_and_shards_are_byte_identical_for_one_and_two_workers(samples_dir, tmp_path):
    """rejected.parquet's row order must not depend on which worker rejected what."""
    outputs = []
    for workers in (1, 2):
        output = tmp_path / f"workers-{workers}"
        stats = ingest.run(["--input", str(samples_dir / "broken"), "--output", str(output), "--name", "demo", "--local_workers", str(workers)])
        assert stats["ledger"]["closed"] and sum(stats["ledger"]["rejected"].values()) >= 5
        outputs.append(output)
    for name in ("rejected.parquet", "dead_letters.jsonl", "shardindex.json"):
        assert (outputs[0] / name).read_bytes() == (outputs[1] / name).read_bytes(), name


def _beam_temp_folders(folder: pathlib.Path) -> list[str]:
    return sorted(str(path) for path in folder.rglob("beam-pipeline-temp*"))


def test_a_killed_run_leaks_no_beam_temp_folder_and_the_next_run_clears_its_own(samples_dir, tmp_path):
    tmpdir, output = tmp_path / "tmpdir", tmp_path / "run"
    tmpdir.mkdir()
    command = [sys.executable, "-m", "jobs.cli", "ingest", *_argv(samples_dir, output)]
    repo = pathlib.Path(__file__).resolve().parents[2]
    process = subprocess.Popen(command, cwd=repo, env={**os.environ, "TMPDIR": str(tmpdir)}, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, seen_in_tmpdir = time.monotonic() + 120, []
        while not _beam_temp_folders(output) and process.poll() is None:
            if seen_in_tmpdir and seen_in_tmpdir == _beam_temp_folders(tmpdir):
                break  # one that stays there (Beam's own place: the leak)
            seen_in_tmpdir = _beam_temp_folders(tmpdir)
            assert time.monotonic() < deadline, "the run never made its temp folder"
            time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert _beam_temp_folders(tmpdir) == []
    assert len(_beam_temp_folders(output / TEMP_FOLDER)) == 1  # the killed run's, inside the output
    stats = ingest.run(_argv(samples_dir, output))  # resumes the unfinished output
    assert stats["ledger"]["closed"] and not (output / TEMP_FOLDER).exists()
    assert _beam_temp_folders(tmpdir) == []
