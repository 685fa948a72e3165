"""Stages: one public PTransform per step of a job, accounting for every record it takes.

Every stage keeps three outcomes apart (DESIGN.md, "Bad records are data"):

* kept records go to its main output;
* expected rejections are yielded as :class:`schemas.Rejection` and routed to the
  ``rejected`` output, counted per reason code;
* exceptions are caught per record by Beam's ``with_exception_handling`` and become
  :class:`schemas.DeadLetter` records carrying the traceback; the other records of the
  bundle are unaffected.

A :class:`Stage` subclass gives its name, the ledger its records count in, and a
picklable function of one record (:meth:`Stage.record_fn`); the base applies it and, when
the stage is applied, registers its flow and its side outputs with the run's accounts
(:class:`~transforms.ledger.RunAccounts`). Graph code therefore shows only the data path
and cannot forget a rejection or a dead letter, and every stage's conservation (records
in = out + rejected + dead letters, record by record) is checked when the run finishes,
which is how a record that vanishes without an exception is found (datatrove's
``BaseFilter``: a filter says keep or why not, the base does the bookkeeping).

Transient infrastructure errors are not handled here: they propagate out of
:func:`~transforms.io.files.with_retries` after its attempts and Beam retries the bundle.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, NamedTuple, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from schemas import DeadLetter, Rejection
from transforms.ledger import MAIN_LEDGER, RunAccounts, describe, record_key

LOG = logging.getLogger(__name__)

MAIN = "main"
REJECTED = "rejected"
DEAD_LETTERS = "dead_letters"

#: Seconds between two progress lines of one stage in one worker process.
PROGRESS_INTERVAL_S = 10.0

#: A stage's work on one record: kept records, :class:`Rejection` s and ``TaggedOutput`` s of its extra tags.
RecordFunction = Callable[[Any], Iterable[Any]]


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


class StageFn(beam.DoFn):
    """The DoFn every stage runs: one record through its function, outputs sorted by kind.

    Metrics are in the ``counterfactory.<stage>`` namespace with units in their names:
    ``records_in_count``, ``records_out_count``, ``rejected_<reason>_count`` and the
    ``process_time_msec`` distribution.
    """

    def __init__(self, stage: str, function: RecordFunction) -> None:
        super().__init__()
        if not stage:
            raise TypeError("a stage needs a name")
        self.stage = stage
        self._function = function

    # No annotations here: Beam would read them as type hints.
    def process(self, element):
        namespace = f"counterfactory.{self.stage}"
        Metrics.counter(namespace, "records_in_count").inc()
        started = time.perf_counter()
        for output in self._function(element):
            if isinstance(output, Rejection):
                Metrics.counter(namespace, f"rejected_{output.reason.value}_count").inc()
                yield TaggedOutput(REJECTED, output)
            else:
                if not isinstance(output, TaggedOutput):
                    Metrics.counter(namespace, "records_out_count").inc()
                yield output
        Metrics.distribution(namespace, "process_time_msec").update(int((time.perf_counter() - started) * 1000))
        PROGRESS.tick(self.stage)


class StageOutputs(NamedTuple):
    """Everything a stage's DoFn gave: kept records, rejections, dead letters and its extra tags."""

    main: beam.PCollection
    rejected: beam.PCollection
    dead_letters: beam.PCollection
    extra: Mapping[str, beam.PCollection]


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


def apply_record_function(records: beam.PCollection, label: str, stage: str, function: RecordFunction,
                          extra_tags: Sequence[str] = ()) -> StageOutputs:
    """Run ``function`` on every record so that one failing record becomes one dead letter, never a failed job.

    Registers nothing: :class:`Stage` and the model stage build on it and do their own accounting.
    """
    tags = {REJECTED: Rejection, **{tag: Any for tag in extra_tags}}
    pardo = beam.ParDo(StageFn(stage, function)).with_output_types(Any, **tags)
    results = records | label >> pardo.with_exception_handling(
        main_tag=MAIN, dead_letter_tag=DEAD_LETTERS
    ).with_outputs(REJECTED, *extra_tags, main=MAIN)
    dead = results[DEAD_LETTERS] | f"{label}DeadLetters" >> beam.Map(to_dead_letter, stage=stage)
    return StageOutputs(results[MAIN], results[REJECTED], dead, {tag: results[tag] for tag in extra_tags})


