"""The build graph (ObjectDrop stage 2): candidate shards -> a versioned set of training-pair shards.

    ReadCandidates -> Select (review decisions, thresholds, ranking) -> Repaste -> encode
      -> write pair shards -> finalize (+ report: score histograms, near-threshold thumbnails)

No model runs here and no image is decoded to decide: selection reads the scores that
bootstrap mining stored, so a new threshold or a reviewer's decisions cost one pass over
the candidate shards on CPUs.

The ledger counts candidate objects (samples of the candidate shards): each ends as a
pair sample, a rejection (a threshold's reason, ``review_rejected``,
``not_a_candidate_sample``, ``corrupt_shard``) or a dead letter.
"""
from __future__ import annotations

import array
import dataclasses
import heapq
import io
import logging
import os
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput
from PIL import Image

from pipeline.finalize import FUNNEL, MANIFEST, STATS, FinalizeInputs, FinalizeRun, RunInfo, RunReport
from pipeline.ledger import INPUTS, WRITTEN, Tally, count_as, count_dead_letters, count_rejections
from pipeline.report import FunnelStep, ReportData, ScoreSummary, Thumbnail, render_report
from pipeline.sources import flatten
from pipeline.stage import StageDoFn, apply_stage, apply_tagged_stage
from review.contact_sheet import candidate_thumbnail
from schemas import Rejection
from schemas.keys import object_of
from schemas.reasons import Reason
from schemas.sample import (
    SCORE_NAMES,
    CandidateSample,
    Field,
    PairChoice,
    candidate_from_sample,
    pair_fields,
    pair_metadata_row,
    removed_field,
)
from transforms.io.decode import decode_rgb, encode_jpeg
from transforms.io.files import read_json
from transforms.io.readers import read_members, read_tar_samples
from transforms.io.shards import EncodedSample, ShardWriterConfig, WriteShards
from transforms.repaste import RepasteConfig, repaste
from transforms.thresholds import SCORES, CandidateView, SelectionRules

LOG = logging.getLogger(__name__)

FUNNEL_STEPS = ("candidate_objects", "passed_thresholds", "kept", "pairs_written")
#: Bootstrap funnel steps left out of the report's funnel: they count candidates, not images or objects.
_UPSTREAM_SKIPPED = frozenset({"candidates_written"})
_SCORES_TAG = "scores"
_COUNTS_TAG = "counts"


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
    same folder never leak into a dataset.
    """
    path = path.rstrip("/")
    if "://" not in path:
        path = os.path.abspath(path)  # lineage must name it unambiguously
    if not FileSystems.exists(FileSystems.join(path, STATS)):
        raise ValueError(f"{path} is not a finished bootstrap run (no {STATS})")
    stats = read_json(FileSystems.join(path, STATS))
    if stats.get("job") != "bootstrap":
        raise ValueError(f"{path} was written by {stats.get('job')!r}, not by bootstrap")
    manifest = read_json(FileSystems.join(path, MANIFEST))
    lineage = read_json(FileSystems.join(path, "lineage.json"))
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


# --------------------------------------------------------------------------- read


class _ReadCandidatesFn(StageDoFn):
    stage = "read_candidates"

    def process_record(self, path: str) -> Iterator[CandidateSample | Rejection]:
        for sample in read_tar_samples(path, self.stage):
            if isinstance(sample, Rejection):
                yield sample
                continue
            key, fields = sample
            uri = f"{path}#{key}"
            try:
                yield candidate_from_sample(key, fields, uri)
            except ValueError as error:
                yield Rejection(uri, self.stage, Reason.NOT_A_CANDIDATE_SAMPLE, str(error), key)


# --------------------------------------------------------------------------- select


class ScorePoint(NamedTuple):
    """One candidate's scores (``SCORE_NAMES`` order) for the report; ``chosen``: it became a pair."""

    key: str
    shard: str
    candidate_index: int
    scores: tuple[Optional[float], ...]
    chosen: bool


