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
import uuid
import weakref
from typing import Any, Callable, ClassVar, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

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


def human_seconds(seconds: float) -> str:
    """``75.2`` -> ``1 min 15 s``; under a minute, one decimal."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {rest} s"


class ProgressKey(NamedTuple):
    """What a stage's DoFn carries to name its progress: the run, the stage, and where its total comes from.

    ``counted``: the input reaches the stage through a ``Reshuffle`` whose input is
    counted, so the total is exact before the stage sees its first record. ``upstream``:
    the stage whose main output is this stage's input; its kept records plus those it has
    still to see bound this stage's total (exact once it has seen all of its own).
    """

    run: str
    stage: str
    upstream: Optional[str] = None
    counted: bool = False


class _StageCount:
    __slots__ = ("seen", "kept", "counted", "started", "last_logged")

    def __init__(self) -> None:
        self.seen = self.kept = self.counted = 0
        self.started = self.last_logged = 0.0


class _Progress:
    """Per process, rate-limited progress lines per stage ("decode: 1200/4000 records (85.3/s, ETA 33.0 s)").

    Totals are only given where every record of the stage passes through this process:
    the runs whose graph was built here (Beam's local runner, in-process workers), for a
    stage applied once in the graph. A worker of a distributed runner, or a local worker
    subprocess, sees a share of the records, so its lines say that the total is not known
    rather than set a share against the whole.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], _StageCount] = {}
        self._built_here: dict[tuple[str, str], list[ProgressKey]] = {}

    def _count(self, run: str, stage: str) -> _StageCount:
        return self._counts.setdefault((run, stage), _StageCount())

    def register(self, key: ProgressKey) -> None:
        """A stage applied in a graph built in this process (called when the graph is built)."""
        with self._lock:
            self._built_here.setdefault((key.run, key.stage), []).append(key)

    def add_counted(self, run: str, stage: str) -> None:
        """One record on its way to ``stage``, counted before the shuffle that feeds it."""
        with self._lock:
            self._count(run, stage).counted += 1

    def _total(self, run: str, stage: str) -> Optional[tuple[int, bool]]:
        """``(total, exact)``: the stage's total or, not exact, a bound on it; ``None`` where not known."""
        keys = self._built_here.get((run, stage), ())
        if len(keys) != 1:
            return None
        key = keys[0]
        if key.counted:
            return self._count(run, stage).counted, True
        upstream_total = None if key.upstream is None else self._total(run, key.upstream)
        if upstream_total is None:
            return None
        upstream = self._count(run, key.upstream)
        unseen = upstream_total[0] - upstream.seen
        return (upstream.kept, upstream_total[1]) if unseen <= 0 else (upstream.kept + unseen, False)

    def tick(self, key: ProgressKey, kept: int) -> None:
        """One record done by ``key`` 's stage, ``kept`` of its outputs on the main output."""
        now = time.monotonic()
        with self._lock:
            count = self._count(key.run, key.stage)
            if not count.seen:
                count.started = count.last_logged = now
            count.seen += 1
            count.kept += kept
            known = self._total(key.run, key.stage)
            done = known is not None and known[1] and count.seen >= known[0]
            # The end of a stage that showed progress is told; a stage done within one interval stays quiet.
            due = now - count.last_logged >= PROGRESS_INTERVAL_S
            if not (due or (done and count.last_logged > count.started)):
                return
            count.last_logged = now
            seen, rate = count.seen, count.seen / max(now - count.started, 1e-9)
        if known is None:
            LOG.info("%s: %d records (%.1f/s, total not known)", key.stage, seen, rate)
        elif done:
            LOG.info("%s: %d/%d records (%.1f/s, done)", key.stage, seen, known[0], rate)
        else:
            total, exact = known
            bound = "" if exact else "<="
            LOG.info("%s: %d/%s%d records (%.1f/s, ETA %s%s)", key.stage, seen, bound, total, rate, bound,
                     human_seconds(max(total - seen, 0) / rate))


PROGRESS = _Progress()


class StageFn(beam.DoFn):
    """The DoFn every stage runs: one record through its function, outputs sorted by kind.

    Metrics are in the ``counterfactory.<stage>`` namespace with units in their names:
    ``records_in_count``, ``records_out_count``, ``rejected_<reason>_count`` and the
    ``process_time_msec`` distribution.
    """

    def __init__(self, stage: str, function: RecordFunction, progress: Optional[ProgressKey] = None) -> None:
        super().__init__()
        if not stage:
            raise TypeError("a stage needs a name")
        self.stage = stage
        self._progress = progress  # None: the stage's progress is told elsewhere (see track_progress)
        self._function = function

    # No annotations here: Beam would read them as type hints.
    def process(self, element):
        namespace = f"counterfactory.{self.stage}"
        Metrics.counter(namespace, "records_in_count").inc()
        started = time.perf_counter()
        kept = 0
        try:
            for output in self._function(element):
                if isinstance(output, Rejection):
                    Metrics.counter(namespace, f"rejected_{output.reason.value}_count").inc()
                    yield TaggedOutput(REJECTED, output)
                else:
                    if not isinstance(output, TaggedOutput):
                        Metrics.counter(namespace, "records_out_count").inc()
                        kept += 1
                    yield output
        finally:  # a record that raised (a dead letter) is done too
            Metrics.distribution(namespace, "process_time_msec").update(int((time.perf_counter() - started) * 1000))
            if self._progress is not None:
                PROGRESS.tick(self._progress, kept)


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


