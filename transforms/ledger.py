"""The run's accounts: ledgers (inputs = written + rejected + dead letters) and per-stage conservation.

Counts are computed as data (PCollections), not read back from Beam metrics, because
metrics are best-effort on some runners and the accounts must be exact.

Two checks close every run:

* **ledgers**: each ledger (the run's main one, and sub-ledgers such as bootstrap's
  ``objects``) counts its inputs where they are first seen and ``written`` from what the
  shard writer put in tars, so a record lost anywhere makes it fail to close;
* **stages**: every stage registers its flow when it is applied (:meth:`RunAccounts.add_stage`),
  and each record entering it must leave it exactly once, as a kept record, a rejection or
  a dead letter. Records are matched by key, so a stage that loses a record names it,
  and one that emits a record twice is caught too. A fan-out stage states how many
  records each input must become by listing their keys (an image's object keys).

The key balance is summed with combiner lifting: a record's +1 (in) and -1 (out) cancel
inside the bundle that saw both, so only records in flight between bundles cross a shuffle,
and the final state of each stage is its unbalanced keys alone.
"""
from __future__ import annotations

import dataclasses
import itertools
import weakref
import zlib
from typing import Any, Callable, ClassVar, Iterable, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import PredictionResult

from schemas import Outcome

#: The run's main ledger (what a job's inputs are: images, candidate objects, videos ...).
MAIN_LEDGER = ""
#: Tally counter names; ``(counter, label) -> n`` pairs are what the run combines.
INPUTS = "inputs"
WRITTEN = Outcome.WRITTEN.value
REJECTED = Outcome.REJECTED.value
DEAD_LETTER = Outcome.DEAD_LETTER.value
#: The tally counter of a run's funnel steps (``(FUNNEL, step) -> n``).
FUNNEL = "funnel"
#: Flow event kinds of the stage table, in its column order.
FLOW_KINDS = ("in", "out", "rejected", "dead_letters")
#: How many keys of each unbalanced stage the stats name.
KEY_SAMPLE = 20
_FLOW_BUCKETS = 16


class LedgerError(RuntimeError):
    """A run's ledger, or a stage's conservation, did not close: some record was lost or counted twice."""


def describe(element: Any) -> tuple[str, str]:
    """(uri, key) of an element, whatever record type it is (for dead letters and the stage table).

    A prediction is described by its example; a tuple (a keyed record, a record with what
    was decided about it) by its first item that has a uri, else its first that has a key.
    """
    if isinstance(element, str):  # a path: what file-reading stages take
        return element, ""
    if isinstance(element, PredictionResult):
        element = element.example
    elif isinstance(element, tuple) and element and not hasattr(element, "uri") and not hasattr(element, "key"):
        element = next((item for item in element if hasattr(item, "uri")),
                       next((item for item in element if hasattr(item, "key")), element[-1]))
    return str(getattr(element, "uri", "") or ""), str(getattr(element, "key", "") or "")


def record_key(element: Any) -> str:
    """A record's name in the stage table: its key, or its uri when it has none (a path, raw bytes)."""
    uri, key = describe(element)
    return key or uri


def record_uri(element: Any) -> str:
    """A record's uri: the name of stages before deduplication, where copies of one image share a key."""
    return describe(element)[0]


def counter_name(unit: str, counter: str) -> str:
    """A ledger's tally counter: ``inputs`` for the main ledger, ``objects.inputs`` for ``objects``."""
    return f"{unit}.{counter}" if unit else counter


def count_as(pcoll: beam.PCollection, label: str, counter: str, key_fn=lambda _: "",
             weight: Callable[[Any], int] = lambda _: 1) -> beam.PCollection:
    """``((counter, key_fn(element)), weight(element))`` per element, for :class:`Tally`."""
    return pcoll | label >> beam.Map(lambda element: ((counter, key_fn(element)), weight(element)))


def count_funnel(pcoll: beam.PCollection, label: str, step: str,
                 weight: Callable[[Any], int] = lambda _: 1) -> beam.PCollection:
    """A funnel step: ``((FUNNEL, step), weight(element))`` per element."""
    return count_as(pcoll, label, FUNNEL, lambda _: step, weight)


class Tally(beam.PTransform):
    """Sum ``((counter, label), n)`` pairs into one dict (a singleton PCollection)."""

    def expand(self, counts: beam.PCollection) -> beam.PCollection:
        return (
            counts
            | "Sum" >> beam.CombinePerKey(sum)
            | "ToDict" >> beam.combiners.ToDict()
        )


