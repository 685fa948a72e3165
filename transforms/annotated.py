"""Objects from annotations: boxes that skip detection, masks that skip segmentation.

An annotated dataset (COCO, OpenImages) already says where its objects are, often better
than a detector would (PIPE / Paint-by-Inpaint built its pairs from COCO and OpenImages
masks). Where the objects of an image come from is :class:`BoxSource`:

* ``detector``: the detector finds every object, annotations or not (the embedded default's
  behaviour before annotations were read);
* ``annotations``: each annotated box is an object (label from the file, score 1); an
  image without annotations is rejected (``no_boxes``) and the detector never runs;
* ``auto``: annotations where an image has them, the detector for images that have none
  (so, with no annotation file, the same as ``detector``).

In both annotated modes an object whose annotation has a mask (COCO polygons or RLE, an
OpenImages mask PNG) takes that mask and is not segmented; an object with a box only is
segmented from its box. An image all of whose selected objects have masks skips the
segmenter; in an image with both, the segmenter sees every box (its image encoder, the
whole cost, runs once either way) and annotated masks replace its masks.

Two stages, both of the run's main ledger (one image in, one record out):

* :class:`AnnotatedObjects` (before selection): an image -> its annotations as
  :class:`~transforms.selection.ImageObjects`, each keeping its annotation's index as its
  object index; a crowd annotation (one box around many objects) is rejected as
  ``crowd_box``, recorded with its object key like a rejected detection;
* :class:`AnnotationMasks` (after segmentation): each annotated mask decoded into the
  object's :class:`~schemas.ObjectMask` (``mask_source="annotation"``); one that cannot be
  decoded rejects its object (``invalid_mask``), and an image left with no object is
  rejected as ``no_object_kept``.

So every annotation of an image that reaches these stages ends in the candidate shards or
as a rejection with its object key: ``invalid_box`` / ``invalid_mask`` when the file is
parsed, ``crowd_box`` here, a selection reason, ``invalid_mask`` here, or the object
ledger's outcome (a mask check, a dead letter, written).
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Iterator, Union

import apache_beam as beam
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.pvalue import TaggedOutput

from schemas import Annotation, Detection, ObjectMask, Reason, Rejection, SourceImage, object_key
from transforms.io.annotations import mask_pixels
from transforms.ledger import RunAccounts
from transforms.masks import encode_mask_png
from transforms.models.segmentation import SegmentationRequest
from transforms.selection import DETECTIONS_REJECTED, ImageObjects
from transforms.stage import RecordFunction, Stage

#: ``Detection.detector`` / ``ObjectMask.segmenter`` of annotated objects: ``annotation:coco``.
ANNOTATION_MODEL_PREFIX = "annotation:"
#: The class id of an annotation that has no numeric category (OpenImages names classes by MID).
NO_CLASS_ID = -1


class BoxSource(str, enum.Enum):
    """Where an image's objects come from (see the module docstring)."""

    AUTO = "auto"
    ANNOTATIONS = "annotations"
    DETECTOR = "detector"


def annotation_detection(annotation: Annotation) -> Detection:
    """An annotation as the detection of its object: the file's label and box, score 1."""
    return Detection(
        label=annotation.label,
        class_id=NO_CLASS_ID if annotation.category_id is None else annotation.category_id,
        score=1.0,
        box=annotation.box,
        detector=ANNOTATION_MODEL_PREFIX + (annotation.source or "file"),
        box_source="annotation",
    )


def _annotated_objects(source: SourceImage) -> Iterator[object]:
    stage = AnnotatedObjects.stage
    if not source.annotations:
        yield Rejection(source.uri, stage, Reason.NO_BOXES, "the image has no annotation", source.key)
        return
    detections, indices = [], []
    for index, annotation in enumerate(source.annotations):
        if annotation.is_crowd:
            yield TaggedOutput(DETECTIONS_REJECTED, Rejection(
                source.uri, stage, Reason.CROWD_BOX, f"{annotation.label}: a crowd box holds many objects",
                object_key(source.key, index)))
        else:
            detections.append(annotation_detection(annotation))
            indices.append(index)
    if not detections:
        yield Rejection(source.uri, stage, Reason.NO_SUITABLE_OBJECT,
                        f"{len(source.annotations)} annotations, every one a crowd box", source.key)
        return
    yield ImageObjects(source, tuple(detections), tuple(indices))


