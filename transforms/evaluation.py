"""Judging removals against an exact truth: the stages of ``evaluate`` and the statistics it reports.

A composite sample (transforms/composites.py) knows what its removal should give. The
evaluation removes its pasted object with the job's remover from the *true* mask (the
matte: the segmenter is not what is judged here), scores every candidate as bootstrap
does, then measures each candidate against the truth inside the hole grown by
:data:`TRUTH_RING_PX` (where a removal can be wrong):

* PSNR (dB), which favours blur, and
* SSIM averaged over the same pixels, which does not.

The statistics (Spearman's rho, ROC AUC, precision and yield of a selection) are plain
functions of the per-candidate rows, so the report, the benchmark and the tests compute
them the same way.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.pvalue import TaggedOutput
from scipy import stats as scipy_stats
from skimage.metrics import structural_similarity

from schemas import Box, Detection, ObjectCandidates, ObjectMask, Reason, Rejection, SourceImage
from schemas.keys import content_sha256, object_key
from schemas.sample import SCORE_NAMES, CompositeSample, Field, composite_from_sample
from transforms.io.decode import decode_rgb
from transforms.io.readers import read_tar_samples
from transforms.mask_quality import MaskQualityConfig, dilate_mask
from transforms.masks import decode_mask_png, dilate, encode_mask_png
from transforms.models.removal import RemovalRequest
from transforms.models.segmentation import SegmentationRequest
from transforms.stage import RecordFunction, Stage
from transforms.thresholds import CandidateView, SelectionRules

#: Truth is compared inside the hole grown by this many pixels (the issue's "mask dilated by 4 px").
TRUTH_RING_PX = 4
#: A removal at least this close to the truth (PSNR in dB) counts as good.
GOOD_PSNR_DB = 20.0
#: The extra output of :class:`JudgeCandidates`: one :class:`TruthRow` dict per candidate.
ROWS_TAG = "truth_rows"

#: The detector name composites' objects carry: their box and mask are the truth, not a model's.
TRUTH = "composite-truth"


# --------------------------------------------------------------------------- reading


def _composite_samples(path: str) -> Iterator[CompositeSample | Rejection]:
    for sample in read_tar_samples(path, ReadComposites.stage):
        if isinstance(sample, Rejection):
            yield sample
            continue
        key, fields = sample
        uri = f"{path}#{key}"
        try:
            yield composite_from_sample(key, fields, uri)
        except ValueError as error:
            yield Rejection(uri, ReadComposites.stage, Reason.NOT_A_COMPOSITE_SAMPLE, str(error), key)


class ReadComposites(Stage):
    """Composite shard paths -> their samples: the evaluation's inputs are the samples it finds."""

    stage = "read_composites"
    source = True
    input_label = "composite_samples"

    def record_fn(self) -> RecordFunction:
        return _composite_samples


# --------------------------------------------------------------------------- removal requests


@dataclasses.dataclass(frozen=True)
class Truth:
    """What a candidate is judged against: the matte (uint8 PNG) and the exact target (PNG)."""

    key: str
    matte_png: bytes
    removed_png: bytes


def _truth_object(sample: CompositeSample) -> tuple[SourceImage, Detection, np.ndarray]:
    """The composite as a source image, its pasted object as a detection (box of the matte), and the matte."""
    src = sample.fields[Field.SRC]
    rgb = decode_rgb(src)
    height, width = rgb.shape[:2]
    source = SourceImage(key=sample.key, sha256=content_sha256(src), uri=sample.uri, width=width, height=height,
                         jpeg=src, origin="composite")
    matte = decode_mask_png(sample.fields[Field.MASK], width, height)
    ys, xs = np.nonzero(matte)
    if not ys.size:
        raise ValueError(f"{sample.key}: the composite's matte is empty")
    box = Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
    detection = Detection(label=sample.meta["object"]["label"], class_id=-1, score=1.0, box=box, detector=TRUTH)
    return source, detection, matte


def _grown(masks: MaskQualityConfig, obj: ObjectMask, mask: np.ndarray) -> ObjectMask:
    """The object with its mask grown as bootstrap's mask checks grow it (the outline kept for the cut-out)."""
    if not masks.dilate_px:
        return dataclasses.replace(obj, mask_png=encode_mask_png(mask))
    return dataclasses.replace(obj, mask_png=encode_mask_png(dilate_mask(mask, masks.dilate_px)),
                               object_png=encode_mask_png(mask))


