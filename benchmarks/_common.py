"""What the benchmark scripts share: quiet library logging and a timer that logs."""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

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
