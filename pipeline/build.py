"""The build graph (ObjectDrop stage 2): candidate shards -> a versioned set of training-pair shards.

    ReadCandidates -> Select (review decisions, thresholds, ranking) -> Repaste -> encode
      -> write pair shards -> finalize (+ report: score histograms, near-threshold thumbnails)

No model runs here and no image is decoded to decide: selection reads the scores that
bootstrap mining stored, so a new threshold or a reviewer's decisions cost one pass over
the candidate shards on CPUs.

The ledger counts candidate objects (samples of the candidate shards): each ends as a
pair sample, a rejection (a threshold's reason, ``review_rejected``,
``not_a_candidate_sample``, ``corrupt_shard``) or a dead letter. The stages are in
:mod:`transforms.pairs`, the report's score summaries in :mod:`review.report_inputs`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.finalize import MANIFEST, STATS, FinalizeRun, RunInfo, RunReport
from review.report import FunnelStep, ReportData, ScoreSummary, Thumbnail, render_report
from review.report_inputs import NearThresholdFn, ReportInputs, ScoreValuesFn, near_threshold_thumbnails
from transforms.io.files import read_json
from transforms.io.shards import ShardWriterConfig, WriteShards, verify_shards
from transforms.ledger import RunAccounts, count_funnel
from transforms.pairs import PairEncoder, ReadCandidates, RepastePairs, SelectCandidates
from transforms.repaste import RepasteConfig
from transforms.thresholds import SCORES, SelectionRules

FUNNEL_STEPS = ("candidate_objects", "passed_thresholds", "kept", "pairs_written")
#: Bootstrap funnel steps left out of the report's funnel: they count candidates, not images or objects.
_UPSTREAM_SKIPPED = frozenset({"candidates_written"})
#: Jobs whose output is a candidate set: bootstrap mining, and evaluate (candidates on composites).
CANDIDATE_JOBS = ("bootstrap", "evaluate")


@dataclasses.dataclass(frozen=True)
class CandidateSet:
    """A finished bootstrap run, as the build reads it: its shards and what it says about itself."""

    path: str
    shards: tuple[str, ...]
    content_sha256: str
    samples: int
    models: Mapping[str, str]
    funnel: tuple[tuple[str, int], ...]

    def lineage(self) -> dict[str, Any]:
        return {"path": self.path, "content_sha256": self.content_sha256, "samples": self.samples}


def load_candidate_set(path: str) -> CandidateSet:
    """Read a bootstrap output's manifest, stats and lineage; raises ``ValueError`` if it is not a finished one.

    Only the shards its manifest lists are read, so shards left by an earlier run in the
    same folder never leak into a dataset; each is checked against the manifest's size and
    md5 first, so a changed shard or a folder that mixes two runs is refused before anything runs.
    """
    path = path.rstrip("/")
    if "://" not in path:
        path = os.path.abspath(path)  # lineage must name it unambiguously
    if not FileSystems.exists(FileSystems.join(path, STATS)):
        raise ValueError(f"{path} is not a finished bootstrap run (no {STATS})")
    stats = read_json(FileSystems.join(path, STATS))
    if stats.get("job") not in CANDIDATE_JOBS:
        raise ValueError(f"{path} was written by {stats.get('job')!r}, not by {' or '.join(CANDIDATE_JOBS)}")
    manifest = read_json(FileSystems.join(path, MANIFEST))
    lineage = read_json(FileSystems.join(path, "lineage.json"))
    verify_shards(path, manifest["shardlist"])
    return CandidateSet(
        path=path,
        shards=tuple(FileSystems.join(path, entry["url"]) for entry in manifest["shardlist"]),
        content_sha256=lineage["content_sha256"],
        samples=sum(entry["nsamples"] for entry in manifest["shardlist"]),
        models=dict(lineage.get("models", {})),
        funnel=tuple((step["step"], step["count"]) for step in stats.get("funnel", ())),
    )


@dataclasses.dataclass(frozen=True)
class BuildConfig:
    """What a build reads and applies; ``thumbnails_per_side``: report pictures per threshold and side."""

    candidate_sets: tuple[CandidateSet, ...]
    rules: SelectionRules
    repaste: RepasteConfig
    writer: ShardWriterConfig
    run: RunInfo
    thumbnails_per_side: int = 4

    def __post_init__(self) -> None:
        if not self.candidate_sets:
            raise ValueError("a build needs at least one candidate set")
        if self.thumbnails_per_side < 0:
            raise ValueError(f"thumbnails_per_side must be >= 0, got {self.thumbnails_per_side}")

    @property
    def selection_stamp(self) -> dict[str, Any]:
        """What every pair records about how it was chosen."""
        return {"thresholds": self.rules.thresholds.to_json(), "ranking_weights": dict(self.rules.ranking.weights),
                "decisions_sha256": self.rules.decisions.sha256, "repaste": dataclasses.asdict(self.repaste)}


# --------------------------------------------------------------------------- report inputs


class _ReportInputs(beam.PTransform):
    def __init__(self, bounds: Mapping[str, float], per_side: int) -> None:
        super().__init__()
        self._bounds = bounds
        self._per_side = per_side

    def expand(self, points: beam.PCollection) -> beam.PCollection:
        values = points | "ScoreValues" >> beam.CombineGlobally(ScoreValuesFn())
        thumbnails = (
            points
            | "NearThreshold" >> beam.CombineGlobally(NearThresholdFn(self._bounds, self._per_side))
            | "EachNear" >> beam.FlatMap(lambda near: [(entry.point.shard, entry) for entry in near])
            | "ByShard" >> beam.GroupByKey()
            | "Thumbnails" >> beam.FlatMap(near_threshold_thumbnails)
        )
        bounds = dict(self._bounds)

        def nearest_first(thumbnail: Thumbnail) -> tuple:
            return thumbnail.score, thumbnail.side, abs(thumbnail.value - bounds[thumbnail.score]), thumbnail.key

        return (
            points.pipeline
            | "OnceReport" >> beam.Create([None])
            | "Assemble" >> beam.Map(
                lambda _, values, thumbnails: ReportInputs(values, sorted(thumbnails, key=nearest_first)),
                values=beam.pvalue.AsSingleton(values), thumbnails=beam.pvalue.AsList(thumbnails))
        )


class BuildReport:
    """Renders report.html/json and its pictures from a finished build's stats and report inputs."""

    def __init__(self, config: BuildConfig) -> None:
        self._title = config.run.dataset_name
        self._bounds = dict(config.rules.thresholds.bounds)
        upstream: dict[str, int] = {}
        for candidate_set in config.candidate_sets:
            for step, count in candidate_set.funnel:
                if step not in _UPSTREAM_SKIPPED:
                    upstream[step] = upstream.get(step, 0) + count
        self._upstream = upstream

    def __call__(self, stats: Mapping[str, Any], lineage: Mapping[str, Any], inputs: ReportInputs) -> dict[str, bytes]:
        funnel = [FunnelStep("bootstrap", step, count) for step, count in self._upstream.items()]
        funnel += [FunnelStep("build", entry["step"], entry["count"]) for entry in stats["funnel"]]
        scores = [
            ScoreSummary(name=name, better=str(SCORES[name].better), threshold=self._bounds.get(name),
                         values=values, chosen=chosen)
            for name, (values, chosen) in inputs.values.items()
        ]
        summary = {key: lineage.get(key) for key in ("thresholds", "ranking_weights", "decisions", "candidate_sets",
                                                      "repaste", "models", "code_version", "content_sha256")}
        summary["counts"] = stats.get("counts", {})
        data = ReportData(title=self._title, created_at=lineage["created_at"], funnel=funnel,
                          rejections=stats["ledger"]["rejected"], scores=scores, thumbnails=list(inputs.thumbnails),
                          ledger=stats["ledger"], summary=summary)
        return render_report(data)


