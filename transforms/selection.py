"""Suitable-object selection: ObjectDrop's "14M images -> 700K objects" step, as declarative rules.

A detector finds everything; only some objects make good counterfactuals. An object is
kept when it passes every enabled rule of :class:`SelectionConfig`, in this order:

==========================  =========================  ======================================
rule                        reason when it fails       why
==========================  =========================  ======================================
``allow_labels``            ``label_not_allowed``      the dataset is about these classes
``deny_labels``             ``label_denied``           classes never to remove (e.g. "tv")
``duplicate_iou``           ``duplicate_detection``    the same object under a second class
``min_score``               ``low_score``              unsure detections make wrong masks
``min_area_fraction``       ``object_too_small``       too few pixels to learn from
``max_area_fraction``       ``object_too_large``       removing it leaves nothing to keep
``min_border_fraction``     ``truncated_by_border``    a cut-off object cannot be re-pasted whole
``max_overlap``             ``occluded``               another object covers part of it
``max_objects``             ``too_many_objects``       bounds the work per image (best kept)
==========================  =========================  ======================================

An image smaller than ``min_image_side`` is rejected (``image_too_small``) before
detection; an image with no detection is ``no_detections``, one whose detections all
fail is ``no_suitable_object``. Every rejected detection is recorded with its reason
(key: the object key it would have had), so a reviewer can ask why a cup was not taken.

Annotated objects (:mod:`transforms.annotated`) go through the same rules as
:class:`ImageObjects` (score 1, so ``min_score`` passes them), keeping their annotation's
index as their object index; two annotated boxes are never duplicates of each other.
"""
from __future__ import annotations

import abc
import dataclasses
import functools
from typing import Iterator, Optional, Sequence

import apache_beam as beam
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.pvalue import TaggedOutput

from schemas import Box, Detection, Reason, Rejection, SourceImage, object_key
from transforms.checks import is_int, is_unit
from transforms.duplicates import DUPLICATE_IOU, duplicate_detail, duplicate_of, intersection
from transforms.ledger import RunAccounts
from transforms.models.segmentation import SegmentationRequest
from transforms.stage import RecordFunction, Stage

DETECTIONS_REJECTED = "detections_rejected"


def _is_count(value: object) -> bool:
    return is_int(value) and value >= 1


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """The selection rules. Fractions are of the image: area of its area, border distance of its side.

    ``allow_labels`` empty allows every label. ``min_border_fraction`` 0 keeps objects
    touching the border. ``duplicate_iou``: a detection whose box has at least this IoU
    with a higher-scored one is the same object under another label (detectors suppress
    overlaps per class only: a van is often both "car" and "truck"); it is rejected and
    never counts as an occluder. ``max_overlap`` is the largest share of an object's box
    that another (non-duplicate) detection's box may cover; 1 disables either check. Boxes
    cannot tell in front from behind, but a larger box that holds the object's whole box
    (:data:`CONTAINED_SHARE`) cannot be hiding it, since the object was seen whole: it is
    what the object stands on or in front of (the table under a cup), not an occluder.
    """

    allow_labels: tuple[str, ...] = ()
    deny_labels: tuple[str, ...] = ()
    min_score: float = 0.25
    min_area_fraction: float = 0.005
    max_area_fraction: float = 0.7
    min_border_fraction: float = 0.0
    duplicate_iou: float = DUPLICATE_IOU
    max_overlap: float = 0.5
    max_objects: int = 8
    min_image_side: int = 64

    def __post_init__(self) -> None:
        for name in ("allow_labels", "deny_labels"):
            labels = getattr(self, name)
            labels = (labels,) if isinstance(labels, str) else tuple(labels)
            if not all(isinstance(label, str) and label for label in labels):
                raise ValueError(f"{name} must be a list of non-empty labels, got {labels!r}")
            object.__setattr__(self, name, labels)
        both = set(self.allow_labels) & set(self.deny_labels)
        if both:
            raise ValueError(f"labels both allowed and denied: {sorted(both)}")
        for name in ("min_score", "min_area_fraction", "max_area_fraction", "duplicate_iou", "max_overlap"):
            if not is_unit(getattr(self, name)):
                raise ValueError(f"{name} must be a number in [0, 1], got {getattr(self, name)!r}")
        if not (is_unit(self.min_border_fraction) and self.min_border_fraction < 0.5):
            raise ValueError(f"min_border_fraction must be a number in [0, 0.5), got {self.min_border_fraction!r}")
        if self.min_area_fraction > self.max_area_fraction:
            raise ValueError(f"min_area_fraction {self.min_area_fraction} > max_area_fraction {self.max_area_fraction}")
        for name in ("max_objects", "min_image_side"):
            if not _is_count(getattr(self, name)):
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")

    def rules(self) -> tuple["Rule", ...]:
        """The enabled per-detection rules, in the order they are checked."""
        candidates = (
            AllowLabels(self.allow_labels) if self.allow_labels else None,
            DenyLabels(self.deny_labels) if self.deny_labels else None,
            NotDuplicate(self.duplicate_iou) if self.duplicate_iou < 1 else None,
            MinScore(self.min_score),
            MinArea(self.min_area_fraction),
            MaxArea(self.max_area_fraction),
            BorderDistance(self.min_border_fraction) if self.min_border_fraction > 0 else None,
            MaxOverlap(self.max_overlap) if self.max_overlap < 1 else None,
        )
        return tuple(rule for rule in candidates if rule is not None)


