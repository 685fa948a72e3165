"""A process-wide thread pool for the CPU side of model handlers: JPEG decoding, resizing, PNG encoding.

Pillow and OpenCV release the GIL in their codecs and resampling, so this work runs in
parallel with itself and with the thread that feeds the GPU. Done inline it adds up
between GPU calls: on an H100 the SAM vit_h handler spent about as long decoding, resizing
and PNG-encoding as in its image encoder.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Enough to hide the CPU work of a batch behind its GPU work without crowding other workers.
MAX_WORKERS = min(8, os.cpu_count() or 1)

_lock = threading.Lock()
_pool: Optional[ThreadPoolExecutor] = None
_pool_pid: Optional[int] = None


def cpu_pool() -> ThreadPoolExecutor:
    """This process's pool, created on first use (a forked child makes its own: threads do not survive fork)."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=MAX_WORKERS, thread_name_prefix="counterfactory-cpu")
            _pool_pid = os.getpid()
        return _pool


def cpu_map(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[function(item) for item in items]``, in order, on the pool; the first exception propagates.

    Tasks must not wait on other tasks of the pool (a full pool would deadlock).
    """
    items = list(items)
    if len(items) <= 1:
        return [function(item) for item in items]
    return list(cpu_pool().map(function, items))


__all__ = ["MAX_WORKERS", "cpu_map", "cpu_pool"]
