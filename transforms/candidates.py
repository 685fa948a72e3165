"""The object stages of bootstrap mining between the models: mask checks, and model-free scores.

    segmenter predictions --CheckMasks--> removal requests --(remover)--> candidates
    --ScoreCandidates--> ObjectCandidates with SSIM/change/seam scores (then re-detection, CLIP)

Both are stages of the object ledger (:data:`OBJECTS`): a mask that fails a check is a
rejection of that *object* with its reason; an exception is that object's dead letter.
"""
from __future__ import annotations

import dataclasses
import functools
import io
from typing import Any, Callable, Iterator, Mapping

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from PIL import Image

from schemas import ObjectCandidates, ObjectMask, Rejection, SourceImage
from schemas.sample import ObjectCutout, candidate_fields, candidate_metadata_row
from transforms.checks import is_integral
from transforms.io.decode import decode_rgb
from transforms.io.shards import EncodedSample
from transforms.mask_quality import MaskFailure, MaskQualityConfig, check_mask
from transforms.masks import changed_pixels, check_covers, decode_mask_png, encode_mask_png, soft_matte
from transforms.models.removal import RemovalRequest
from transforms.models.segmentation import SegmentationRequest
from transforms.quality import QualityConfig, score_candidates
from transforms.quality_model import load_model, with_quality
from transforms.stage import RecordFunction, Stage

#: The object ledger of bootstrap mining: every selected object ends written, rejected or dead.
OBJECTS = "objects"

#: Builds the removal request of a kept object; a remover config's ``request`` method.
RequestMaker = Callable[[SourceImage, ObjectMask], RemovalRequest]


@dataclasses.dataclass(frozen=True)
class MaskToCheck:
    """One object's mask with its source: CheckMasks' unit of work, so a failure is that object's alone.

    ``uri`` and ``key`` are what a dead letter records: the image, for its outcome, and the object.
    """

    source: SourceImage
    mask: ObjectMask

    @property
    def uri(self) -> str:
        return self.source.uri

    @property
    def key(self) -> str:
        return self.mask.key


def _masks_to_check(result: PredictionResult) -> list[MaskToCheck]:
    request: SegmentationRequest = result.example
    return [MaskToCheck(request.source, obj) for obj in result.inference]


def _check_mask(config: MaskQualityConfig, make_request: RequestMaker, item: MaskToCheck) -> Iterator[object]:
    source, obj = item.source, item.mask
    mask = decode_mask_png(obj.mask_png, source.width, source.height)
    checked = check_mask(mask, obj.detection.box, obj.predicted_iou, config)
    if isinstance(checked, MaskFailure):
        yield Rejection(source.uri, CheckMasks.stage, checked.reason, checked.detail, obj.key)
        return
    if config.dilate_px:
        obj = dataclasses.replace(obj, mask_png=encode_mask_png(checked), object_png=obj.mask_png)
    yield make_request(source, obj)


def _object_keys(prediction: PredictionResult) -> list[str]:
    return [mask.key for mask in prediction.inference]


class CheckMasks(Stage):
    """Segmenter predictions -> one removal request per object whose mask passes every check.

    The first stage of the object ledger: each object of each prediction is one of its
    inputs and is checked on its own, so a mask that cannot be decoded is that object's
    dead letter, and the image's other objects go on.
    """

    stage = "mask_quality"
    unit = OBJECTS
    opens_ledger = True

    def __init__(self, config: MaskQualityConfig, make_request: RequestMaker) -> None:
        super().__init__()
        self._config = config
        self._make_request = make_request

    def prepare(self, predictions: beam.PCollection) -> beam.PCollection:
        return predictions | "Objects" >> beam.FlatMap(_masks_to_check)

    def input_keys(self):
        return _object_keys

    def record_fn(self) -> RecordFunction:
        return functools.partial(_check_mask, self._config, self._make_request)