class Stage(beam.PTransform):
    """Base of every record-level stage: a name, a ledger, and what it does to one record.

    Subclasses set ``stage`` (metrics, dead letters, the stats' stage table) and ``unit``
    (the ledger its records count in: the run's main one, or a sub-ledger such as
    ``objects``), and implement :meth:`record_fn`. A stage whose records are many per
    input (one image -> its objects) gives :meth:`input_keys`, one key per record it
    should account for; ``opens_ledger`` makes those the inputs of its ledger (labelled
    ``input_label``), and a ``source`` (a tar reader) is one whose inputs are whatever
    records it finds. ``identity`` names a record in the conservation check (keys by default). Applied, a
    stage returns its main output; one with ``extra_tags`` overrides :meth:`expand` to
    return them too.
    """

    stage: ClassVar[str] = ""
    unit: ClassVar[str] = MAIN_LEDGER
    extra_tags: ClassVar[tuple[str, ...]] = ()
    opens_ledger: ClassVar[bool] = False
    source: ClassVar[bool] = False
    input_label: ClassVar[str] = ""
    identity: ClassVar[Callable[[Any], str]] = staticmethod(record_key)

    def record_fn(self) -> RecordFunction:
        """A picklable function of one record (it travels to the workers, the stage does not)."""
        raise NotImplementedError

    def input_keys(self) -> Callable[[Any], Iterable[str]]:
        """Per input record, the keys of the records it must end as (one each, by default)."""
        identity = type(self).identity
        return lambda record: (identity(record),)

    def prepare(self, records: beam.PCollection) -> beam.PCollection:
        """What the record function runs on; a stage that splits records into finer ones before it does it here."""
        return records

    def apply_stage(self, records: beam.PCollection) -> StageOutputs:
        """Run the stage and register its flow and side outputs with the run's accounts."""
        if not self.stage:
            raise TypeError(f"{type(self).__name__} must set a stage name")
        outputs = apply_record_function(self.prepare(records), "Records", self.stage, self.record_fn(),
                                        self.extra_tags)
        RunAccounts.of(records.pipeline).add_stage(
            self.stage, self.unit, records, main=outputs.main, rejected=outputs.rejected,
            dead_letters=outputs.dead_letters, input_keys=self.input_keys(), identity=type(self).identity,
            opens_ledger=self.opens_ledger, source=self.source, input_label=self.input_label)
        return outputs

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        return self.apply_stage(records).main


#: The extra output of a stage that decides a record and its parts at once: records none of whose parts were kept.
UNPAIRED_TAG = "unpaired"


class Paired(NamedTuple):
    """A deciding stage's records with a part kept, and those with none (their input already rejected)."""

    paired: beam.PCollection
    unpaired: beam.PCollection

    @classmethod
    def of(cls, outputs: StageOutputs) -> "Paired":
        return cls(outputs.main, outputs.extra[UNPAIRED_TAG])


def _pass_on(part: Any) -> Iterator[Any]:
    yield part


def _part_keys(parts_of: Callable[[Any], Sequence[Any]], record: Any) -> tuple[str, ...]:
    return tuple(part.key for part in parts_of(record))


class SplitOutcomes(Stage):
    """Records that carry their parts' outcomes (samples to write, or rejections) -> one record per part.

    Where a stage decides about an input and all its parts at once (an image and its boxes,
    a video and its frame pairs), this opens the parts' ledger: its inputs are the parts
    each record names by key, and each must leave once, as a sample or as the rejection the
    deciding stage gave it (which keeps that stage's name). Subclasses set ``stage``,
    ``unit`` and ``parts``, a picklable function from a record to its parts.
    """

    opens_ledger = True
    parts: ClassVar[Callable[[Any], Sequence[Any]]]

    def prepare(self, records: beam.PCollection) -> beam.PCollection:
        return records | "Parts" >> beam.FlatMap(type(self).parts)

    def input_keys(self) -> Callable[[Any], Iterable[str]]:
        return functools.partial(_part_keys, type(self).parts)

    def record_fn(self) -> RecordFunction:
        return _pass_on