# --------------------------------------------------------------------------- graph


def build_pairs(p: beam.Pipeline, config: BuildConfig) -> beam.PCollection:
    """Add the build graph to ``p``; returns the PCollection holding the run's stats dict."""
    paths = [shard for candidate_set in config.candidate_sets for shard in candidate_set.shards]
    tars = p | "CandidateShards" >> beam.Create(paths) | "Spread" >> beam.Reshuffle()
    samples = tars | "ReadCandidates" >> ReadCandidates()
    selected = samples | "Select" >> SelectCandidates(config.rules)
    encoder = PairEncoder(config.repaste, config.selection_stamp, config.run.provenance)
    pairs = selected.chosen | "Repaste" >> RepastePairs(encoder)
    shards = pairs | "WriteShards" >> WriteShards(config.writer)
    RunAccounts.of(p).add_counts((
        count_funnel(samples, "FunnelCandidateObjects", "candidate_objects"),
        count_funnel(shards, "FunnelWritten", "pairs_written", lambda shard: shard.nsamples),
    ) | "FunnelCounts" >> beam.Flatten())
    report_inputs = selected.scores | "ReportInputs" >> _ReportInputs(
        config.rules.thresholds.bounds, config.thumbnails_per_side)
    report = RunReport(BuildReport(config), report_inputs)
    return shards | "Finalize" >> FinalizeRun(config.run, config.writer, report)