class _SelectFn(StageDoFn):
    stage = "select"

    def __init__(self, rules: SelectionRules) -> None:
        super().__init__()
        self._rules = rules

    def process_record(self, sample: CandidateSample) -> Iterator[Any]:
        rules = self._rules
        candidates = sample.candidates
        choice = rules.choose(sample.key, [CandidateView(c["index"], c["scores"]) for c in candidates])
        shard = sample.uri.rpartition("#")[0]
        for c in candidates:
            scores = tuple(c["scores"].get(name) for name in SCORE_NAMES)
            yield TaggedOutput(_SCORES_TAG, ScorePoint(c["key"], shard, c["index"], scores,
                                                       c["index"] == choice.candidate_index))
        matched = sum(rules.decisions.get(key) is not None for key in (sample.key, *(c["key"] for c in candidates)))
        counts = [(("candidates", "total"), len(candidates)), (("decisions", "matched"), matched)]
        if choice.passed_thresholds:
            counts.append(((FUNNEL, "passed_thresholds"), 1))
        if choice.kept:
            counts += [((FUNNEL, "kept"), 1), (("selected_by", str(choice.selected_by)), 1)]
        for count in counts:
            yield TaggedOutput(_COUNTS_TAG, count)
        if not choice.kept:
            yield Rejection(sample.uri, self.stage, choice.reason, choice.detail, sample.key)
            return
        review = None if choice.review is None else choice.review.to_json()
        pair = PairChoice(choice.candidate_index, choice.combined_score, str(choice.selected_by), review)
        yield sample.keeping_only(choice.candidate_index), pair


# --------------------------------------------------------------------------- re-paste