class _GraphProgress:
    """Per pipeline: its run id for progress lines, and which stage's main output each PCollection is."""

    _registry: ClassVar["weakref.WeakKeyDictionary[beam.Pipeline, _GraphProgress]"] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex
        self.stage_of: dict[beam.PCollection, str] = {}

    @classmethod
    def of(cls, pipeline: beam.Pipeline) -> "_GraphProgress":
        if pipeline not in cls._registry:
            cls._registry[pipeline] = cls()
        return cls._registry[pipeline]


class _CountTotal(beam.DoFn):
    def __init__(self, run: str, stage: str) -> None:
        super().__init__()
        self._run, self._stage = run, stage

    def process(self, element):
        PROGRESS.add_counted(self._run, self._stage)
        return ()


def _shuffled_from(records: beam.PCollection) -> Optional[beam.PCollection]:
    """The input of the ``Reshuffle`` whose output ``records`` is, if it is one."""
    node = records.producer
    while node is not None and records in node.outputs.values():
        if isinstance(node.transform, beam.Reshuffle):
            return node.inputs[0]
        node = node.parent
    return None


def _progress_key(records: beam.PCollection, label: str, stage: str) -> ProgressKey:
    """How ``stage`` learns its total: counted before the shuffle that feeds it, or from its upstream stage."""
    graph = _GraphProgress.of(records.pipeline)
    shuffled = _shuffled_from(records)
    if shuffled is not None:
        # Counted where the records are made: that work ends before the shuffle hands any on.
        shuffled | f"{label}CountTotal" >> beam.ParDo(_CountTotal(graph.run, stage))
    key = ProgressKey(graph.run, stage, upstream=graph.stage_of.get(records), counted=shuffled is not None)
    PROGRESS.register(key)
    return key


class _Tick(beam.DoFn):
    """Passes a stage's kept records on (``kept``), or drops its other ends, ticking its progress once for each."""

    def __init__(self, progress: ProgressKey, kept: bool) -> None:
        super().__init__()
        self._progress, self._kept = progress, kept

    def process(self, element):
        PROGRESS.tick(self._progress, int(self._kept))
        if self._kept:
            yield element


def track_progress(records: beam.PCollection, kept: beam.PCollection, ended: beam.PCollection, label: str,
                   stage: str) -> beam.PCollection:
    """Progress lines for a stage whose records no :class:`StageFn` runs (a model's ``RunInference``).

    ``records`` is the stage's input (its total comes from there, as a :class:`Stage`'s does),
    ``kept`` its main output, one record per input, and ``ended`` its inputs that ended
    otherwise (dead letters). Returns ``kept`` passed on: the stage's main output, whose
    consumers' totals this stage then bounds.
    """
    progress = _progress_key(records, label, stage)
    _ = ended | f"{label}ProgressEnded" >> beam.ParDo(_Tick(progress, kept=False))
    passed = kept | f"{label}Progress" >> beam.ParDo(_Tick(progress, kept=True))
    _GraphProgress.of(records.pipeline).stage_of[passed] = stage
    return passed


def apply_record_function(records: beam.PCollection, label: str, stage: str, function: RecordFunction,
                          extra_tags: Sequence[str] = (), progress: bool = True) -> StageOutputs:
    """Run ``function`` on every record so that one failing record becomes one dead letter, never a failed job.

    Registers nothing: :class:`Stage` and the model stage build on it and do their own accounting.
    ``progress=False``: no progress lines of its own (a part of a stage whose progress
    :func:`track_progress` tells).
    """
    tags = {REJECTED: Rejection, **{tag: Any for tag in extra_tags}}
    key = _progress_key(records, label, stage) if progress else None
    pardo = beam.ParDo(StageFn(stage, function, key)).with_output_types(Any, **tags)
    results = records | label >> pardo.with_exception_handling(
        main_tag=MAIN, dead_letter_tag=DEAD_LETTERS
    ).with_outputs(REJECTED, *extra_tags, main=MAIN)
    if progress:
        _GraphProgress.of(records.pipeline).stage_of[results[MAIN]] = stage
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
