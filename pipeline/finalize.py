"""The last step of every run: manifest, stats (ledgers, stage table, funnel), rejections, dead letters, lineage.

It runs once, after every shard is written (its inputs are side inputs of a single
element), so it can also clear ``.partial`` files and name stale shards safely. What it
writes about records comes from the run's accounts (:class:`~transforms.ledger.RunAccounts`),
which every stage filled when it was applied: nothing here is routed by hand.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import logging
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from apache_beam.io.filesystems import FileSystems

from pipeline.card import CARD, dataset_card
from schemas import DeadLetter, Rejection
from transforms.io.files import publish, remove_partials
from transforms.io.shards import ShardInfo, ShardWriterConfig, manifest, stale_files
from transforms.ledger import (
    DEAD_LETTER,
    FUNNEL,
    REJECTED,
    WRITTEN,
    Ledger,
    LedgerError,
    RunAccounts,
    StageInfo,
    StageTable,
    Tally,
    check_stages,
    stage_rows,
)

LOG = logging.getLogger(__name__)

MANIFEST = "shardindex.json"
STATS = "stats.json"
LINEAGE = "lineage.json"
CONFIG = "config.yaml"
REJECTED_FILE = "rejected.parquet"
DEAD_LETTERS_FILE = "dead_letters.jsonl"

REJECTED_SCHEMA = pa.schema(
    [("key", pa.string()), ("uri", pa.string()), ("stage", pa.string()), ("reason", pa.string()), ("detail", pa.string())]
)
_REJECTED_ROWS_PER_GROUP = 50_000


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What a run records about itself next to its output."""

    job: str
    dataset_name: str
    code_version: str
    inputs: tuple[str, ...]
    config: Mapping[str, Any]
    funnel: tuple[str, ...]
    started_at: str
    #: Ledgers besides the main one, by name; their tally counters are prefixed ``<name>.``
    #: (bootstrap keeps one of objects beside its ledger of images).
    sub_ledgers: tuple[str, ...] = ()
    #: Model role -> ``id@sha256:digest`` of every model the run used, for lineage.
    models: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: Job-specific lineage entries (a build's candidate sets, thresholds, decisions checksum).
    lineage: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.job or not self.dataset_name:
            raise ValueError("a run needs a job and a dataset name")

    @property
    def provenance(self) -> dict[str, Any]:
        """What every sample of the run records about where it came from."""
        return {"job": self.job, "code_version": self.code_version, "dataset": self.dataset_name}


#: Renders a run's report from its stats, lineage and report input: relative path -> bytes.
ReportWriter = Callable[[Mapping[str, Any], Mapping[str, Any], Any], Mapping[str, bytes]]


class RunReport(NamedTuple):
    """A report to write with the run: its renderer and the singleton PCollection it renders."""

    render: ReportWriter
    inputs: beam.PCollection


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _rejected_parquet(rejections: Iterable[Rejection]) -> bytes:
    """Rows in (uri, stage, key, reason) order: the file does not depend on how workers interleaved."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, REJECTED_SCHEMA, compression="zstd") as writer:
        batch: list[dict[str, str]] = []
        for rejection in sorted(rejections, key=lambda r: (r.uri, r.stage, r.key, r.reason.value, r.detail)):
            batch.append(rejection.to_row())
            if len(batch) >= _REJECTED_ROWS_PER_GROUP:
                writer.write_table(pa.Table.from_pylist(batch, schema=REJECTED_SCHEMA))
                batch = []
        writer.write_table(pa.Table.from_pylist(batch, schema=REJECTED_SCHEMA))
    return sink.getvalue().to_pybytes()


def _dead_letters_jsonl(dead_letters: Iterable[DeadLetter]) -> bytes:
    ordered = sorted(dead_letters, key=lambda dead: (dead.uri, dead.stage, dead.key))
    return b"".join(json.dumps(dead.to_row(), sort_keys=True).encode("utf-8") + b"\n" for dead in ordered)


def _group_counts(tally: Mapping[tuple[str, str], int], sub_ledgers: Sequence[str]) -> dict[str, dict[str, int]]:
    """The counters that are neither a ledger's nor the funnel's, grouped by name."""
    grouped: dict[str, dict[str, int]] = {}
    for (counter, label), n in sorted(tally.items()):
        if counter not in (WRITTEN, REJECTED, DEAD_LETTER, FUNNEL) and counter.partition(".")[0] not in sub_ledgers:
            grouped.setdefault(counter, {})[label] = n
    return grouped


def content_digest(shards: Sequence[ShardInfo]) -> str:
    """One sha256 for the dataset's content: over its shards' names and md5s, in name order."""
    lines = "".join(f"{shard.url} {shard.md5sum}\n" for shard in sorted(shards, key=lambda shard: shard.url))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


class _FinalizeFn(beam.DoFn):
    def __init__(self, run: RunInfo, writer: ShardWriterConfig, report_writer: Optional[ReportWriter],
                 stages: Sequence[StageInfo]) -> None:
        super().__init__()
        self._run = run
        self._writer = writer
        self._report_writer = report_writer
        self._stages = tuple(stages)

    def process(self, _, shards, tally, table, rejected, dead_letters, report=None):
        run, out = self._run, self._writer.output_dir
        shards = sorted(shards, key=lambda shard: shard.url)
        tally = dict(tally[0]) if tally else {}
        ledger = Ledger.from_tally(tally)
        sub_ledgers = {name: Ledger.from_tally(tally, unit=name) for name in run.sub_ledgers}
        stages = stage_rows(self._stages, dict(table[0]) if table else {})
        publish(FileSystems.join(out, MANIFEST), _json(manifest(shards, run.dataset_name)))
        publish(FileSystems.join(out, REJECTED_FILE), _rejected_parquet(rejected))
        publish(FileSystems.join(out, DEAD_LETTERS_FILE), _dead_letters_jsonl(dead_letters))
        removed = remove_partials(out)
        stale = stale_files(self._writer, shards)
        if stale:
            LOG.warning("%d shard files in %s are not part of this run (left by an earlier one): %s", len(stale), out, stale[:5])
        finished_at = _now()
        stats = {
            "job": run.job,
            "dataset": run.dataset_name,
            "code_version": run.code_version,
            "started_at": run.started_at,
            "finished_at": finished_at,
            "ledger": ledger.to_json(),
            **{f"{name}_ledger": sub.to_json() for name, sub in sub_ledgers.items()},
            "stages": stages,
            "funnel": [{"step": step, "count": tally.get((FUNNEL, step), 0)} for step in run.funnel],
            "counts": _group_counts(tally, run.sub_ledgers),
            "shards": {
                "count": len(shards),
                "samples": sum(shard.nsamples for shard in shards),
                "bytes": sum(shard.filesize for shard in shards),
                "written": sum(shard.written for shard in shards),
                "kept_identical": sum(not shard.written for shard in shards),
            },
            "stale_shards": stale,
            "partials_removed": removed,
        }
        lineage = {
            "dataset": run.dataset_name,
            "job": run.job,
            "code_version": run.code_version,
            "created_at": finished_at,
            "inputs": list(run.inputs),
            "config_sha256": hashlib.sha256(_json(dict(run.config))).hexdigest(),
            "content_sha256": content_digest(shards),
            "models": dict(run.models),
            "samples": stats["shards"]["samples"],
            **run.lineage,
        }
        publish(FileSystems.join(out, LINEAGE), _json(lineage))
        if self._report_writer is not None:
            for path, data in sorted(self._report_writer(stats, lineage, report).items()):
                publish(FileSystems.join(out, path), data)
        publish(FileSystems.join(out, CARD),
                dataset_card(out, run.dataset_name, self._writer.prefix, shards, stats, lineage))
        publish(FileSystems.join(out, CONFIG), yaml.safe_dump(dict(run.config), sort_keys=True).encode("utf-8"))
        publish(FileSystems.join(out, STATS), _json(stats))  # last: its presence marks a finished run
        for name, sub in sub_ledgers.items():
            (LOG.info if sub.closed else LOG.error)(
                "%s: %d %s -> %d written, %d rejected, %d dead letters (ledger %s)", run.job, sub.inputs, name,
                sub.written, sum(sub.rejected.values()), sum(sub.dead_letters.values()),
                "closed" if sub.closed else "DOES NOT CLOSE")
        for row in stages:
            if not row["closed"]:
                LOG.error("%s: stage %s does not close: %d in, %d out, %d rejected, %d dead letters; %d missing "
                          "(e.g. %s), %d extra (e.g. %s)", run.job, row["stage"], row["in"], row["out"],
                          row["rejected"], row["dead_letters"], row["missing"], ", ".join(row["missing_keys"][:5]),
                          row["extra"], ", ".join(row["extra_keys"][:5]))
        log = LOG.info if ledger.closed else LOG.error
        log(
            "%s: %d inputs -> %d written, %d rejected, %d dead letters (ledger %s); %d shards in %s",
            run.job, ledger.inputs, ledger.written, sum(ledger.rejected.values()),
            sum(ledger.dead_letters.values()), "closed" if ledger.closed else "DOES NOT CLOSE", len(shards), out,
        )
        yield stats


def _flatten_or_empty(p: beam.Pipeline, label: str, pcolls: Sequence[beam.PCollection]) -> beam.PCollection:
    return tuple(pcolls) | label >> beam.Flatten() if pcolls else p | label >> beam.Create([])


class FinalizeRun(beam.PTransform):
    """Write the run's manifest, stats, rejections, dead letters, lineage, config and, if given, its report.

    Applied to the shards the run wrote, last (the run's accounts must be complete). The
    report is written before stats.json, so a finished run always has it.
    """

    def __init__(self, run: RunInfo, writer: ShardWriterConfig, report: Optional[RunReport] = None) -> None:
        super().__init__()
        self._run = run
        self._writer = writer
        self._report = report

    def expand(self, shards: beam.PCollection) -> beam.PCollection:
        p = shards.pipeline
        accounts = RunAccounts.of(p)
        tally = _flatten_or_empty(p, "AllCounts", accounts.counts) | "Tally" >> Tally()
        table = _flatten_or_empty(p, "AllFlows", accounts.flows) | "StageTable" >> StageTable()
        side = beam.pvalue
        report = {} if self._report is None else {"report": side.AsSingleton(self._report.inputs)}
        return (
            p
            | "Once" >> beam.Create([None])
            | "Finalize"
            >> beam.ParDo(
                _FinalizeFn(self._run, self._writer, self._report and self._report.render, accounts.stages),
                shards=side.AsList(shards),
                tally=side.AsList(tally),
                table=side.AsList(table),
                rejected=side.AsIter(_flatten_or_empty(p, "AllRejected", accounts.all_rejections())),
                dead_letters=side.AsIter(_flatten_or_empty(p, "AllDeadLetters", accounts.all_dead_letters())),
                **report,
            )
        )


def read_stats(output_dir: str) -> dict[str, Any]:
    """The stats.json of a finished run."""
    with FileSystems.open(FileSystems.join(output_dir, STATS), compression_type="uncompressed") as stream:
        return json.loads(stream.read())


def holds_finished_run(output_dir: str) -> bool:
    """Whether ``output_dir`` holds a finished run: its stats.json, written last, is there."""
    return FileSystems.exists(FileSystems.join(output_dir, STATS))


def retire_finished_run(output_dir: str) -> None:
    """Delete a finished run's completion marker before a new run replaces it.

    From then on the folder reads as an unfinished run until the new run's finalize writes
    stats.json again, so a reader (``build``, ``check_ledgers``) refuses a run killed half
    way instead of taking the old stats, manifest and lineage beside replaced shards.
    """
    FileSystems.delete([FileSystems.join(output_dir, STATS)])
    LOG.warning("replacing the finished run in %s: it reads as unfinished until this run ends", output_dir)


def check_ledgers(output_dir: str) -> dict[str, Any]:
    """The stats of a finished run; raises ``LedgerError`` if any of its stages or ledgers does not close.

    The stages that lost or duplicated records come first in the message: they say where.
    """
    stats = read_stats(output_dir)
    problems = []
    for check in (lambda: check_stages(stats.get("stages", ())),
                  *(functools.partial(Ledger.from_json(value).check, name)
                    for name, value in stats.items() if name.endswith("ledger"))):
        try:
            check()
        except LedgerError as error:
            problems.append(str(error))
    if problems:
        raise LedgerError("; ".join(problems))
    return stats
