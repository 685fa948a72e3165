"""The object stages of bootstrap mining between the models: mask checks, and model-free scores.

    segmenter predictions --CheckMasks--> removal requests --(remover)--> candidates
    --ScoreCandidates--> ObjectCandidates with SSIM/change/seam scores (then re-detection, CLIP)

Both are :class:`~pipeline.stage.StageDoFn` stages: a mask that fails a check is a
rejection of that *object* with its reason; an exception is that object's dead letter.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Any, Callable, Iterator, Mapping

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from PIL import Image

from pipeline.stage import StageDoFn, StageOutputs, apply_stage
from schemas import ObjectCandidates, ObjectMask, Rejection, SourceImage
from schemas.sample import ObjectCutout, candidate_fields, candidate_metadata_row
from transforms.io.decode import decode_rgb
from transforms.io.shards import EncodedSample
from transforms.mask_quality import MaskFailure, MaskQualityConfig, check_mask
from transforms.masks import decode_mask_png, encode_mask_png
from transforms.models.removal import RemovalRequest
from transforms.models.segmentation import SegmentationRequest
from transforms.quality import QualityConfig, score_candidate

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


class _CheckMasksFn(StageDoFn):
    stage = "mask_quality"

    def __init__(self, config: MaskQualityConfig, make_request: RequestMaker) -> None:
        super().__init__()
        self._config = config
        self._make_request = make_request

    def process_record(self, item: MaskToCheck) -> Iterator[object]:
        source, obj = item.source, item.mask
        mask = decode_mask_png(obj.mask_png, source.width, source.height)
        checked = check_mask(mask, obj.detection.box, obj.predicted_iou, self._config)
        if isinstance(checked, MaskFailure):
            yield Rejection(source.uri, self.stage, checked.reason, checked.detail, obj.key)
            return
        if self._config.dilate_px:
            obj = dataclasses.replace(obj, mask_png=encode_mask_png(checked), object_png=obj.mask_png)
        yield self._make_request(source, obj)


class CheckMasks(beam.PTransform):
    """Segmenter predictions -> one removal request per object whose mask passes every check.

    Each object is checked on its own: a mask that cannot be decoded is that object's dead
    letter (stage ``mask_quality``), and the image's other objects go on.
    """

    def __init__(self, config: MaskQualityConfig, make_request: RequestMaker) -> None:
        super().__init__()
        self._config = config
        self._make_request = make_request

    def expand(self, predictions: beam.PCollection) -> StageOutputs:
        objects = predictions | "Objects" >> beam.FlatMap(_masks_to_check)
        return apply_stage(objects, "CheckMasks", _CheckMasksFn(self._config, self._make_request))


class _ScoreFn(StageDoFn):
    stage = "score"

    def __init__(self, config: QualityConfig) -> None:
        super().__init__()
        self._config = config

    def process_record(self, result: PredictionResult) -> Iterator[ObjectCandidates]:
        request: RemovalRequest = result.example
        source = request.source
        src = decode_rgb(source.jpeg)
        mask = decode_mask_png(request.mask.mask_png, source.width, source.height)
        candidates = tuple(
            dataclasses.replace(candidate, scores=score_candidate(src, mask, decode_rgb(candidate.removed_png), self._config))
            for candidate in result.inference
        )
        yield ObjectCandidates(source, request.mask, candidates)


class ScoreCandidates(beam.PTransform):
    """Remover predictions -> :class:`~schemas.ObjectCandidates` with the model-free scores filled."""

    def __init__(self, config: QualityConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, predictions: beam.PCollection) -> StageOutputs:
        return apply_stage(predictions, "Score", _ScoreFn(self._config))


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