def truth_request(masks: MaskQualityConfig, make_request: Callable[[SourceImage, ObjectMask], RemovalRequest],
                  sample: CompositeSample) -> RemovalRequest:
    """The removal request of a composite's pasted object, its mask the truth (grown as bootstrap grows masks)."""
    source, detection, matte = _truth_object(sample)
    obj = ObjectMask(key=object_key(sample.key, 0), source_key=sample.key, object_index=0, detection=detection,
                     mask_png=b"", predicted_iou=1.0, segmenter=TRUTH)
    return make_request(source, _grown(masks, obj, matte))


def _segmentation_request(sample: CompositeSample) -> Iterator[SegmentationRequest]:
    source, detection, _ = _truth_object(sample)
    yield SegmentationRequest.numbered(source, [detection])


class SegmentationRequests(Stage):
    """Composite samples -> segmentation requests from the pasted object's true box (``--masks_from segmenter``).

    The segmenter masks the object from its box, as it does in bootstrap, so the removals
    judged carry its mask errors (the truth they are judged against does not change).
    """

    stage = "segmentation_requests"

    def record_fn(self) -> RecordFunction:
        return _segmentation_request


class SegmentedObject(NamedTuple):
    """A segmenter's prediction for a composite's one object, named by the object's key."""

    prediction: PredictionResult

    @property
    def uri(self) -> str:
        return self.prediction.example.uri

    @property
    def key(self) -> str:
        return object_key(self.prediction.example.source.key, 0)


def _segmented_object(prediction: PredictionResult) -> SegmentedObject:
    return SegmentedObject(prediction)


def _object_key_of_prediction(prediction: PredictionResult) -> tuple[str]:
    return (object_key(prediction.example.source.key, 0),)


def _segmented_request(masks: MaskQualityConfig, make_request, segmented: SegmentedObject) -> Iterator[Any]:
    request: SegmentationRequest = segmented.prediction.example
    obj: ObjectMask = segmented.prediction.inference[0]
    mask = decode_mask_png(obj.mask_png, request.source.width, request.source.height)
    if not mask.any():
        yield Rejection(request.source.uri, SegmentedRequests.stage, Reason.MASK_EMPTY,
                        "the segmenter's mask of the pasted object is empty", obj.key)
        return
    yield make_request(request.source, _grown(masks, obj, mask))


class SegmentedRequests(Stage):
    """Segmenter predictions -> removal requests with the segmenter's mask, grown as bootstrap grows masks."""

    stage = "segmented_requests"

    def __init__(self, masks: MaskQualityConfig, make_request: Callable[[SourceImage, ObjectMask], RemovalRequest]):
        super().__init__()
        self._masks = masks
        self._make_request = make_request

    def prepare(self, predictions: beam.PCollection) -> beam.PCollection:
        return predictions | "AsObjects" >> beam.Map(_segmented_object)

    def input_keys(self):
        return _object_key_of_prediction

    def record_fn(self) -> RecordFunction:
        return functools.partial(_segmented_request, self._masks, self._make_request)


class PastedObject(NamedTuple):
    """A composite sample as the object it holds: named by the object's key, so its ledger rows balance."""

    sample: CompositeSample

    @property
    def uri(self) -> str:
        return self.sample.uri

    @property
    def key(self) -> str:
        return object_key(self.sample.key, 0)


def _pasted_object(sample: CompositeSample) -> PastedObject:
    return PastedObject(sample)


def _object_key_of(sample: CompositeSample) -> tuple[str]:
    return (object_key(sample.key, 0),)


def _requests(masks: MaskQualityConfig, make_request, pasted: PastedObject) -> Iterator[Any]:
    yield truth_request(masks, make_request, pasted.sample)


class TruthRequests(Stage):
    """Composite samples -> removal requests for their pasted objects, masked by the truth."""

    stage = "truth_requests"

    def __init__(self, masks: MaskQualityConfig, make_request: Callable[[SourceImage, ObjectMask], RemovalRequest]):
        super().__init__()
        self._masks = masks
        self._make_request = make_request

    def prepare(self, samples: beam.PCollection) -> beam.PCollection:
        return samples | "AsObjects" >> beam.Map(_pasted_object)

    def input_keys(self):
        return _object_key_of

    def record_fn(self) -> RecordFunction:
        return functools.partial(_requests, self._masks, self._make_request)


