"""Objects from annotations: crowd boxes, object indices through selection, annotated masks in place of SAM's."""
from __future__ import annotations

import numpy as np
import pytest
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.pvalue import TaggedOutput

from schemas import Annotation, Box, Detection, ObjectMask, Reason, Rejection, SourceImage, object_key
from schemas.records import AnnotationMask
from transforms.annotated import AnnotatedObjects, AnnotationMasks, annotation_detection, needs_segmenter
from transforms.io.decode import encode_jpeg
from transforms.masks import decode_mask_png, encode_mask_png
from transforms.models.segmentation import SegmentationRequest
from transforms.selection import DETECTIONS_REJECTED, ImageObjects, SelectionConfig, SelectObjects

WIDTH, HEIGHT = 200, 100
SQUARE = AnnotationMask("polygon", ((20.0, 20.0, 60.0, 20.0, 60.0, 60.0, 20.0, 60.0),))


def _source(*annotations: Annotation) -> SourceImage:
    jpeg = encode_jpeg(np.full((HEIGHT, WIDTH, 3), 128, np.uint8), 90)
    return SourceImage(key="src", sha256="0" * 64, uri="mem://a.jpg", width=WIDTH, height=HEIGHT, jpeg=jpeg,
                       annotations=annotations)


def _run(stage, record) -> tuple[list, list[Rejection], list[Rejection]]:
    """A stage's record function on one record: kept records, rejections, recorded part rejections."""
    kept, rejected, recorded = [], [], []
    for output in stage.record_fn()(record):
        if isinstance(output, TaggedOutput):
            assert output.tag == DETECTIONS_REJECTED
            recorded.append(output.value)
        elif isinstance(output, Rejection):
            rejected.append(output)
        else:
            kept.append(output)
    return kept, rejected, recorded


def test_annotations_become_objects_keeping_their_index_and_crowds_are_rejected():
    source = _source(Annotation("person", Box(0, 0, 50, 50), 1, "coco", is_crowd=True),
                     Annotation("cup", Box(100, 10, 150, 60), 47, "coco", mask=SQUARE),
                     Annotation("Cat", Box(10, 10, 40, 90), None, "openimages"))
    [objects], [], [crowd] = _run(AnnotatedObjects(), source)
    assert objects.object_indices == (1, 2)
    cup, cat = objects.detections
    assert (cup.label, cup.class_id, cup.score, cup.box_source, cup.detector) == \
        ("cup", 47, 1.0, "annotation", "annotation:coco")
    assert (cat.label, cat.class_id, cat.detector) == ("Cat", -1, "annotation:openimages")
    assert (crowd.reason, crowd.key, crowd.stage) == (Reason.CROWD_BOX, object_key("src", 0), "annotations")


@pytest.mark.parametrize("annotations, reason", [
    ((), Reason.NO_BOXES),
    ((Annotation("person", Box(0, 0, 50, 50), is_crowd=True),), Reason.NO_SUITABLE_OBJECT),
])
def test_an_image_without_usable_annotations_is_rejected_whole(annotations, reason):
    kept, [rejection], _ = _run(AnnotatedObjects(), _source(*annotations))
    assert kept == [] and rejection.reason is reason and rejection.key == "src"


def test_selection_keys_objects_by_annotation_index_and_never_calls_two_annotations_duplicates():
    # Two annotated objects with IoU 0.8: a detector's pair would be one object twice; annotations are two.
    boxes = [Box(0, 0, 1, 1), Box(10, 10, 110, 90), Box(12, 10, 112, 90), Box(150, 0, 152, 2)]
    source = _source(*(Annotation("cup", box) for box in boxes))
    objects = ImageObjects(source, tuple(annotation_detection(a) for a in source.annotations[1:]), (1, 2, 3))
    config = SelectionConfig(max_area_fraction=1.0, max_overlap=1.0)
    [request], [], [small] = _run(SelectObjects(config), objects)
    assert request.object_indices == (1, 2)
    assert (small.reason, small.key) == (Reason.OBJECT_TOO_SMALL, object_key("src", 3))
    detected = [Detection("cup", 41, 0.9, box, "nanodet") for box in boxes[1:3]]
    [request], [], [duplicate] = _run(SelectObjects(config), PredictionResult(source, tuple(detected)))
    assert request.object_indices == (0,) and duplicate.reason is Reason.DUPLICATE_DETECTION


def _segmenter_mask(source: SourceImage, index: int, detection: Detection) -> ObjectMask:
    mask = np.zeros((HEIGHT, WIDTH), bool)
    mask[0:5, 0:5] = True
    return ObjectMask(object_key(source.key, index), source.key, index, detection, encode_mask_png(mask), 0.9, "sam")


def test_annotated_masks_replace_the_segmenters_and_a_broken_one_rejects_its_object():
    source = _source(Annotation("person", Box(100, 10, 190, 90)),
                     Annotation("cup", Box(20, 20, 60, 60), source="coco", mask=SQUARE),
                     Annotation("spoon", Box(0, 0, 10, 10), mask=AnnotationMask("rle", "!!", WIDTH, HEIGHT)))
    detections = tuple(annotation_detection(a) for a in source.annotations)
    request = SegmentationRequest.numbered(source, detections)
    assert needs_segmenter(request)  # the person has a box only
    segmented = PredictionResult(request, tuple(_segmenter_mask(source, i, d) for i, d in enumerate(detections)))
    [result], [], [broken] = _run(AnnotationMasks(), segmented)
    person, cup = result.inference
    assert (person.mask_source, person.segmenter) == ("segmenter", "sam")
    assert (cup.mask_source, cup.segmenter, cup.predicted_iou) == ("annotation", "annotation:coco", 1.0)
    pixels = decode_mask_png(cup.mask_png, WIDTH, HEIGHT)
    assert pixels.sum() == 40 * 40 and pixels[20:60, 20:60].all()
    assert result.example.object_indices == (0, 1) and result.example.detections == detections[:2]
    assert (broken.reason, broken.key, broken.stage) == (Reason.INVALID_MASK, object_key("src", 2), "annotation_masks")


def test_a_request_whose_objects_all_have_masks_skips_the_segmenter():
    source = _source(Annotation("cup", Box(20, 20, 60, 60), mask=SQUARE))
    request = SegmentationRequest.numbered(source, (annotation_detection(source.annotations[0]),))
    assert not needs_segmenter(request)
    [result], [], [] = _run(AnnotationMasks(), request)
    assert [mask.key for mask in result.inference] == [object_key("src", 0)]
    broken = _source(Annotation("cup", Box(20, 20, 60, 60), mask=AnnotationMask("rle", (5,), WIDTH, HEIGHT)))
    request = SegmentationRequest.numbered(broken, (annotation_detection(broken.annotations[0]),))
    [], [image], [cup] = _run(AnnotationMasks(), request)
    assert (image.reason, image.key) == (Reason.NO_OBJECT_KEPT, "src")
    assert cup.reason is Reason.INVALID_MASK and "cover 5 pixels" in cup.detail


def test_detector_objects_of_an_annotated_image_keep_the_segmenters_mask():
    source = _source(Annotation("cup", Box(20, 20, 60, 60), mask=SQUARE))
    detection = Detection("cup", 41, 0.8, Box(20, 20, 60, 60), "nanodet")
    request = SegmentationRequest.numbered(source, (detection,))
    assert needs_segmenter(request)
    [result], [], [] = _run(AnnotationMasks(), PredictionResult(request, (_segmenter_mask(source, 0, detection),)))
    assert result.inference[0].mask_source == "segmenter"
