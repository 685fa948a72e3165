"""Frozen record types for everything that flows between stages.

Records are plain frozen dataclasses: cheap to pickle between Beam workers, impossible to
mutate behind a stage's back, and validated when built so a bad value fails where it is
made rather than three stages later. Pixel data travels encoded (JPEG/PNG bytes) between
stages, because records cross shuffles and encoded images are 5-20x smaller than arrays;
masks and candidate images that must stay lossless travel as PNG.
"""
from __future__ import annotations

import dataclasses
import enum
import math
from typing import Optional, Sequence, Union

from schemas.reasons import Note, Reason


@dataclasses.dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixel coordinates of the upright image, ``x0 < x1``, ``y0 < y1``."""

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        values = (self.x0, self.y0, self.x1, self.y1)
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"box has a non-finite coordinate: {values}")
        if not (self.x1 > self.x0 and self.y1 > self.y0):
            raise ValueError(f"box is empty or inverted: {values}")

    @classmethod
    def from_xywh(cls, x: float, y: float, w: float, h: float) -> "Box":
        return cls(float(x), float(y), float(x) + float(w), float(y) + float(h))

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0

    @property
    def area(self) -> float:
        return self.width * self.height

    def as_list(self) -> list[float]:
        return [self.x0, self.y0, self.x1, self.y1]

    def clipped(self, width: int, height: int) -> "Box":
        """The box clipped to an image of ``width`` x ``height``; raises if nothing is left."""
        return Box(max(0.0, self.x0), max(0.0, self.y0), min(float(width), self.x1), min(float(height), self.y1))


#: Encodings of an annotated mask, as the annotation file gives it (decoded by ``transforms.io.annotations``).
ANNOTATION_MASK_KINDS = ("polygon", "rle", "png")


@dataclasses.dataclass(frozen=True)
class AnnotationMask:
    """An object's mask as its annotation file encodes it; pixels only once the image is decoded.

    ``polygon``: COCO polygons, each a flat ``(x0, y0, x1, y1, ...)`` in pixels; ``rle``:
    a COCO run-length string (compressed) or tuple of run lengths, of a ``height`` x
    ``width`` mask; ``png``: the path of an OpenImages mask PNG (any size, resized to the image).
    """

    kind: str
    data: Union[str, tuple]
    width: Optional[int] = None
    height: Optional[int] = None

    def __post_init__(self) -> None:
        if self.kind not in ANNOTATION_MASK_KINDS:
            raise ValueError(f"mask kind must be one of {ANNOTATION_MASK_KINDS}, got {self.kind!r}")

    def to_json(self) -> dict:
        data = self.data if isinstance(self.data, str) else [list(p) if isinstance(p, tuple) else p for p in self.data]
        return {"kind": self.kind, "data": data, "width": self.width, "height": self.height}

    @classmethod
    def from_json(cls, data: dict) -> "AnnotationMask":
        value = data["data"]
        value = value if isinstance(value, str) else tuple(tuple(p) if isinstance(p, list) else p for p in value)
        return cls(data["kind"], value, data.get("width"), data.get("height"))


@dataclasses.dataclass(frozen=True)
class Annotation:
    """A labelled box (and maybe its mask) that came with an image (COCO, OpenImages) rather than from a model."""

    label: str
    box: Box
    category_id: Optional[int] = None
    source: str = ""
    is_crowd: bool = False
    mask: Optional[AnnotationMask] = None

    def to_json(self) -> dict:
        return {
            "label": self.label,
            "box": self.box.as_list(),
            "category_id": self.category_id,
            "source": self.source,
            "is_crowd": self.is_crowd,
            **({} if self.mask is None else {"mask": self.mask.to_json()}),
        }

    def scaled(self, sx: float, sy: float) -> "Annotation":
        """The same annotation with its box scaled, e.g. from fractions to pixels."""
        box = Box(self.box.x0 * sx, self.box.y0 * sy, self.box.x1 * sx, self.box.y1 * sy)
        return dataclasses.replace(self, box=box)

    @classmethod
    def from_json(cls, data: dict) -> "Annotation":
        return cls(
            label=data["label"],
            box=Box(*data["box"]),
            category_id=data.get("category_id"),
            source=data.get("source", ""),
            is_crowd=bool(data.get("is_crowd", False)),
            mask=None if data.get("mask") is None else AnnotationMask.from_json(data["mask"]),
        )


@dataclasses.dataclass(frozen=True)
class RawInput:
    """Bytes of one input as a reader found them, before any decoding.

    ``uri`` names where it came from: a file path or URL, or ``tar_url#key.ext`` for a
    sample inside a shard. ``annotations`` are boxes an annotation file gave for it.
    """

    uri: str
    data: bytes
    annotations: tuple[Annotation, ...] = ()
    origin: str = "file"
    #: Boxes are fractions of the image size (OpenImages) until decoding knows the size.
    boxes_normalized: bool = False


@dataclasses.dataclass(frozen=True)
class SourceImage:
    """A decoded, normalised source image: 8-bit RGB, upright, encoded as JPEG in ``jpeg``.

    ``key`` and ``sha256`` come from the *original* input bytes, so the same file always
    gets the same key whatever a decoder later changed. ``notes`` says what decoding did.
    """

    key: str
    sha256: str
    uri: str
    width: int
    height: int
    jpeg: bytes
    notes: tuple[Note, ...] = ()
    annotations: tuple[Annotation, ...] = ()
    origin: str = "file"

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if not self.jpeg:
            raise ValueError("a source image needs its encoded bytes")


#: Where an object's box came from (``Detection.box_source``) and its mask (``ObjectMask.mask_source``).
BOX_SOURCES = ("detector", "annotation")
MASK_SOURCES = ("segmenter", "annotation")


@dataclasses.dataclass(frozen=True)
class Detection:
    """One object's class, confidence and box, and who said so: a model, or an annotation (score 1)."""

    label: str
    class_id: int
    score: float
    box: Box
    detector: str
    box_source: str = "detector"

    def __post_init__(self) -> None:
        if not 0.0 <= self.score <= 1.0:
            raise ValueError(f"detection score must be in [0, 1], got {self.score}")
        if self.box_source not in BOX_SOURCES:
            raise ValueError(f"box_source must be one of {BOX_SOURCES}, got {self.box_source!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class ObjectMask:
    """The segmentation of one selected object. ``mask_png`` is a 1-bit PNG the size of the source.

    ``mask_png`` is the region to remove. When it was grown to take in soft edges and
    shadows, ``object_png`` keeps the segmenter's own mask: the object's outline, which
    its cut-out needs.
    """

    key: str
    source_key: str
    object_index: int
    detection: Detection
    mask_png: bytes
    predicted_iou: float
    segmenter: str
    object_png: Optional[bytes] = None
    mask_source: str = "segmenter"

    def __post_init__(self) -> None:
        if self.mask_source not in MASK_SOURCES:
            raise ValueError(f"mask_source must be one of {MASK_SOURCES}, got {self.mask_source!r}")

    @property
    def outline_png(self) -> bytes:
        """The object's own mask: ``object_png`` if the removal region was grown, else ``mask_png``."""
        return self.object_png if self.object_png is not None else self.mask_png


@dataclasses.dataclass(frozen=True, eq=False)
class CandidateScores:
    """Quality scores of one removal candidate; ``None`` means not computed (never 'zero').

    Meanings and directions: transforms/quality.py, transforms/thresholds.py, docs/FORMAT.md.
    ``quality`` is the fitted estimate that the removal matches the truth (transforms/quality_model.py).
    """

    ssim_outside: Optional[float] = None
    change_inside: Optional[float] = None
    redetect_score: Optional[float] = None
    clip_object_gone: Optional[float] = None
    seam: Optional[float] = None
    hole_fraction: Optional[float] = None
    hole_depth: Optional[float] = None
    surround_texture: Optional[float] = None
    surround_contrast: Optional[float] = None
    agreement: Optional[float] = None
    texture_gap: Optional[float] = None
    colour_gap: Optional[float] = None
    quality: Optional[float] = None

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, eq=False)
class RemovalCandidate:
    """One attempt at removing an object: the image with the object gone, and how it was made.

    ``region_png`` (1-bit, source size) is the region the remover repainted, the mask it
    grew before inpainting: outside it ``removed_png`` is the source, pixel for pixel. A
    remover that does not record it leaves ``None``, and the pixels that changed stand in.
    """

    key: str
    object_key: str
    candidate_index: int
    seed: int
    remover: str
    removed_png: bytes
    scores: CandidateScores = dataclasses.field(default_factory=CandidateScores)
    region_png: Optional[bytes] = None