@dataclasses.dataclass(frozen=True)
class ImageContext:
    """What a rule may look at besides the detection itself.

    ``duplicate_of[i]`` is the index of the higher-scored detection that detection ``i``
    repeats, or ``None``.
    """

    width: int
    height: int
    detections: tuple[Detection, ...]
    duplicate_of: tuple[Optional[int], ...]

    @property
    def area(self) -> float:
        return float(self.width * self.height)


class Rule(abc.ABC):
    """One selection rule: ``failure`` is ``None`` when the detection passes, else the measured detail."""

    reason: Reason

    @abc.abstractmethod
    def failure(self, index: int, detection: Detection, image: ImageContext) -> Optional[str]:
        """Why detection ``index`` of ``image`` fails this rule, or ``None``."""


@dataclasses.dataclass(frozen=True)
class AllowLabels(Rule):
    labels: tuple[str, ...]
    reason = Reason.LABEL_NOT_ALLOWED

    def failure(self, index: int, detection: Detection, image: ImageContext) -> Optional[str]:
        return None if detection.label in self.labels else f"{detection.label!r} is not in allow_labels"


@dataclasses.dataclass(frozen=True)
class DenyLabels(Rule):
    labels: tuple[str, ...]
    reason = Reason.LABEL_DENIED

    def failure(self, index: int, detection: Detection, image: ImageContext) -> Optional[str]:
        return f"{detection.label!r} is in deny_labels" if detection.label in self.labels else None


@dataclasses.dataclass(frozen=True)
class MinScore(Rule):
    minimum: float
    reason = Reason.LOW_SCORE

    def failure(self, index: int, detection: Detection, image: ImageContext) -> Optional[str]:
        return None if detection.score >= self.minimum else f"score {detection.score:.3f} < {self.minimum}"


def _area_fraction(box: Box, image: ImageContext) -> float:
    return box.clipped(image.width, image.height).area / image.area


@dataclasses.dataclass(frozen=True)
class MinArea(Rule):
    minimum: float
    reason = Reason.OBJECT_TOO_SMALL

    def failure(self, index: int, detection: Detection, image: ImageContext) -> Optional[str]:
        fraction = _area_fraction(detection.box, image)
        return None if fraction >= self.minimum else f"box covers {fraction:.4f} of the image < {self.minimum}"