class AnnotatedObjects(Stage):
    """Source images -> their annotated objects (:class:`~transforms.selection.ImageObjects`), for selection.

    Crowd annotations are recorded (counted as ``detections_rejected``, reason ``crowd_box``)
    with the object key they would have had.
    """

    stage = "annotations"
    extra_tags = (DETECTIONS_REJECTED,)

    def record_fn(self) -> RecordFunction:
        return _annotated_objects

    def expand(self, images: beam.PCollection) -> beam.PCollection:
        outputs = self.apply_stage(images)
        RunAccounts.of(images).add_recorded(DETECTIONS_REJECTED, outputs.extra[DETECTIONS_REJECTED])
        return outputs.main


def _annotation_of(source: SourceImage, index: int, detection: Detection) -> Union[Annotation, None]:
    """The annotation behind an annotated object, or ``None`` for a detector's object."""
    return source.annotations[index] if detection.box_source == "annotation" else None


def has_annotated_mask(source: SourceImage, index: int, detection: Detection) -> bool:
    annotation = _annotation_of(source, index, detection)
    return annotation is not None and annotation.mask is not None


def needs_segmenter(request: SegmentationRequest) -> bool:
    """Whether some selected object of the request has no annotated mask (so SAM must run)."""
    return not all(has_annotated_mask(request.source, index, detection)
                   for index, detection in zip(request.object_indices, request.detections))


def _annotation_masks(record: Union[PredictionResult, SegmentationRequest]) -> Iterator[object]:
    """The request's objects with annotated masks in place of the segmenter's (or of none)."""
    request: SegmentationRequest = record.example if isinstance(record, PredictionResult) else record
    masks = () if isinstance(record, SegmentationRequest) else record.inference
    segmented = {mask.object_index: mask for mask in masks}
    source = request.source
    objects, rejected = [], []
    for index, detection in zip(request.object_indices, request.detections):
        key = object_key(source.key, index)
        annotation = _annotation_of(source, index, detection)
        if annotation is None or annotation.mask is None:
            objects.append(segmented[index])
            continue
        try:
            pixels = mask_pixels(annotation.mask, source.width, source.height)
        except ValueError as error:
            rejected.append(key)
            yield TaggedOutput(DETECTIONS_REJECTED, Rejection(
                source.uri, AnnotationMasks.stage, Reason.INVALID_MASK,
                f"{annotation.label} ({annotation.mask.kind} mask): {error}", key))
            continue
        objects.append(ObjectMask(
            key=key, source_key=source.key, object_index=index, detection=detection,
            mask_png=encode_mask_png(pixels), predicted_iou=1.0,
            segmenter=ANNOTATION_MODEL_PREFIX + (annotation.source or "file"), mask_source="annotation"))
    if not objects:
        yield Rejection(source.uri, AnnotationMasks.stage, Reason.NO_OBJECT_KEPT,
                        f"{len(rejected)} objects rejected: {Reason.INVALID_MASK.value}", source.key)
        return
    kept = tuple(obj.object_index for obj in objects)
    detections = tuple(obj.detection for obj in objects)
    request = dataclasses.replace(request, detections=detections, object_indices=kept)
    yield PredictionResult(example=request, inference=tuple(objects),
                           model_id=getattr(record, "model_id", None) or ANNOTATION_MODEL_PREFIX.rstrip(":"))


class AnnotationMasks(Stage):
    """Segmenter predictions, or requests that skipped the segmenter -> predictions with annotated masks.

    The output is what the segmenter gives (``PredictionResult(request, tuple[ObjectMask])``),
    so the object stages after it cannot tell where a mask came from except by its
    ``mask_source``. An object whose mask cannot be decoded is recorded as ``invalid_mask``
    (counted as ``detections_rejected``) and left out of the request.
    """

    stage = "annotation_masks"
    extra_tags = (DETECTIONS_REJECTED,)

    def record_fn(self) -> RecordFunction:
        return _annotation_masks

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        outputs = self.apply_stage(records)
        RunAccounts.of(records).add_recorded(DETECTIONS_REJECTED, outputs.extra[DETECTIONS_REJECTED])
        return outputs.main
