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
from transforms.io.decode import decode_rgb
from transforms.io.shards import EncodedSample
from transforms.mask_quality import MaskFailure, MaskQualityConfig, check_mask
from transforms.masks import decode_mask_png, encode_mask_png
from transforms.models.removal import RemovalRequest
from transforms.models.segmentation import SegmentationRequest
from transforms.quality import QualityConfig, score_candidate
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
    candidates = tuple(
        dataclasses.replace(candidate, scores=score_candidate(src, mask, decode_rgb(candidate.removed_png), config))
        for candidate in result.inference
    )
    yield ObjectCandidates(source, request.mask, candidates)


class ScoreCandidates(Stage):
    """Remover predictions -> :class:`~schemas.ObjectCandidates` with the model-free scores filled."""

    stage = "score"
    unit = OBJECTS

    def __init__(self, config: QualityConfig) -> None:
        super().__init__()
        self._config = config

    def record_fn(self) -> RecordFunction:
        return functools.partial(_score, self._config)


def object_cutout(record: ObjectCandidates) -> ObjectCutout:
    """The object as RGBA (alpha = its outline mask), cropped to the outline's bounding box."""
    source = record.source
    outline = decode_mask_png(record.mask.outline_png, source.width, source.height)
    rows, cols = np.flatnonzero(outline.any(axis=1)), np.flatnonzero(outline.any(axis=0))
    if not rows.size:
        raise ValueError(f"{record.key}: the object's mask is empty")
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    rgba = np.dstack([decode_rgb(source.jpeg)[y0:y1, x0:x1], outline[y0:y1, x0:x1].astype(np.uint8) * 255])
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=6)
    return ObjectCutout(png=buffer.getvalue(), box=(x0, y0, x1, y1), area_px=int(outline.sum()))


class CandidateSampleEncoder:
    """ObjectCandidates -> the candidate sample (docs/FORMAT.md), stamped with provenance and model ids."""

    def __init__(self, provenance: Mapping[str, Any], models: Mapping[str, str]) -> None:
        self._provenance = dict(provenance)
        self._models = dict(models)

    def __call__(self, record: ObjectCandidates) -> EncodedSample:
        cutout = object_cutout(record)
        return EncodedSample(key=record.key, fields=candidate_fields(record, cutout, self._provenance, self._models),
                             metadata=candidate_metadata_row(record, cutout))