@dataclasses.dataclass(frozen=True)
class Ledger:
    """The closed (or not) account of one run, as stored in stats.json."""

    inputs: int
    written: int
    rejected: Mapping[str, int]
    dead_letters: Mapping[str, int]

    @classmethod
    def from_tally(cls, tally: Mapping[tuple[str, str], int], unit: str = MAIN_LEDGER) -> "Ledger":
        """The ledger of ``unit`` from a tally's counters ``inputs``, ``written``, ... (``unit.inputs`` ...)."""
        def by_label(counter: str) -> dict[str, int]:
            name = counter_name(unit, counter)
            return dict(sorted((label, n) for (counted, label), n in tally.items() if counted == name))

        return cls(
            inputs=sum(by_label(INPUTS).values()),
            written=sum(by_label(WRITTEN).values()),
            rejected=by_label(REJECTED),
            dead_letters=by_label(DEAD_LETTER),
        )

    @property
    def accounted(self) -> int:
        return self.written + sum(self.rejected.values()) + sum(self.dead_letters.values())

    @property
    def closed(self) -> bool:
        return self.inputs == self.accounted

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "written": self.written,
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "dead_letters": dict(self.dead_letters),
            "dead_letters_total": sum(self.dead_letters.values()),
            "closed": self.closed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Ledger":
        return cls(data["inputs"], data["written"], dict(data["rejected"]), dict(data["dead_letters"]))

    def check(self, name: str = "ledger") -> None:
        if not self.closed:
            raise LedgerError(
                f"{name} does not close: {self.inputs} inputs but {self.written} written + "
                f"{sum(self.rejected.values())} rejected + {sum(self.dead_letters.values())} dead letters "
                f"= {self.accounted}"
            )


# --------------------------------------------------------------------------- per-stage conservation


class FlowBalanceFn(beam.CombineFn):
    """Counts by kind and the keys whose in and out do not cancel: ``(counts, {key: balance})``.

    Events are ``(kind, key, delta)``; ``key`` None counts without balancing (a stage
    whose inputs' fan-out is only discovered by running it, such as a tar reader).
    """

    def create_accumulator(self) -> tuple[dict[str, int], dict[str, int]]:
        return {}, {}

    def add_input(self, accumulator, event):
        counts, balance = accumulator
        kind, key, delta = event
        counts[kind] = counts.get(kind, 0) + 1
        if key is not None:
            value = balance.get(key, 0) + delta
            if value:
                balance[key] = value
            else:
                del balance[key]
        return accumulator

    def merge_accumulators(self, accumulators):
        counts, balance = self.create_accumulator()
        for other_counts, other_balance in accumulators:
            for kind, n in other_counts.items():
                counts[kind] = counts.get(kind, 0) + n
            for key, delta in other_balance.items():
                value = balance.get(key, 0) + delta
                if value:
                    balance[key] = value
                else:
                    balance.pop(key, None)
        return counts, balance

    def extract_output(self, accumulator) -> tuple[dict[str, int], dict[str, int]]:
        counts, balance = accumulator
        missing = sorted(key for key, value in balance.items() if value > 0)
        extra = sorted(key for key, value in balance.items() if value < 0)
        return counts, {"missing": sum(balance[key] for key in missing), "extra": -sum(balance[key] for key in extra),
                        "missing_keys": missing[:KEY_SAMPLE], "extra_keys": extra[:KEY_SAMPLE]}


def _merge_flow_parts(parts: Iterable[tuple[dict[str, int], dict[str, Any]]]) -> dict[str, Any]:
    """One stage's row from its buckets' results."""
    counts: dict[str, int] = {}
    row: dict[str, Any] = {"missing": 0, "extra": 0, "missing_keys": [], "extra_keys": []}
    for part_counts, part in parts:
        for kind, n in part_counts.items():
            counts[kind] = counts.get(kind, 0) + n
        row["missing"] += part["missing"]
        row["extra"] += part["extra"]
        row["missing_keys"] = sorted(row["missing_keys"] + part["missing_keys"])[:KEY_SAMPLE]
        row["extra_keys"] = sorted(row["extra_keys"] + part["extra_keys"])[:KEY_SAMPLE]
    return {**{kind: counts.get(kind, 0) for kind in FLOW_KINDS}, **row}