@dataclasses.dataclass(frozen=True)
class MaxArea(Rule):
    maximum: float
    reason = Reason.OBJECT_TOO_LARGE

    def failure(self, index: int, detection: Detection, image: ImageContext) -> Optional[str]:
        fraction = _area_fraction(detection.box, image)
        return None if fraction <= self.maximum else f"box covers {fraction:.3f} of the image > {self.maximum}"


@dataclasses.dataclass(frozen=True)
class BorderDistance(Rule):
    minimum: float
    reason = Reason.TRUNCATED_BY_BORDER

    def failure(self, index: int, detection: Detection, image: ImageContext) -> Optional[str]:
        box = detection.box
        distance = min(box.x0 / image.width, box.y0 / image.height,
                       (image.width - box.x1) / image.width, (image.height - box.y1) / image.height)
        return None if distance >= self.minimum else f"box is {max(distance, 0.0):.4f} of the image from its border < {self.minimum}"


def overlap_share(box: Box, other: Box) -> float:
    """The share of ``box``'s area that ``other`` covers."""
    return intersection(box, other) / box.area


#: The share of an object's box that a larger box must cover to be taken for what is behind it.
CONTAINED_SHARE = 0.98


def _behind(share: float, box: Box, other: Box) -> bool:
    return share >= CONTAINED_SHARE and other.area > box.area


def duplicates(detections: Sequence[Detection], min_iou: float) -> tuple[Optional[int], ...]:
    """For each detection, the higher-scored one it repeats, or ``None`` (see :mod:`transforms.duplicates`)."""
    return duplicate_of([d.box for d in detections], [d.score for d in detections],
                        [d.box_source == "annotation" for d in detections], min_iou)


@dataclasses.dataclass(frozen=True)
class NotDuplicate(Rule):
    min_iou: float
    reason = Reason.DUPLICATE_DETECTION

    def failure(self, index: int, detection: Detection, image: ImageContext) -> Optional[str]:
        j = image.duplicate_of[index]
        if j is None:
            return None
        other = image.detections[j]
        return duplicate_detail(detection.box, other.box, j, other.label, other.score)


@dataclasses.dataclass(frozen=True)
class MaxOverlap(Rule):
    maximum: float
    reason = Reason.OCCLUDED

    def failure(self, index: int, detection: Detection, image: ImageContext) -> Optional[str]:
        shares = [(share, j) for j, other in enumerate(image.detections)
                  if j != index and image.duplicate_of[j] is None and image.duplicate_of[index] != j
                  and not _behind(share := overlap_share(detection.box, other.box), detection.box, other.box)]
        share, j = max(shares, default=(0.0, -1))
        if share <= self.maximum:
            return None
        return f"{share:.3f} of its box is covered by detection {j} ({image.detections[j].label}) > {self.maximum}"


@dataclasses.dataclass(frozen=True)
class Selection:
    """The outcome for one image: kept detection indices, and each rejected one with its reason."""

    kept: tuple[int, ...]
    rejected: tuple[tuple[int, Reason, str], ...]


def select_objects(detections: Sequence[Detection], width: int, height: int, config: SelectionConfig) -> Selection:
    """Apply the rules to one image's detections (indexed as given; highest score first)."""
    image = ImageContext(width, height, tuple(detections), duplicates(detections, config.duplicate_iou))
    rules = config.rules()
    passed, rejected = [], []
    for index, detection in enumerate(image.detections):
        failure = next(((rule.reason, detail) for rule in rules
                        if (detail := rule.failure(index, detection, image)) is not None), None)
        if failure is None:
            passed.append(index)
        else:
            rejected.append((index, *failure))
    ranked = sorted(passed, key=lambda i: -image.detections[i].score)
    for index in ranked[config.max_objects:]:
        rejected.append((index, Reason.TOO_MANY_OBJECTS, f"{len(ranked)} objects passed, max_objects {config.max_objects}"))
    return Selection(kept=tuple(sorted(ranked[:config.max_objects])), rejected=tuple(sorted(rejected)))


