"""One GPU per model-loading process: lock-file claims across processes, the same GPU for every load of one."""
import logging
import os
import subprocess
import sys
import textwrap

import pytest

from transforms.models import gpus

HOLDER = textwrap.dedent("""
    import sys
    from transforms.models.gpus import claim_device
    print(claim_device("cuda", gpu_count=2), flush=True)
    sys.stdin.readline()
""")


@pytest.fixture(autouse=True)
def fresh_claims(tmp_path, monkeypatch):
    monkeypatch.setenv(gpus.LOCK_DIR_ENV, str(tmp_path))
    monkeypatch.setattr(gpus, "_claimed", None)
    yield
    if gpus._claimed is not None and gpus._claimed[1] is not None:
        gpus._claimed[1].close()


def _holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, gpus.LOCK_DIR_ENV: str(tmp_path)})
    return holder, holder.stdout.readline().strip()


def test_other_devices_are_left_alone():
    assert [gpus.claim_device(d, gpu_count=2) for d in ("cpu", "cuda:1", "cuda:0")] == ["cpu", "cuda:1", "cuda:0"]
    assert gpus._claimed is None


def test_every_load_of_a_process_lands_on_its_gpu():
    assert {gpus.claim_device("cuda", gpu_count=2) for _ in range(3)} == {"cuda:0"}


def test_processes_take_distinct_gpus_and_free_them_when_they_exit(tmp_path):
    holder, device = _holder(tmp_path)
    assert device == "cuda:0"
    assert gpus.claim_device("cuda", gpu_count=2) == "cuda:1"
    holder.communicate("\n")
    other, device = _holder(tmp_path)  # the exited holder's GPU is free again
    assert device == "cuda:0"
    other.communicate("\n")


def test_more_processes_than_gpus_share_with_a_warning(tmp_path, caplog):
    holder, device = _holder(tmp_path)
    assert device == "cuda:0"
    with caplog.at_level(logging.WARNING):
        assert gpus.claim_device("cuda", gpu_count=1) == f"cuda:{os.getpid() % 1}"
    assert "all 1 GPUs are claimed by other processes" in caplog.text
    holder.communicate("\n")


def test_no_visible_gpu_is_an_error():
    with pytest.raises(RuntimeError, match="no CUDA GPU is visible"):
        gpus.claim_device("cuda", gpu_count=0)


def test_a_config_gets_the_claimed_gpu_and_keeps_everything_else():
    from transforms.models.detection import DetectorConfig

    cpu = DetectorConfig(model="m", device="cpu")
    assert gpus.on_claimed_device(cpu) is cpu
    pinned = DetectorConfig(model="m", device="cuda:1")
    assert gpus.on_claimed_device(pinned) is pinned
    gpus.claim_device("cuda", gpu_count=2)  # this process holds cuda:0 from here on
    claimed = gpus.on_claimed_device(DetectorConfig(model="m", device="cuda", max_batch_size=3))
    assert (claimed.device, claimed.max_batch_size) == ("cuda:0", 3)