class StageTable(beam.PTransform):
    """Flow events -> one singleton dict ``{stage: row}`` (counts by kind, missing and extra keys)."""

    def expand(self, events: beam.PCollection) -> beam.PCollection:
        return (
            events
            | "Balance" >> beam.CombinePerKey(FlowBalanceFn())
            | "ByStage" >> beam.Map(lambda item: (item[0][0], item[1]))
            | "GroupByStage" >> beam.GroupByKey()
            | "Rows" >> beam.Map(lambda item: (item[0], _merge_flow_parts(item[1])))
            | "ToDict" >> beam.combiners.ToDict()
        )


def _bucket(key: str) -> int:
    # crc32, not hash(): Python's string hash differs between worker processes.
    return zlib.crc32(key.encode("utf-8")) % _FLOW_BUCKETS


def _unkeyed(record: Any) -> tuple[None]:
    """A source's records are counted, not balanced: how many an input holds is what reading it finds."""
    return (None,)


def _flow_events(stage: str, kind: str, keys_of: Callable[[Any], Iterable[Optional[str]]], delta: int):
    def events(record: Any):
        for key in keys_of(record):
            yield (stage, _bucket(key or "")), (kind, key, delta)

    return events


@dataclasses.dataclass(frozen=True)
class StageInfo:
    """A registered stage, in the order of the graph: name, ledger, and whether its fan-out is checked."""

    stage: str
    unit: str
    checked: bool


