"""One GPU per model-loading process: ``device: cuda`` takes a GPU of the host no one else holds.

A worker VM with several GPUs runs several SDK processes (Dataflow starts one per core
unless told otherwise; the local runner one per ``--direct_num_workers``). If each of them
loaded its models on ``cuda``, PyTorch's default ``cuda:0``, every copy would land on the
first GPU and the others would idle. :func:`claim_device` gives a process the
lowest-numbered GPU that no other process of the host has claimed, holding an advisory
``flock`` on a per-GPU file until the process exits (so a crashed worker frees its GPU);
every later load of the process (its other models, a retry copy) lands on the same GPU.
``cuda:N`` pins a GPU and claims nothing.

When every GPU is claimed (more loading processes than GPUs) the process shares the GPU
of its process id modulo the count, with a warning: slower, never a failed job.
"""
from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Optional, TypeVar

LOG = logging.getLogger(__name__)

Config = TypeVar("Config")

#: Where the per-GPU lock files live; every process of a host must see the same folder.
LOCK_DIR_ENV = "COUNTERFACTORY_GPU_LOCKS"

#: The GPU this process claimed (index, held lock file or None when sharing), once it has.
_claimed: tuple[int, IO[bytes] | None] | None = None
_lock = threading.Lock()


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "counterfactory-gpus")


def claim_device(device: str, gpu_count: int | None = None) -> str:
    """``cuda`` -> ``cuda:N``, this process's GPU, claimed on first use; any other device as given.

    ``gpu_count`` defaults to ``torch.cuda.device_count()`` (GPUs visible to this process,
    so ``CUDA_VISIBLE_DEVICES`` narrows the choice as usual).
    """
    global _claimed
    if device != "cuda":
        return device
    with _lock:
        if _claimed is None:
            _claimed = _claim(gpu_count)
        return f"cuda:{_claimed[0]}"


def _claim(gpu_count: int | None) -> tuple[int, IO[bytes] | None]:
    """The lowest GPU whose lock this process can take, else a shared one by process id."""
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count()
    if gpu_count < 1:
        raise RuntimeError("device 'cuda' asked for, but no CUDA GPU is visible to this process")
    # GPU indices are per visible set: two processes with different CUDA_VISIBLE_DEVICES must not share lock names.
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "all").replace(",", "-") or "none"
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(gpu_count):
        handle = open(folder / f"visible-{visible}.gpu-{index}.lock", "ab")  # noqa: SIM115 - held for the process
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        LOG.info("process %d claimed cuda:%d of %d", os.getpid(), index, gpu_count)
        return index, handle
    shared = os.getpid() % gpu_count
    LOG.warning("all %d GPUs are claimed by other processes; process %d shares cuda:%d (more model-loading "
                "processes than GPUs: see docs/running-on-clusters.md)", gpu_count, os.getpid(), shared)
    return shared, None


def on_claimed_device(config: Config) -> Config:
    """A model config (a frozen dataclass with ``device``) with ``cuda`` replaced by this process's GPU."""
    device = claim_device(config.device)
    return config if device == config.device else dataclasses.replace(config, device=device)


_gpu_thread_lock = threading.Lock()
_gpu_thread: Optional[tuple[int, ThreadPoolExecutor]] = None


def gpu_thread() -> ThreadPoolExecutor:
    """This process's one GPU-feeding thread, created on first use, shared by every model that submits to it.

    One thread orders all GPU work of the process (calls from many Beam threads queue on it
    while their CPU work overlaps), and inductor's CUDA-graph trees keep their state in the
    thread that first compiled: a second thread replaying CUDA graphs fails an assertion in
    ``torch._inductor.cudagraph_trees``. A forked child makes its own.
    """
    global _gpu_thread
    with _gpu_thread_lock:
        if _gpu_thread is None or _gpu_thread[0] != os.getpid():
            _gpu_thread = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="counterfactory-gpu"))
        return _gpu_thread[1]
