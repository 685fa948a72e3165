"""What the benchmark scripts share: quiet library logging, timers that log or synchronise the device, Beam metric sums."""
from __future__ import annotations

import io
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

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


def metric_sums(result, name: str) -> dict[str, tuple[float, int]]:
    """Namespace -> (sum, count) of the ``name`` distributions (committed, else attempted) over the run."""
    query = result.metrics().query(MetricsFilter().with_name(name))
    sums: dict[str, tuple[float, int]] = {}
    for entry in query["distributions"]:
        value = entry.committed or entry.attempted
        if value is not None:
            total, count = sums.get(entry.key.metric.namespace, (0.0, 0))
            sums[entry.key.metric.namespace] = (total + value.sum, count + value.count)
    return sums