class RunAccounts:
    """What a run's stages registered: their flows, rejections, dead letters and ledger counts.

    One per pipeline (:meth:`of`), filled while the graph is built (a stage registers
    itself when it is applied) and read once by the run's finalize step, which writes
    the ledgers and the stage table and fails the run when either does not close.
    Registering applies counting transforms to the given PCollections, inside the
    composite that registers them.
    """

    _registry: ClassVar["weakref.WeakKeyDictionary[beam.Pipeline, RunAccounts]"] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        self.stages: list[StageInfo] = []
        self._flows: list[beam.PCollection] = []
        self._counts: list[beam.PCollection] = []
        self._rejected: list[tuple[Optional[str], beam.PCollection]] = []
        self._dead_letters: list[tuple[str, beam.PCollection]] = []
        self._registrations = itertools.count()

    @classmethod
    def of(cls, anchor: beam.Pipeline | beam.pvalue.PValue) -> "RunAccounts":
        """The accounts of the pipeline that ``anchor`` (the pipeline, a PBegin or a PCollection) belongs to."""
        pipeline = anchor if isinstance(anchor, beam.Pipeline) else anchor.pipeline
        if pipeline not in cls._registry:
            cls._registry[pipeline] = cls()
        return cls._registry[pipeline]

    # ---- registration

    def _label(self, name: str) -> str:
        """A label unique in the pipeline: registrations may repeat inside one composite."""
        return f"{name}{next(self._registrations)}"

    def add_stage(self, stage: str, unit: str, inputs: beam.PCollection, *, main: beam.PCollection,
                  rejected: Optional[beam.PCollection] = None, dead_letters: Optional[beam.PCollection] = None,
                  input_keys: Optional[Callable[[Any], Iterable[str]]] = None,
                  identity: Callable[[Any], str] = record_key,
                  output_keys: Optional[Callable[[Any], Iterable[str]]] = None,
                  opens_ledger: bool = False, source: bool = False, input_label: str = "") -> None:
        """Register a stage's flow, and its rejections and dead letters with ``unit`` 's ledger.

        ``input_keys`` lists, per input, the keys of the records it must end as (default:
        its own identity); ``output_keys`` what a main-output record holds (default: its
        identity). ``opens_ledger``: the stage's inputs, so counted, are its ledger's
        inputs. A ``source`` (a tar or annotation reader) discovers how many records an
        input holds: its flow is counted, not balanced, and what it yields (kept, rejected
        or dead) is its ledger's inputs, labelled ``input_label``.
        """
        if source:
            input_keys = output_keys = own = _unkeyed
        else:
            def own(record: Any) -> tuple[str]:
                return (identity(record),)

        outcomes = [("out", main, output_keys or own), ("rejected", rejected, own), ("dead_letters", dead_letters, own)]
        self._flows.append(inputs | self._label("FlowIn") >> beam.FlatMap(_flow_events(stage, "in", input_keys or own, 1)))
        for kind, pcoll, keys_of in outcomes:
            if pcoll is not None:
                self._flows.append(pcoll | self._label(f"Flow_{kind}") >> beam.FlatMap(_flow_events(stage, kind, keys_of, -1)))
        if rejected is not None:
            self.add_rejections(unit, rejected)
        if dead_letters is not None:
            self.add_dead_letters(unit, dead_letters)
        inputs_counter = counter_name(unit, INPUTS)
        if source:
            # Each outcome counted before they meet: a Flatten of the records would hold all their bytes at once.
            for _, pcoll, _ in outcomes:
                if pcoll is not None:
                    self._counts.append(pcoll | self._label("LedgerInputs") >> beam.Map(
                        lambda _: ((inputs_counter, input_label), 1)))
        elif opens_ledger:
            keys_of = input_keys or own
            self._counts.append(inputs | self._label("LedgerInputs") >> beam.Map(
                lambda record: ((inputs_counter, input_label), len(tuple(keys_of(record))))))
        if not any(info.stage == stage for info in self.stages):
            self.stages.append(StageInfo(stage, unit, checked=not source))

    def add_rejections(self, unit: str, rejected: beam.PCollection) -> None:
        """Rejections that count in ``unit`` 's ledger (by reason) and are written to rejected.parquet."""
        self._rejected.append((unit, rejected))
        self._counts.append(rejected | self._label("CountRejected") >> beam.Map(
            lambda rejection: ((counter_name(unit, REJECTED), rejection.reason.value), 1)))

    def add_recorded(self, counter: str, rejected: beam.PCollection) -> None:
        """Rejections of parts of kept records (a box of a kept image): recorded, counted under ``counter``."""
        self._rejected.append((None, rejected))
        self._counts.append(rejected | self._label("CountRecorded") >> beam.Map(
            lambda rejection: ((counter, rejection.reason.value), 1)))

    def add_dead_letters(self, unit: str, dead_letters: beam.PCollection) -> None:
        self._dead_letters.append((unit, dead_letters))
        self._counts.append(dead_letters | self._label("CountDeadLetters") >> beam.Map(
            lambda dead: ((counter_name(unit, DEAD_LETTER), dead.stage), 1)))

    def add_written(self, unit: str, shards: beam.PCollection) -> None:
        """``unit`` 's ``written``: the samples of the shards the writer finished."""
        self._counts.append(shards | self._label("CountWritten") >> beam.Map(
            lambda shard: ((counter_name(unit, WRITTEN), ""), shard.nsamples)))

    def add_counts(self, counts: beam.PCollection) -> None:
        """Raw ``((counter, label), n)`` events: funnel steps, ledger outcomes a job derives itself."""
        self._counts.append(counts)

    # ---- reading, once the graph is built

    def rejections(self, unit: Optional[str]) -> list[beam.PCollection]:
        return [pcoll for registered, pcoll in self._rejected if registered == unit]

    def dead_letters(self, unit: str) -> list[beam.PCollection]:
        return [pcoll for registered, pcoll in self._dead_letters if registered == unit]

    def all_rejections(self) -> list[beam.PCollection]:
        return [pcoll for _, pcoll in self._rejected]

    def all_dead_letters(self) -> list[beam.PCollection]:
        return [pcoll for _, pcoll in self._dead_letters]

    @property
    def counts(self) -> Sequence[beam.PCollection]:
        return tuple(self._counts)

    @property
    def flows(self) -> Sequence[beam.PCollection]:
        return tuple(self._flows)


def stage_rows(stages: Sequence[StageInfo], table: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The stats' ``stages`` table, in graph order: counts, missing and extra keys, closed."""
    empty = {**{kind: 0 for kind in FLOW_KINDS}, "missing": 0, "extra": 0, "missing_keys": [], "extra_keys": []}
    rows = []
    for info in stages:
        row = {**empty, **table.get(info.stage, {})}
        closed = row["missing"] == 0 and row["extra"] == 0
        rows.append({"stage": info.stage, "unit": info.unit or "main", "balanced": info.checked, **row, "closed": closed})
    return rows


def check_stages(rows: Sequence[Mapping[str, Any]]) -> None:
    """Raise :class:`LedgerError` naming every stage that lost or duplicated records, with sample keys."""
    broken = [row for row in rows if not row["closed"]]
    if broken:
        raise LedgerError("; ".join(
            f"stage {row['stage']} does not close: {row['in']} in, {row['out']} out + {row['rejected']} rejected + "
            f"{row['dead_letters']} dead letters; {row['missing']} records missing "
            f"(e.g. {', '.join(row['missing_keys'][:5]) or '-'}), {row['extra']} extra "
            f"(e.g. {', '.join(row['extra_keys'][:5]) or '-'})" for row in broken))