@dataclasses.dataclass(frozen=True, eq=False)
class ObjectCandidates:
    """One object with every removal candidate made for it: what scorers read and candidate shards hold.

    Scoring stages return a copy whose candidates carry more scores
    (:meth:`with_scores`); the images themselves never change after removal.
    """

    source: SourceImage
    mask: ObjectMask
    candidates: tuple[RemovalCandidate, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidates", tuple(self.candidates))
        if self.mask.source_key != self.source.key:
            raise ValueError(f"mask {self.mask.key} belongs to source {self.mask.source_key}, not {self.source.key}")
        strays = [c.key for c in self.candidates if c.object_key != self.mask.key]
        if strays:
            raise ValueError(f"candidates {strays} do not belong to object {self.mask.key}")

    # Read by the stage plumbing when it names a dead letter.
    @property
    def key(self) -> str:
        return self.mask.key

    @property
    def uri(self) -> str:
        return self.source.uri

    def with_scores(self, **scores_per_candidate: Sequence[Optional[float]]) -> "ObjectCandidates":
        """A copy whose candidate ``i`` has score ``name`` set to ``values[i]`` for each ``name=values``."""
        for name, values in scores_per_candidate.items():
            if len(values) != len(self.candidates):
                raise ValueError(f"{len(values)} values of {name} for {len(self.candidates)} candidates")
        candidates = tuple(
            dataclasses.replace(candidate, scores=dataclasses.replace(
                candidate.scores, **{name: values[i] for name, values in scores_per_candidate.items()}))
            for i, candidate in enumerate(self.candidates)
        )
        return dataclasses.replace(self, candidates=candidates)


class PairKind(str, enum.Enum):
    """Which way a counterfactual pair teaches: take the object out, or put it in."""

    REMOVAL = "removal"
    INSERTION = "insertion"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True, eq=False)
class CounterfactualPair:
    """A training pair: ``(input, mask) -> target``, with its provenance in ``metadata``."""

    key: str
    kind: PairKind
    input_image: bytes
    mask_png: bytes
    target_image: bytes
    metadata: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Rejection:
    """An input that a stage deliberately did not keep, with a stable reason code."""

    uri: str
    stage: str
    reason: Reason
    detail: str = ""
    key: str = ""

    def to_row(self) -> dict:
        return {"key": self.key, "uri": self.uri, "stage": self.stage, "reason": self.reason.value, "detail": self.detail}


@dataclasses.dataclass(frozen=True)
class DeadLetter:
    """An input on which a stage raised: kept with the error so that nothing is lost silently."""

    uri: str
    stage: str
    error_type: str
    error: str
    traceback: str
    key: str = ""

    def to_row(self) -> dict:
        return dataclasses.asdict(self)