def truth_of(sample: CompositeSample) -> tuple[str, Truth]:
    """``(object key, Truth)`` of a composite sample, for joining with its scored candidates."""
    key = object_key(sample.key, 0)
    return key, Truth(key, sample.fields[Field.MASK], sample.fields[Field.REMOVED])


# --------------------------------------------------------------------------- judging


def truth_metrics(removed: np.ndarray, truth: np.ndarray, hole: np.ndarray) -> tuple[float, float]:
    """(PSNR in dB, mean SSIM) of ``removed`` against ``truth`` over ``hole`` (bool ``HxW``).

    SSIM is computed on the hole's bounding box with a margin of the window radius, then
    averaged over the hole's pixels. PSNR is capped at 100 dB (identical pixels).
    """
    if not hole.any():
        raise ValueError("the hole is empty")
    error = removed[hole].astype(np.float64) - truth[hole].astype(np.float64)
    mse = float(np.mean(error ** 2))
    psnr = 100.0 if mse == 0 else min(100.0, 10.0 * math.log10(255.0 ** 2 / mse))
    ys, xs = np.nonzero(hole)
    margin = 4
    y0, y1 = max(0, ys.min() - margin), min(hole.shape[0], ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(hole.shape[1], xs.max() + 1 + margin)
    crop = (slice(y0, y1), slice(x0, x1))
    if min(y1 - y0, x1 - x0) < 7:
        return psnr, float("nan")
    _, ssim_map = structural_similarity(truth[crop], removed[crop], channel_axis=2, data_range=255, full=True)
    return psnr, float(ssim_map.mean(axis=2)[hole[crop]].mean())


class TruthRow(NamedTuple):
    """One candidate judged: identity, remover, every score, and its distance to the truth."""

    key: str
    object_key: str
    background_key: str
    label: str
    candidate_index: int
    remover: str
    scores: Mapping[str, Optional[float]]
    psnr_db: float
    ssim: float

    def to_dict(self) -> dict[str, Any]:
        row = {name: getattr(self, name) for name in self._fields if name != "scores"}
        return {**row, **{name: self.scores.get(name) for name in SCORE_NAMES}}


class Judged(NamedTuple):
    """A scored object with its truth, as :class:`JudgeCandidates` takes it."""

    record: ObjectCandidates
    truth: Truth

    @property
    def uri(self) -> str:
        return self.record.uri

    @property
    def key(self) -> str:
        return self.record.key


def _pair_with_truth(keyed: tuple[str, Mapping[str, Sequence[Any]]]) -> Iterator[Judged]:
    _, grouped = keyed
    for record in grouped["objects"]:
        yield Judged(record, grouped["truth"][0])


def _judge(ring_px: int, judged: Judged) -> Iterator[Any]:
    record, truth = judged
    source = record.source
    matte = decode_mask_png(truth.matte_png, source.width, source.height)
    hole = dilate(matte, ring_px)
    target = decode_rgb(truth.removed_png)
    background = source.key.rpartition("_p")[0]
    for candidate in record.candidates:
        psnr, ssim = truth_metrics(decode_rgb(candidate.removed_png), target, hole)
        yield TaggedOutput(ROWS_TAG, TruthRow(
            key=candidate.key, object_key=record.key, background_key=background, label=record.mask.detection.label,
            candidate_index=candidate.candidate_index, remover=candidate.remover, scores=candidate.scores.to_json(),
            psnr_db=psnr, ssim=ssim).to_dict())
    yield record


class JudgeCandidates(Stage):
    """Scored objects -> the same objects, and one truth row per candidate (``ROWS_TAG``)."""

    stage = "judge"
    extra_tags = (ROWS_TAG,)

    def __init__(self, truths: beam.PCollection, ring_px: int = TRUTH_RING_PX) -> None:
        super().__init__()
        self._truths = truths
        self._ring_px = ring_px

    def prepare(self, objects: beam.PCollection) -> beam.PCollection:
        keyed = objects | "ByKey" >> beam.Map(lambda record: (record.key, record))
        return ({"objects": keyed, "truth": self._truths} | "WithTruth" >> beam.CoGroupByKey()
                | "Pair" >> beam.FlatMap(_pair_with_truth))

    def record_fn(self) -> RecordFunction:
        return functools.partial(_judge, self._ring_px)

    def expand(self, objects: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        outputs = self.apply_stage(objects)
        return outputs.main, outputs.extra[ROWS_TAG]


# --------------------------------------------------------------------------- statistics


def spearman(values: Sequence[Optional[float]], truth: Sequence[float]) -> Optional[float]:
    """Spearman's rho over the pairs where both are finite; ``None`` with fewer than 3 or a constant side."""
    pairs = [(v, t) for v, t in zip(values, truth) if v is not None and math.isfinite(v) and math.isfinite(t)]
    if len(pairs) < 3:
        return None
    a, b = np.array(pairs).T
    if a.min() == a.max() or b.min() == b.max():
        return None
    return float(scipy_stats.spearmanr(a, b).statistic)


def roc_auc(values: Sequence[Optional[float]], good: Sequence[bool]) -> Optional[float]:
    """P(a good candidate scores above a bad one), ties counting half (Mann-Whitney); ``None`` without both kinds."""
    pairs = [(v, g) for v, g in zip(values, good) if v is not None and math.isfinite(v)]
    positives = [v for v, g in pairs if g]
    negatives = [v for v, g in pairs if not g]
    if not positives or not negatives:
        return None
    u = scipy_stats.mannwhitneyu(positives, negatives, alternative="two-sided").statistic
    return float(u / (len(positives) * len(negatives)))


@dataclasses.dataclass(frozen=True)
class SelectionResult:
    """What a selection kept of the judged objects: yield, and precision against the truth."""

    objects: int
    kept: int
    good_kept: int

    @property
    def yield_(self) -> float:
        return self.kept / self.objects if self.objects else 0.0

    @property
    def precision(self) -> Optional[float]:
        return self.good_kept / self.kept if self.kept else None

    def to_json(self) -> dict[str, Any]:
        return {"objects": self.objects, "kept": self.kept, "good_kept": self.good_kept, "yield": self.yield_,
                "precision": self.precision}


def by_object(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Rows grouped by object, each object's candidates in index order."""
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(row["object_key"], []).append(row)
    return {key: sorted(candidates, key=lambda r: r["candidate_index"]) for key, candidates in sorted(grouped.items())}


def judge_selection(objects: Mapping[str, Sequence[Mapping[str, Any]]],
                    choose: Callable[[Sequence[Mapping[str, Any]]], Optional[int]],
                    good_db: float = GOOD_PSNR_DB) -> SelectionResult:
    """Apply ``choose`` (an object's candidate rows -> the kept candidate index, or ``None``) to every object."""
    kept = good = 0
    for candidates in objects.values():
        index = choose(candidates)
        if index is None:
            continue
        kept += 1
        chosen = next(row for row in candidates if row["candidate_index"] == index)
        good += chosen["psnr_db"] >= good_db
    return SelectionResult(len(objects), kept, good)


def rows_chooser(rules: SelectionRules,
                 quality_of: Optional[Callable[[Mapping[str, Any]], Optional[float]]] = None):
    """``rules.choose`` over an object's truth rows (their recorded scores); ``quality_of`` replaces ``quality``."""
    def choose(candidates: Sequence[Mapping[str, Any]]) -> Optional[int]:
        views = []
        for row in candidates:
            scores = {name: row[name] for name in SCORE_NAMES}
            if quality_of is not None:
                scores["quality"] = quality_of(row)
            views.append(CandidateView(row["candidate_index"], scores))
        return rules.choose(candidates[0]["object_key"], views).candidate_index

    return choose


def precision_sweep(rows: Sequence[Mapping[str, Any]], rules: SelectionRules, name: str, values: Sequence[float],
                    good_db: float = GOOD_PSNR_DB) -> list[SelectionResult]:
    """What a build would keep, judged against the truth, at each value of one threshold (the rest as ``rules``)."""
    objects = by_object(rows)
    return [judge_selection(objects, rows_chooser(dataclasses.replace(
        rules, thresholds=rules.thresholds.with_bound(name, float(value)))), good_db) for value in values]