# --------------------------------------------------------------------------- Beam stages


def _check_image_size(min_side: int, source: SourceImage) -> Iterator[object]:
    if min(source.width, source.height) < min_side:
        yield Rejection(source.uri, FilterImageSize.stage, Reason.IMAGE_TOO_SMALL,
                        f"{source.width}x{source.height}, min_image_side {min_side}", source.key)
    else:
        yield source


class FilterImageSize(Stage):
    """Reject images too small to hold a usable object, before any model sees them."""

    stage = "image_size"

    def __init__(self, config: SelectionConfig) -> None:
        super().__init__()
        self._min_side = config.min_image_side

    def record_fn(self) -> RecordFunction:
        return functools.partial(_check_image_size, self._min_side)


@dataclasses.dataclass(frozen=True)
class ImageObjects:
    """One image's objects to select from, each with its object index (``object_indices[i]`` names ``detections[i]``).

    A detector's objects are numbered 0, 1, ... in its order; annotated objects keep the
    index of their annotation, so an object's key names the same box whatever was left out
    before selection (a crowd box).
    """

    source: SourceImage
    detections: tuple[Detection, ...]
    object_indices: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.detections) != len(self.object_indices):
            raise ValueError(f"{self.source.key}: {len(self.detections)} detections but "
                             f"{len(self.object_indices)} object indices")

    @classmethod
    def of(cls, record: "ImageObjects | PredictionResult") -> "ImageObjects":
        """A detector's prediction (``PredictionResult(source, detections)``) as numbered objects."""
        if isinstance(record, ImageObjects):
            return record
        detections = tuple(record.inference)
        return cls(record.example, detections, tuple(range(len(detections))))

    # Read by the stage plumbing when it names a dead letter.
    @property
    def key(self) -> str:
        return self.source.key

    @property
    def uri(self) -> str:
        return self.source.uri


def _select(config: SelectionConfig, record: "ImageObjects | PredictionResult") -> Iterator[object]:
    objects = ImageObjects.of(record)
    source, detections, indices = objects.source, objects.detections, objects.object_indices
    stage = SelectObjects.stage
    if not detections:
        yield Rejection(source.uri, stage, Reason.NO_DETECTIONS, "", source.key)
        return
    selection = select_objects(detections, source.width, source.height, config)
    for index, reason, detail in selection.rejected:
        detection = detections[index]
        yield TaggedOutput(DETECTIONS_REJECTED, Rejection(
            source.uri, stage, reason, f"{detection.label} {detection.score:.2f}: {detail}",
            object_key(source.key, indices[index])))
    if not selection.kept:
        reasons = sorted({reason.value for _, reason, _ in selection.rejected})
        yield Rejection(source.uri, stage, Reason.NO_SUITABLE_OBJECT,
                        f"{len(detections)} detections, rejected as {', '.join(reasons)}", source.key)
        return
    yield SegmentationRequest(source, tuple(detections[i] for i in selection.kept),
                              tuple(indices[i] for i in selection.kept))


class SelectObjects(Stage):
    """Detector predictions (``PredictionResult(source, detections)``) or :class:`ImageObjects` -> segmentation requests.

    An image is kept or rejected as a whole; every detection it does not keep is recorded
    (counted as ``detections_rejected``) with its reason and the object key it would have had.
    """

    stage = "select"
    extra_tags = (DETECTIONS_REJECTED,)

    def __init__(self, config: SelectionConfig) -> None:
        super().__init__()
        self._config = config

    def record_fn(self) -> RecordFunction:
        return functools.partial(_select, self._config)

    def expand(self, predictions: beam.PCollection) -> beam.PCollection:
        outputs = self.apply_stage(predictions)
        RunAccounts.of(predictions).add_recorded(DETECTIONS_REJECTED, outputs.extra[DETECTIONS_REJECTED])
        return outputs.main