def _decode_rgba(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.array(image.convert("RGBA"))


class PairEncoder:
    """(candidate sample, choice) -> the pair sample: removal image as stored, object re-pasted on it."""

    def __init__(self, config: RepasteConfig, selection: Mapping[str, Any], provenance: Mapping[str, Any]) -> None:
        self._config = config
        self._selection = dict(selection)
        self._provenance = dict(provenance)

    def __call__(self, element: tuple[CandidateSample, PairChoice]) -> EncodedSample:
        sample, choice = element
        removed = decode_rgb(sample.removed_png(choice.candidate_index))
        box = tuple(int(v) for v in sample.meta["object"]["box"])
        pasted = repaste(removed, _decode_rgba(sample.fields[Field.OBJECT]), box, self._config.feather_px)
        jpeg = encode_jpeg(pasted, self._config.jpeg_quality)
        return EncodedSample(key=sample.key, fields=pair_fields(sample, choice, jpeg, self._selection, self._provenance),
                             metadata=pair_metadata_row(sample, choice))


class _PairFn(StageDoFn):
    stage = "repaste"

    def __init__(self, encoder: PairEncoder) -> None:
        super().__init__()
        self._encoder = encoder

    def process_record(self, element: tuple[CandidateSample, PairChoice]) -> Iterator[EncodedSample]:
        yield self._encoder(element)


# --------------------------------------------------------------------------- report inputs


class ScoreValuesFn(beam.CombineFn):
    """Every candidate's value of every score, and the chosen ones': ``{name: (all, chosen)}`` arrays."""

    def create_accumulator(self) -> dict[str, tuple[array.array, array.array]]:
        return {name: (array.array("d"), array.array("d")) for name in SCORE_NAMES}

    def add_input(self, accumulator, point: ScorePoint):
        for name, value in zip(SCORE_NAMES, point.scores):
            if value is not None:
                accumulator[name][0].append(value)
                if point.chosen:
                    accumulator[name][1].append(value)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for accumulator in accumulators:
            for name, (values, chosen) in accumulator.items():
                merged[name][0].extend(values)
                merged[name][1].extend(chosen)
        return merged

    def extract_output(self, accumulator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {name: (np.sort(np.frombuffer(values, np.float64)), np.sort(np.frombuffer(chosen, np.float64)))
                for name, (values, chosen) in accumulator.items()}


class NearThreshold(NamedTuple):
    score: str
    side: str  # "pass" or "fail"
    distance: float
    point: ScorePoint


class NearThresholdFn(beam.CombineFn):
    """Per thresholded score, the ``per_side`` candidates closest to the threshold on each side.

    A candidate's side is judged on that one score, whatever the others say: the report
    shows what the threshold itself separates. Ties go to the smaller key (deterministic).
    """

    def __init__(self, bounds: Mapping[str, float], per_side: int) -> None:
        super().__init__()
        self._bounds = dict(bounds)
        self._per_side = per_side

    def create_accumulator(self) -> list[tuple[float, str, str, ScorePoint]]:
        return []

    def add_input(self, accumulator, point: ScorePoint):
        for name, bound in self._bounds.items():
            value = point.scores[SCORE_NAMES.index(name)]
            if value is not None:
                side = "pass" if SCORES[name].passes(value, bound) else "fail"
                accumulator.append((abs(value - bound), point.key, f"{name}/{side}", point))
        return self._trim(accumulator) if len(accumulator) > 4 * self._per_side * max(1, len(self._bounds)) else accumulator

    def _trim(self, entries: Iterable[tuple[float, str, str, ScorePoint]]) -> list:
        groups: dict[str, list] = {}
        for entry in entries:
            groups.setdefault(entry[2], []).append(entry)
        return [entry for group in groups.values() for entry in heapq.nsmallest(self._per_side, group, key=lambda e: e[:2])]

    def merge_accumulators(self, accumulators):
        return self._trim(entry for accumulator in accumulators for entry in accumulator)

    def extract_output(self, accumulator) -> list[NearThreshold]:
        kept = sorted(self._trim(accumulator), key=lambda e: (e[2], e[0], e[1]))
        return [NearThreshold(*group.split("/"), distance, point) for distance, _, group, point in kept]


def _thumbnails(shard_and_points: tuple[str, Iterable[NearThreshold]]) -> Iterator[Thumbnail]:
    """Pictures of the near-threshold candidates of one shard, reading only their members."""
    shard, near = shard_and_points
    near = list(near)
    object_keys = {object_of(point.key) for *_, point in near}
    wanted = [f"{key}.{field}" for key in object_keys for field in (Field.SRC, Field.MASK, Field.JSON)]
    wanted += [f"{object_of(point.key)}.{removed_field(point.candidate_index)}" for *_, point in near]
    members = read_members(shard, wanted)
    for score, side, _, point in near:
        object_key = object_of(point.key)
        sample = {name.partition(".")[2]: data for name, data in members.items() if name.partition(".")[0] == object_key}
        try:
            jpeg = candidate_thumbnail(sample, point.candidate_index)
        except (KeyError, OSError, ValueError) as error:  # a picture is not worth failing a finished build
            LOG.warning("no thumbnail for %s: %s", point.key, error)
            continue
        yield Thumbnail(score=score, side=side, key=point.key, value=point.scores[SCORE_NAMES.index(score)], jpeg=jpeg)


class ReportInputs(NamedTuple):
    values: Mapping[str, tuple[np.ndarray, np.ndarray]]
    thumbnails: Sequence[Thumbnail]


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
            | "Thumbnails" >> beam.FlatMap(_thumbnails)
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
    read = apply_stage(tars, "ReadCandidates", _ReadCandidatesFn())
    selected, tagged = apply_tagged_stage(read.main, "Select", _SelectFn(config.rules), (_SCORES_TAG, _COUNTS_TAG))
    encoder = PairEncoder(config.repaste, config.selection_stamp, config.run.provenance)
    pairs = apply_stage(selected.main, "Repaste", _PairFn(encoder))
    shards = pairs.main | "WriteShards" >> WriteShards(config.writer)

    rejected = flatten("AllRejected", [read.rejected, selected.rejected])
    dead_letters = flatten("AllDeadLetters", [read.dead_letters, selected.dead_letters, pairs.dead_letters])
    counts = [
        flatten("Inputs", [count_as(pc, f"CountInputs{i}", INPUTS, lambda _: "candidate_samples") for i, pc in
                           enumerate((read.main, read.rejected, read.dead_letters))]),
        count_rejections(rejected, "CountRejected"),
        count_dead_letters(dead_letters, "CountDeadLetters"),
        shards | "CountWritten" >> beam.Map(lambda shard: ((WRITTEN, ""), shard.nsamples)),
        count_as(read.main, "FunnelCandidateObjects", FUNNEL, lambda _: "candidate_objects"),
        tagged[_COUNTS_TAG],
        shards | "FunnelWritten" >> beam.Map(lambda shard: ((FUNNEL, "pairs_written"), shard.nsamples)),
    ]
    tally = flatten("AllCounts", counts) | "Tally" >> Tally()
    report_inputs = tagged[_SCORES_TAG] | "ReportInputs" >> _ReportInputs(
        config.rules.thresholds.bounds, config.thumbnails_per_side)
    report = RunReport(BuildReport(config), report_inputs)
    finalize = FinalizeRun(config.run, config.writer, report)
    return FinalizeInputs(shards, tally, rejected, dead_letters) | "Finalize" >> finalize
