"""How a stage's DoFn reports its three kinds of outcome.

Every stage keeps three outcomes apart (DESIGN.md, "Bad records are data"):

* kept records go to the main output;
* expected rejections are yielded as :class:`schemas.Rejection` and routed to the
  ``rejected`` output, counted per reason code;
* exceptions are caught per element by Beam's ``with_exception_handling`` and become
  :class:`schemas.DeadLetter` records carrying the traceback; the other elements of the
  bundle are unaffected.

Transient infrastructure errors are not handled here: they propagate out of
:func:`with_retries` after its attempts and Beam retries the bundle.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Iterable, NamedTuple, Sequence, TypeVar

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.pvalue import TaggedOutput

from schemas import DeadLetter, Rejection

LOG = logging.getLogger(__name__)

MAIN = "main"
REJECTED = "rejected"
DEAD_LETTERS = "dead_letters"

#: Seconds between two progress lines of one stage in one worker process.
PROGRESS_INTERVAL_S = 10.0

T = TypeVar("T")


class _Progress:
    """A per-process, rate-limited progress line per stage ("decode: 1200 records, 85.3/s")."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._last_logged: dict[str, float] = {}

    def tick(self, stage: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._counts[stage] = self._counts.get(stage, 0) + 1
            started = self._started.setdefault(stage, now)
            if now - self._last_logged.get(stage, started) < PROGRESS_INTERVAL_S:
                return
            self._last_logged[stage] = now
            count = self._counts[stage]
        LOG.info("%s: %d records (%.1f/s)", stage, count, count / max(now - started, 1e-9))


PROGRESS = _Progress()


class StageDoFn(beam.DoFn):
    """Base DoFn of a stage: subclasses implement :meth:`process_record`.

    Metrics are in the ``counterfactory.<stage>`` namespace with units in their names:
    ``records_in_count``, ``records_out_count``, ``rejected_<reason>_count`` and the
    ``process_time_msec`` distribution.
    """

    stage: str = ""

    def __init__(self) -> None:
        super().__init__()
        if not self.stage:
            raise TypeError(f"{type(self).__name__} must set a stage name")

    def process_record(self, element: Any, *args: Any, **kwargs: Any) -> Iterable[Any]:
        raise NotImplementedError

    # No annotations here: Beam would read them as type hints for every subclass.
    def process(self, element, *args, **kwargs):
        namespace = f"counterfactory.{self.stage}"
        Metrics.counter(namespace, "records_in_count").inc()
        started = time.perf_counter()
        for output in self.process_record(element, *args, **kwargs):
            if isinstance(output, Rejection):
                Metrics.counter(namespace, f"rejected_{output.reason.value}_count").inc()
                yield TaggedOutput(REJECTED, output)
            else:
                Metrics.counter(namespace, "records_out_count").inc()
                yield output
        Metrics.distribution(namespace, "process_time_msec").update(int((time.perf_counter() - started) * 1000))
        PROGRESS.tick(self.stage)


class StageOutputs(NamedTuple):
    """The three outputs of a stage applied with :func:`apply_stage` (a PTransform may return it)."""

    main: beam.PCollection
    rejected: beam.PCollection
    dead_letters: beam.PCollection


def describe(element: Any) -> tuple[str, str]:
    """(uri, key) of an element for its dead letter, whatever record type it is.

    A tuple (a keyed record, a record with what was decided about it) is described by its
    first item that has a uri.
    """
    if isinstance(element, str):  # a path: what file-reading stages take
        return element, ""
    if isinstance(element, PredictionResult):
        element = element.example
    elif isinstance(element, tuple) and element and not hasattr(element, "uri"):
        element = next((item for item in element if hasattr(item, "uri")), element[-1])
    return str(getattr(element, "uri", "") or ""), str(getattr(element, "key", "") or "")


def to_dead_letter(bad: tuple, stage: str) -> DeadLetter:
    """A dead letter from what Beam's exception handling yields: ``(element, (type, repr, traceback))``."""
    element, (exc_type, exc_repr, traceback_lines) = bad
    uri, key = describe(element)
    Metrics.counter(f"counterfactory.{stage}", "dead_letter_count").inc()
    LOG.warning("%s: dead letter for %s: %s", stage, uri or key or "<element>", exc_repr)
    return DeadLetter(
        uri=uri,
        stage=stage,
        error_type=getattr(exc_type, "__name__", str(exc_type)),
        error=exc_repr,
        traceback="".join(traceback_lines),
        key=key,
    )


def apply_stage(pcoll: beam.PCollection, label: str, dofn: StageDoFn, *args: Any, **kwargs: Any) -> StageOutputs:
    """Apply a stage so that one failing element becomes one dead letter, never a failed job."""
    outputs, _ = apply_tagged_stage(pcoll, label, dofn, (), *args, **kwargs)
    return outputs


def apply_tagged_stage(pcoll: beam.PCollection, label: str, dofn: StageDoFn, extra_tags: Sequence[str],
                       *args: Any, **kwargs: Any) -> tuple[StageOutputs, dict[str, beam.PCollection]]:
    """:func:`apply_stage` for a DoFn that also yields ``TaggedOutput(tag, ...)`` for each of ``extra_tags``."""
    tags = {REJECTED: Rejection, **{tag: Any for tag in extra_tags}}
    pardo = beam.ParDo(dofn, *args, **kwargs).with_output_types(Any, **tags)
    results = pcoll | label >> pardo.with_exception_handling(
        main_tag=MAIN, dead_letter_tag=DEAD_LETTERS
    ).with_outputs(REJECTED, *extra_tags, main=MAIN)
    dead = results[DEAD_LETTERS] | f"{label}DeadLetters" >> beam.Map(to_dead_letter, stage=dofn.stage)
    outputs = StageOutputs(main=results[MAIN], rejected=results[REJECTED], dead_letters=dead)
    return outputs, {tag: results[tag] for tag in extra_tags}


def with_retries(operation: Callable[[], T], *, attempts: int = 3, base_delay_s: float = 0.5, what: str = "") -> T:
    """Run an I/O operation, retrying ``OSError`` with exponential backoff.

    For transient storage errors (a GCS 503, an NFS hiccup). The last error propagates:
    inside :func:`apply_stage` it becomes a dead letter for that one record.
    """
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except OSError as error:
            if attempt == attempts:
                raise
            delay = base_delay_s * 2 ** (attempt - 1)
            LOG.warning("retrying %s after %s (attempt %d/%d, %.1fs)", what or "I/O", error, attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")
