"""What the benchmark scripts share: quiet library logging, timers that log or synchronise the device, Beam metric
sums and maxima, the code's git commit."""
from __future__ import annotations

import io
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

import numpy as np
from apache_beam.metrics.metric import MetricsFilter
from PIL import Image

from schemas import SourceImage, content_sha256, source_key

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger("benchmark")


def quiet_logging() -> None:
    """Benchmark lines only: the library's INFO progress would drown them."""
    # force: importing Beam already gave the root logger a WARNING handler (its apitools notice).
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    for name in ("apache_beam", "transforms", "pipeline", "jobs"):
        logging.getLogger(name).setLevel(logging.WARNING)


def timed(label: str, function: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[float, Any]:
    """(seconds, result) of ``function(*args, **kwargs)``."""
    started = time.perf_counter()
    result = function(*args, **kwargs)
    elapsed = time.perf_counter() - started
    LOG.info("%s: %.2f s", label, elapsed)
    return elapsed, result


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a host clock reads the device's time."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed_calls(call: Callable[[int], object], calls: int, device: torch.device, warmup: int = 1) -> float:
    """Seconds for ``call(0..calls-1)`` after ``warmup`` untimed calls (negative indices), device synchronised."""
    for index in range(warmup):
        call(-1 - index)
    synchronize(device)
    started = time.perf_counter()
    for index in range(calls):
        call(index)
    synchronize(device)
    return time.perf_counter() - started


def synthetic_source(rgb: np.ndarray) -> SourceImage:
    """A JPEG (quality 90) ``SourceImage`` of a synthetic ``HxWx3`` uint8 picture, keyed by its content."""
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    digest = content_sha256(jpeg)
    key = source_key(digest)
    height, width = rgb.shape[:2]
    return SourceImage(key=key, sha256=digest, uri=f"synthetic:{key}", width=width, height=height, jpeg=jpeg)


def _distributions(result, name: str):
    """(namespace, value) of each ``name`` distribution of a run (committed, else attempted) that has one."""
    for entry in result.metrics().query(MetricsFilter().with_name(name))["distributions"]:
        value = entry.committed or entry.attempted
        if value is not None:
            yield entry.key.metric.namespace, value


def metric_sums(result, name: str) -> dict[str, tuple[float, int]]:
    """Namespace -> (sum, count) of the ``name`` distributions (committed, else attempted) over the run."""
    sums: dict[str, tuple[float, int]] = {}
    for namespace, value in _distributions(result, name):
        total, count = sums.get(namespace, (0.0, 0))
        sums[namespace] = (total + value.sum, count + value.count)
    return sums


def metric_maxima(result, name: str) -> dict[str, float]:
    """Namespace -> the largest value of the ``name`` distributions (committed, else attempted)."""
    maxima: dict[str, float] = {}
    for namespace, value in _distributions(result, name):
        if value.count:
            maxima[namespace] = max(maxima.get(namespace, 0.0), value.max)
    return maxima


def git_commit() -> Optional[str]:
    """The code's commit: ``GIT_COMMIT`` first (a copied working tree, a GPU machine's, may carry a stale .git)."""
    commit = os.environ.get("GIT_COMMIT")
    if commit:
        return commit
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