def _score(config: QualityConfig, result: PredictionResult) -> Iterator[ObjectCandidates]:
    request: RemovalRequest = result.example
    source = request.source
    src = decode_rgb(source.jpeg)
    mask = decode_mask_png(request.mask.mask_png, source.width, source.height)
    model = None if config.quality_model == "" else load_model(config.quality_model)
    scores = score_candidates(src, mask, [decode_rgb(c.removed_png) for c in result.inference], config)
    candidates = tuple(dataclasses.replace(candidate, scores=with_quality(candidate_scores, model))
                       for candidate, candidate_scores in zip(result.inference, scores))
    yield ObjectCandidates(source, request.mask, candidates)


class ScoreCandidates(Stage):
    """Remover predictions -> :class:`~schemas.ObjectCandidates` with the model-free scores and ``quality`` filled."""

    stage = "score"
    unit = OBJECTS

    def __init__(self, config: QualityConfig) -> None:
        super().__init__()
        self._config = config

    def record_fn(self) -> RecordFunction:
        return functools.partial(_score, self._config)


def object_cutout(record: ObjectCandidates, matte_px: int) -> ObjectCutout:
    """The object as RGBA, cropped to where its alpha is nonzero; every candidate must have its region.

    Alpha is a soft matte across the outline (:func:`~transforms.masks.soft_matte`), so a
    re-pasted edge is anti-aliased, not a staircase. Outside the outline it is kept inside
    every candidate's region: whichever candidate a build picks, the edge blends only into
    pixels that candidate repainted, and the pasted image equals the source everywhere else.
    """
    source = record.source
    outline = decode_mask_png(record.mask.outline_png, source.width, source.height)
    if not outline.any():
        raise ValueError(f"{record.key}: the object's mask is empty")
    every_region = np.ones_like(outline)
    for candidate in record.candidates:
        every_region &= decode_mask_png(candidate.region_png, source.width, source.height)
    alpha = np.where(outline | every_region, soft_matte(outline, matte_px), 0).astype(np.uint8)
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    rgba = np.dstack([decode_rgb(source.jpeg)[y0:y1, x0:x1], alpha[y0:y1, x0:x1]])
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=6)
    return ObjectCutout(png=buffer.getvalue(), box=(x0, y0, x1, y1), area_px=int(outline.sum()), matte_px=matte_px)


class CandidateSampleEncoder:
    """ObjectCandidates -> the candidate sample (docs/FORMAT.md), stamped with provenance and model ids.

    Each candidate's region is checked to hold every pixel it changed (a candidate that
    breaks this is the object's dead letter, not a pair with a wrong mask); a remover that
    recorded none gets the changed pixels. ``matte_px``: half-width of the cut-out's soft edge.
    """

    def __init__(self, provenance: Mapping[str, Any], models: Mapping[str, str], matte_px: int = 2) -> None:
        if not is_integral(matte_px) or not 0 <= matte_px <= 16:
            raise ValueError(f"matte_px must be an integer in [0, 16], got {matte_px!r}")
        self._provenance = dict(provenance)
        self._models = dict(models)
        self._matte_px = int(matte_px)

    def __call__(self, record: ObjectCandidates) -> EncodedSample:
        record = self._with_regions(record)
        cutout = object_cutout(record, self._matte_px)
        return EncodedSample(key=record.key, fields=candidate_fields(record, cutout, self._provenance, self._models),
                             metadata=candidate_metadata_row(record, cutout))

    @staticmethod
    def _with_regions(record: ObjectCandidates) -> ObjectCandidates:
        source = record.source
        src = decode_rgb(source.jpeg)
        candidates = []
        for candidate in record.candidates:
            removed = decode_rgb(candidate.removed_png)
            if candidate.region_png is None:
                candidate = dataclasses.replace(candidate, region_png=encode_mask_png(changed_pixels(src, removed)))
            else:
                region = decode_mask_png(candidate.region_png, source.width, source.height)
                check_covers(region, src, removed, f"candidate {candidate.key}")
            candidates.append(candidate)
        return dataclasses.replace(record, candidates=tuple(candidates))
