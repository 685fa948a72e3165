"""Paint-by-Example self-reference pairs: the per-box geometry and pixels, pure and seeded.

Paint-by-Example (Yang et al., CVPR 2023) learns exemplar-guided inpainting from single
images: the object inside a box is cut out as the *reference*, heavily augmented so the
model cannot copy it pixel for pixel; a region around the box is masked in the image;
the *target* is the original image. For one box this module decides, in this order:

1. whether the box is usable at all (:func:`check_box`: area, side and aspect rules);
2. the mask (:func:`object_mask`): the box grown into part of the free space around it,
   filled either as a rectangle or as Paint-by-Example's irregular Bezier outline, so
   the model does not learn that masks are boxes;
3. the square crop holding the mask (:func:`square_crop`), resized for training;
4. the reference (:func:`reference_crop`): the box's pixels resized and augmented with
   albumentations (flip, rotation, blur, elastic warp, colour jitter).

:func:`make_pair` does steps 2-4. Everything is a function of the image, the box and one
integer seed: each step draws from its own stream (``numpy.random.default_rng([seed,
step])``), so a pair can be rebuilt from its record, and changing one step's settings
does not change the others' draws. Nothing touches a global random state.

Pixel boxes are ``(x0, y0, x1, y1)`` integers, half-open (columns ``x0 .. x1 - 1``); a
float :class:`~schemas.Box` covers every pixel it touches, after clipping to the image.

The Beam stages of the two jobs close the module: :class:`MakePairs` and
:class:`SplitBoxes` (``pbe-pairs``), :class:`BenchmarkItems` and
:class:`PairWithOtherImages` (``pbe-benchmark``).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Optional, Sequence

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.pvalue import TaggedOutput
from scipy.special import comb

from schemas import Box, Reason, Rejection, SourceImage, object_key
from schemas.keys import derived_seed
from schemas.sample import LabelledBox, pbe_fields, pbe_metadata_row
from transforms.augment import HUE_SHIFT, A, augment
from transforms.checks import check_jpeg_quality, check_rgb, check_seed, check_units, is_int, is_integral, is_number
from transforms.duplicates import DUPLICATE_IOU, duplicate_detail, duplicate_of
from transforms.io.decode import decode_rgb, encode_jpeg
from transforms.io.shards import EncodedSample
from transforms.ledger import record_uri
from transforms.masks import encode_mask_png
from transforms.stage import UNPAIRED_TAG, Paired, RecordFunction, SplitOutcomes, Stage

logger = logging.getLogger(__name__)

PixelBox = tuple[int, int, int, int]

#: Independent random streams of one pair: ``default_rng([seed, stream])``.
_MASK_STREAM = 1
_CROP_STREAM = 2
_REFERENCE_STREAM = 3

#: Smallest output side: below this a crop or reference carries too little to learn from.
MIN_SIZE = 16

#: A cubic Bezier's farthest point lies 3/4 of its control points' offset from the chord,
#: so control offsets up to 4/3 of the margin let the curve reach, never pass, ext_box.
_CUBIC_REACH = 4.0 / 3.0


#: Elastic warp strength and smoothness as shares of the reference side: visible bending
#: without tearing. (albumentations 2 dropped the affine part that made the old default
#: ``alpha=1`` visible; alone, that displacement is under a pixel.)
_ELASTIC_ALPHA = 0.25
_ELASTIC_SIGMA = 0.04


def _check_size(name: str, value: object) -> None:
    if not (is_int(value) and value >= MIN_SIZE):
        raise ValueError(f"{name} must be an integer >= {MIN_SIZE}, got {value!r}")


def _check_pixel_box(name: str, box: PixelBox, width: int, height: int) -> None:
    x0, y0, x1, y1 = box
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"{name} {tuple(box)} is empty or outside the {width}x{height} image")


def pixel_box(box: Box, width: int, height: int) -> PixelBox:
    """The pixels ``box`` touches once clipped to the image (raises if it lies outside)."""
    clipped = box.clipped(width, height)
    return math.floor(clipped.x0), math.floor(clipped.y0), math.ceil(clipped.x1), math.ceil(clipped.y1)


# --------------------------------------------------------------------------- box filters


@dataclasses.dataclass(frozen=True)
class BoxFilterConfig:
    """Which boxes make pairs; bounds are inclusive, areas are fractions of the image.

    Too small: the reference is a smudge once enlarged to 224 px. Too large: the masked
    region leaves no context to inpaint from. ``max_aspect_ratio`` bounds
    ``max(w / h, h / w)``: slivers make references that are mostly stretching.
    ``duplicate_iou``: a detected box with at least this IoU with a higher-scored one is the
    same object under another label (bootstrap's rule, :mod:`transforms.duplicates`); 1 disables it.
    """

    min_area_fraction: float = 0.02
    max_area_fraction: float = 0.8
    min_side_px: int = 32
    max_aspect_ratio: float = 4.0
    duplicate_iou: float = DUPLICATE_IOU

    def __post_init__(self) -> None:
        check_units(self, ("min_area_fraction", "max_area_fraction", "duplicate_iou"))
        if self.min_area_fraction > self.max_area_fraction:
            raise ValueError(f"min_area_fraction {self.min_area_fraction} > max_area_fraction {self.max_area_fraction}")
        if not (is_int(self.min_side_px) and self.min_side_px >= 0):
            raise ValueError(f"min_side_px must be an integer >= 0, got {self.min_side_px!r}")
        if not (is_number(self.max_aspect_ratio) and self.max_aspect_ratio >= 1):
            raise ValueError(f"max_aspect_ratio must be a number >= 1, got {self.max_aspect_ratio!r}")


def _area_too_small(box: Box, image_area: float, config: BoxFilterConfig) -> Optional[str]:
    fraction = box.area / image_area
    if fraction < config.min_area_fraction:
        return f"area fraction {fraction:.4g} < {config.min_area_fraction:g}"
    return None


def _area_too_large(box: Box, image_area: float, config: BoxFilterConfig) -> Optional[str]:
    fraction = box.area / image_area
    if fraction > config.max_area_fraction:
        return f"area fraction {fraction:.4g} > {config.max_area_fraction:g}"
    return None


def _side_too_short(box: Box, image_area: float, config: BoxFilterConfig) -> Optional[str]:
    side = min(box.width, box.height)
    if side < config.min_side_px:
        return f"shorter side {side:.4g} px < {config.min_side_px}"
    return None


def _aspect_ratio(box: Box, image_area: float, config: BoxFilterConfig) -> Optional[str]:
    ratio = max(box.width / box.height, box.height / box.width)
    if ratio > config.max_aspect_ratio:
        return f"aspect ratio {ratio:.4g} > {config.max_aspect_ratio:g}"
    return None


#: The box rules in the order they are checked; each returns a detail when the box fails.
BOX_RULES: tuple[tuple[Reason, Callable[[Box, float, BoxFilterConfig], Optional[str]]], ...] = (
    (Reason.BOX_TOO_SMALL, _area_too_small),
    (Reason.BOX_TOO_LARGE, _area_too_large),
    (Reason.BOX_SIDE_TOO_SHORT, _side_too_short),
    (Reason.BOX_ASPECT_RATIO, _aspect_ratio),
)


def check_box(box: Box, width: int, height: int, config: BoxFilterConfig) -> Optional[tuple[Reason, str]]:
    """The first rule of :data:`BOX_RULES` that ``box`` (clipped to the image) fails, with a detail; else None."""
    clipped = box.clipped(width, height)
    for reason, rule in BOX_RULES:
        detail = rule(clipped, float(width * height), config)
        if detail is not None:
            return reason, detail
    return None


# --------------------------------------------------------------------------- masks


@dataclasses.dataclass(frozen=True)
class MaskConfig:
    """How the masked region is drawn around a box.

    ``extend_fraction``: each side of the box grows by a random share, up to this, of
    the free space between it and the image border (Paint-by-Example: 0.4), so the mask
    is larger than the object by a varying margin. ``bezier_probability``: the share of
    irregular (Bezier) masks; the rest are the grown box. ``points_per_edge`` samples
    each Bezier curve; each sample moves by ``jitter_px`` = (lo, hi) pixels (a random
    amount in that range, random sign) on each axis, which roughens the outline.
    """

    extend_fraction: float = 0.4
    bezier_probability: float = 0.5
    points_per_edge: int = 20
    jitter_px: tuple[int, int] = (1, 5)

    def __post_init__(self) -> None:
        check_units(self, ("extend_fraction", "bezier_probability"))
        if not (is_int(self.points_per_edge) and self.points_per_edge >= 2):
            raise ValueError(f"points_per_edge must be an integer >= 2, got {self.points_per_edge!r}")
        jitter = self.jitter_px
        if isinstance(jitter, (list, tuple)):
            jitter = tuple(jitter)
        if not (isinstance(jitter, tuple) and len(jitter) == 2 and all(is_int(v) and v >= 0 for v in jitter)):
            raise ValueError(f"jitter_px must be two integers >= 0 (lo, hi), got {self.jitter_px!r}")
        if jitter[0] > jitter[1]:
            raise ValueError(f"jitter_px lo {jitter[0]} > hi {jitter[1]}")
        object.__setattr__(self, "jitter_px", jitter)


def extended_box(box: Box, width: int, height: int, fraction: float, rng: np.random.Generator) -> PixelBox:
    """``box``'s pixels grown on each side by a random share in [0, ``fraction``] of the free space there.

    The result holds the box and lies inside the image (Paint-by-Example's
    ``extended_bbox``, drawn left, top, right, bottom).
    """
    x0, y0, x1, y1 = pixel_box(box, width, height)
    grow = [int(rng.integers(0, math.floor(fraction * free), endpoint=True))
            for free in (x0, y0, width - x1, height - y1)]
    return x0 - grow[0], y0 - grow[1], x1 + grow[2], y1 + grow[3]


def _bezier(control: np.ndarray, count: int) -> np.ndarray:
    """``count`` points of the Bezier curve with ``control`` points ``[n + 1, 2]``, t in [0, 1) (end left out)."""
    degree = len(control) - 1
    t = np.linspace(0.0, 1.0, count, endpoint=False)[:, None]
    k = np.arange(degree + 1)[None, :]
    bernstein = comb(degree, k) * t**k * (1.0 - t) ** (degree - k)
    return bernstein @ control


def _edge_curve(start: np.ndarray, end: np.ndarray, outward: np.ndarray, margin: float, count: int,
                rng: np.random.Generator) -> np.ndarray:
    """A cubic from ``start`` to ``end`` whose two inner control points sit at random places
    along the chord, pushed ``outward`` by random offsets the curve cannot carry past ``margin``
    nor further than the chord is long (a small box far from its extended box's edge would
    otherwise sprout a long thin arm, not a bulge)."""
    reach = min(margin, float(np.linalg.norm(end - start)))
    along = np.sort(rng.uniform(0.0, 1.0, size=2))
    offsets = rng.uniform(0.0, _CUBIC_REACH * reach, size=2)
    inner = start + along[:, None] * (end - start) + offsets[:, None] * outward
    return _bezier(np.vstack([start, inner, end]), count)


def _one_region(mask: np.ndarray) -> np.ndarray:
    """``mask`` reduced to its largest 4-connected component, holes filled.

    Jittered points can cross (near corners, on small boxes) and ``fillPoly`` fills by
    the even-odd rule, which leaves holes and specks; this makes the mask one solid
    region again, never larger than the outline that encloses it.
    """
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=4)
    if count > 2:
        mask = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    padded = np.pad(mask, 1).astype(np.uint8)  # a background ring joins all the outside
    cv2.floodFill(padded, None, (0, 0), 2, flags=4)
    filled = padded[1:-1, 1:-1] != 2
    if count > 2 or filled.sum() != mask.sum():
        logger.debug("bezier mask repaired: %d components, %d hole pixels", count - 1, int(filled.sum() - mask.sum()))
    return filled


def bezier_mask(ext_box: PixelBox, width: int, height: int, config: MaskConfig, rng: np.random.Generator,
                box: Optional[Box] = None) -> np.ndarray:
    """Paint-by-Example's irregular mask: a bool ``height`` x ``width`` array, one solid region inside ``ext_box``.

    As in the paper's code, each edge of the object ``box`` becomes a Bezier curve from
    corner to corner that bulges out towards ``ext_box`` (its inner control points drawn
    at random places and depths, cubic here so a bulge can be lopsided); the curves are
    sampled at ``points_per_edge`` points, each point jittered, clipped to ``ext_box``,
    and the polygon filled. The mask so covers the object, minus the jitter at its
    corners, and hides its outline. Without ``box`` the curves run along ``ext_box``
    and only the jitter roughens it.
    """
    _check_pixel_box("ext_box", ext_box, width, height)
    ex0, ey0, ex1, ey1 = ext_box
    bx0, by0, bx1, by1 = ext_box if box is None else pixel_box(box, width, height)
    if not (ex0 <= bx0 and ey0 <= by0 and bx1 <= ex1 and by1 <= ey1):
        raise ValueError(f"box {(bx0, by0, bx1, by1)} is not inside ext_box {tuple(ext_box)}")
    # Pixel centres: a half-open box [x0, x1) spans x0 .. x1 - 1 in polygon coordinates.
    left, top, right, bottom = bx0, by0, bx1 - 1, by1 - 1
    corners = np.array([[left, top], [right, top], [right, bottom], [left, bottom]], dtype=float)
    edges = (  # clockwise: top, right, bottom, left; (outward direction, free margin to ext_box)
        ((0.0, -1.0), by0 - ey0),
        ((1.0, 0.0), ex1 - bx1),
        ((0.0, 1.0), ey1 - by1),
        ((-1.0, 0.0), bx0 - ex0),
    )
    points = np.vstack([
        _edge_curve(corners[i], corners[(i + 1) % 4], np.array(outward), margin, config.points_per_edge, rng)
        for i, (outward, margin) in enumerate(edges)
    ])
    lo, hi = config.jitter_px
    jitter = rng.integers(lo, hi, size=points.shape, endpoint=True) * rng.choice((-1, 1), size=points.shape)
    # Drawn in ext_box's window, so the work scales with the box, not the image.
    points = np.rint(points + jitter) - (ex0, ey0)
    points[:, 0] = np.clip(points[:, 0], 0, ex1 - ex0 - 1)
    points[:, 1] = np.clip(points[:, 1], 0, ey1 - ey0 - 1)
    window = np.zeros((ey1 - ey0, ex1 - ex0), dtype=np.uint8)
    cv2.fillPoly(window, [points.astype(np.int32)], 1)
    mask = np.zeros((height, width), dtype=bool)
    mask[ey0:ey1, ex0:ex1] = _one_region(window.astype(bool))
    return mask


def object_mask(box: Box, width: int, height: int, config: MaskConfig,
                rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """The mask for ``box`` (bool ``height`` x ``width``) and its record ``{"kind", "extended_box"}``.

    ``kind`` is ``"bezier"`` with probability ``bezier_probability``, else ``"box"``
    (the extended box filled).
    """
    ext = extended_box(box, width, height, config.extend_fraction, rng)
    if rng.random() < config.bezier_probability:
        kind, mask = "bezier", bezier_mask(ext, width, height, config, rng, box=box)
    else:
        kind, mask = "box", np.zeros((height, width), dtype=bool)
        mask[ext[1]:ext[3], ext[0]:ext[2]] = True
    return mask, {"kind": kind, "extended_box": list(ext)}


# --------------------------------------------------------------------------- square crops


@dataclasses.dataclass(frozen=True)
class CropConfig:
    """The square training crop: ``size`` pixels a side after resizing.

    The square's side is the box's longer side plus a random share, up to
    ``keep_fraction``, of the room the image leaves beyond it, so objects appear at
    varied scales; 0 crops tight around the box.
    """

    keep_fraction: float = 0.6
    size: int = 512

    def __post_init__(self) -> None:
        check_units(self, ("keep_fraction",))
        _check_size("size", self.size)


def _place(start: int, end: int, limit: int, side: int, rng: np.random.Generator) -> int:
    """Where a window of ``side`` pixels in ``[0, limit)`` starts: anywhere it holds ``[start, end)``,
    else centred on it (then it holds as much of it as any window can)."""
    if end - start <= side:
        return int(rng.integers(max(0, end - side), min(start, limit - side), endpoint=True))
    return min(max(round((start + end - side) / 2), 0), limit - side)


def square_crop(box: Box, width: int, height: int, config: CropConfig, rng: np.random.Generator) -> PixelBox:
    """A square pixel box inside the image holding ``box``, at a random scale and place (:class:`CropConfig`).

    The image's shorter side bounds the square; a box longer than that is cut, the
    square centred on it along the long side.
    """
    x0, y0, x1, y1 = pixel_box(box, width, height)
    largest = min(width, height)
    needed = max(x1 - x0, y1 - y0)
    side = largest
    if needed < largest:
        side = needed + round(rng.uniform(0.0, config.keep_fraction) * (largest - needed))
    left = _place(x0, x1, width, side, rng)
    top = _place(y0, y1, height, side, rng)
    return left, top, left + side, top + side


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` as ``size`` x ``size``: area averaging to shrink; bilinear to enlarge, where
    OpenCV's area interpolation repeats pixels in blocks."""
    shrinking = image.shape[0] >= size and image.shape[1] >= size
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def crop_and_resize(rgb: np.ndarray, mask: np.ndarray, crop_box: PixelBox, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``crop_box`` window of the image and of its mask, each ``size`` x ``size``.

    The mask is resized by nearest neighbour (exact: pixel centres map to pixel centres),
    so it stays binary and aligned with the image.
    """
    check_rgb(rgb)
    height, width = rgb.shape[:2]
    if mask.shape != (height, width):
        raise ValueError(f"mask is {mask.shape}, image is {(height, width)}")
    _check_pixel_box("crop_box", crop_box, width, height)
    _check_size("size", size)
    x0, y0, x1, y1 = crop_box
    image = _resize(np.ascontiguousarray(rgb[y0:y1, x0:x1]), size)
    window = np.ascontiguousarray(mask[y0:y1, x0:x1], dtype=np.uint8)
    return image, cv2.resize(window, (size, size), interpolation=cv2.INTER_NEAREST_EXACT) > 0


# --------------------------------------------------------------------------- references


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    """The reference crop: the box, padded by ``pad_fraction`` of its width and height on each
    side, resized to ``size`` x ``size`` and augmented (``*_p``: each transform's probability).

    Paint-by-Example augments the reference strongly so the model learns to paint the
    object, not to paste it back: flips, rotation up to ``rotate_limit_deg``, blur and
    an elastic warp; colour jitter (mild in hue) on top.
    """

    size: int = 224
    pad_fraction: float = 0.0
    flip_p: float = 0.5
    rotate_limit_deg: float = 20
    blur_p: float = 0.3
    elastic_p: float = 0.3
    color_jitter_p: float = 0.3

    def __post_init__(self) -> None:
        _check_size("size", self.size)
        check_units(self, ("pad_fraction", "flip_p", "blur_p", "elastic_p", "color_jitter_p"))
        if not (is_number(self.rotate_limit_deg) and 0 <= self.rotate_limit_deg <= 180):
            raise ValueError(f"rotate_limit_deg must be a number in [0, 180], got {self.rotate_limit_deg!r}")

    def augmentations(self) -> A.Compose:
        """The augmentation pipeline, unseeded (:func:`reference_crop` seeds each transform)."""
        return A.Compose(
            [
                A.HorizontalFlip(p=self.flip_p),
                # Reflected borders, not black corners, as in the paper's albumentations 0.4.
                A.Rotate(limit=self.rotate_limit_deg, border_mode=cv2.BORDER_REFLECT_101, p=1.0),
                A.Blur(p=self.blur_p),
                A.ElasticTransform(alpha=_ELASTIC_ALPHA * self.size, sigma=_ELASTIC_SIGMA * self.size,
                                   border_mode=cv2.BORDER_REFLECT_101, p=self.elastic_p),
                A.ColorJitter(hue=HUE_SHIFT, p=self.color_jitter_p),
            ],
            save_applied_params=True,
        )


def reference_crop(rgb: np.ndarray, box: Box, config: ReferenceConfig, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The augmented reference of ``box`` (``size`` x ``size`` x 3 uint8) and a JSON-ready record of it.

    The record holds ``seed``, the pixel ``crop`` taken, the albumentations version and,
    per transform applied, its name and sampled params (the elastic displacement maps
    are named under ``omitted``, not stored); seeding as :func:`transforms.augment.augment`.
    """
    check_rgb(rgb)
    check_seed(seed)
    height, width = rgb.shape[:2]
    pad_x, pad_y = config.pad_fraction * box.width, config.pad_fraction * box.height
    crop = pixel_box(Box(box.x0 - pad_x, box.y0 - pad_y, box.x1 + pad_x, box.y1 + pad_y), width, height)
    x0, y0, x1, y1 = crop
    image = _resize(np.ascontiguousarray(rgb[y0:y1, x0:x1]), config.size)
    augmented, record = augment(config.augmentations(), image, seed, _REFERENCE_STREAM)
    return augmented, {**record, "crop": list(crop)}


# --------------------------------------------------------------------------- pairs


@dataclasses.dataclass(frozen=True)
class PbeConfig:
    """Everything :func:`make_pair` needs; box filtering (:func:`check_box`) comes first, in the job."""

    boxes: BoxFilterConfig = dataclasses.field(default_factory=BoxFilterConfig)
    masks: MaskConfig = dataclasses.field(default_factory=MaskConfig)
    crop: CropConfig = dataclasses.field(default_factory=CropConfig)
    reference: ReferenceConfig = dataclasses.field(default_factory=ReferenceConfig)

    def __post_init__(self) -> None:
        expected = {"boxes": BoxFilterConfig, "masks": MaskConfig, "crop": CropConfig, "reference": ReferenceConfig}
        for name, kind in expected.items():
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")


@dataclasses.dataclass(frozen=True)
class PbePair:
    """One training pair: ``target`` (the square crop, uint8), its ``mask`` (bool), the
    augmented ``reference`` (uint8) and the ``record`` to rebuild them."""

    target: np.ndarray
    mask: np.ndarray
    reference: np.ndarray
    record: dict[str, Any]


def make_pair(rgb: np.ndarray, box: Box, config: PbeConfig, seed: int) -> PbePair:
    """The Paint-by-Example pair of one box of an RGB image, a function of (pixels, box, config, seed).

    The crop holds the extended box, so the whole mask is in the target unless the
    extended box is longer than the image's shorter side. The record is
    ``{"crop_box", "mask", "reference", "seed"}``: the pixel crop in the image, the
    :func:`object_mask` and :func:`reference_crop` records, and ``seed``.
    """
    check_rgb(rgb)
    check_seed(seed)
    height, width = rgb.shape[:2]
    mask_rng = np.random.default_rng([int(seed), _MASK_STREAM])
    full_mask, mask_record = object_mask(box, width, height, config.masks, mask_rng)
    crop_box = square_crop(Box(*mask_record["extended_box"]), width, height, config.crop,
                           np.random.default_rng([int(seed), _CROP_STREAM]))
    target, mask = crop_and_resize(rgb, full_mask, crop_box, config.crop.size)
    reference, reference_record = reference_crop(rgb, box, config.reference, seed)
    record = {"crop_box": list(crop_box), "mask": mask_record, "reference": reference_record, "seed": int(seed)}
    return PbePair(target=target, mask=mask, reference=reference, record=record)


# --------------------------------------------------------------------------- Beam stages

#: The ledger of boxes (counters ``boxes.<counter>``): every box of an image with boxes ends as a pair or a rejection.
BOXES = "boxes"
#: Lowest JPEG quality of a pair's target and reference.
MIN_JPEG_QUALITY = 50
#: :class:`MakePairs` ' extra output: the records of images none of whose boxes is kept.
#: What the stages take: a source image and its boxes (from its annotations, or the detector's).
BoxedImage = tuple[SourceImage, tuple[LabelledBox, ...]]


@dataclasses.dataclass(frozen=True)
class PairSettings:
    """Per-job pair settings: at most ``max_boxes`` pairs per image (largest boxes first),
    seeds derived from ``seed`` and each box's key, JPEG quality of target and reference."""

    max_boxes: int = 8
    seed: int = 0
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if not is_integral(self.max_boxes) or self.max_boxes < 1:
            raise ValueError(f"max_boxes must be an integer >= 1, got {self.max_boxes!r}")
        check_seed(self.seed)
        check_jpeg_quality(self.jpeg_quality, minimum=MIN_JPEG_QUALITY)


def box_seed(base_seed: int, key: str) -> int:
    """The seed of one box's pair: the same for the same image, box and base seed on any worker."""
    return derived_seed(base_seed, key)


def annotation_boxes(source: SourceImage) -> tuple[LabelledBox, ...]:
    """The boxes an annotation file gave; crowd boxes (many objects in one box) are left out."""
    return tuple(LabelledBox(a.label, a.box, a.source or "annotation") for a in source.annotations if not a.is_crowd)


def detected_boxes(result: PredictionResult) -> BoxedImage:
    """A detector's prediction as the image and its boxes."""
    return result.example, tuple(LabelledBox(d.label, d.box, d.detector, d.score) for d in result.inference)


@dataclasses.dataclass(frozen=True)
class ImageBoxes:
    """One image and the outcome of each of its boxes: a sample to write, or the box's rejection."""

    uri: str
    key: str
    boxes: tuple[EncodedSample | Rejection, ...]


def _pair_sample(config: PbeConfig, settings: PairSettings, provenance: Mapping[str, Any], source: SourceImage,
                 rgb: np.ndarray, key: str, box: LabelledBox) -> EncodedSample:
    quality = settings.jpeg_quality
    pair = make_pair(rgb, box.box, config, box_seed(settings.seed, key))
    fields = pbe_fields(source, key, box, pair.record, encode_jpeg(pair.target, quality),
                        encode_mask_png(pair.mask), encode_jpeg(pair.reference, quality), provenance)
    return EncodedSample(key=key, fields=fields, metadata=pbe_metadata_row(source, key, box, pair.record))


def _duplicates(boxes: Sequence[LabelledBox], min_iou: float) -> list[Optional[tuple[Reason, str]]]:
    """Per box, its ``duplicate_detection`` failure (the same object as a higher-scored box), or ``None``."""
    if min_iou >= 1:
        return [None] * len(boxes)
    # An annotation carries no score: annotated boxes are never duplicates of each other.
    repeats = duplicate_of([b.box for b in boxes], [1.0 if b.score is None else b.score for b in boxes],
                           [b.score is None for b in boxes], min_iou)
    return [None if j is None else
            (Reason.DUPLICATE_DETECTION, duplicate_detail(box.box, boxes[j].box, j, boxes[j].label, boxes[j].score))
            for box, j in zip(boxes, repeats)]


def _make_pairs(config: PbeConfig, settings: PairSettings, provenance: Mapping[str, Any],
                image: BoxedImage) -> Iterator[Any]:
    source, boxes = image
    stage = MakePairs.stage
    if not boxes:
        yield Rejection(source.uri, stage, Reason.NO_BOXES, "no annotation or detection", source.key)
        return
    outcomes: list[EncodedSample | Rejection] = []
    kept = []
    repeats = _duplicates(boxes, config.boxes.duplicate_iou)
    for index, box in enumerate(boxes):
        key = object_key(source.key, index)
        failure = repeats[index] or check_box(box.box, source.width, source.height, config.boxes)
        if failure is None:
            kept.append((key, box))
        else:
            outcomes.append(Rejection(source.uri, stage, failure[0], failure[1], key))
    kept.sort(key=lambda item: (-item[1].box.area, item[0]))
    outcomes += [Rejection(source.uri, stage, Reason.TOO_MANY_OBJECTS, f"max_boxes {settings.max_boxes}", key)
                 for key, _ in kept[settings.max_boxes:]]
    kept = kept[:settings.max_boxes]
    if not kept:
        yield TaggedOutput(UNPAIRED_TAG, ImageBoxes(source.uri, source.key, tuple(outcomes)))
        yield Rejection(source.uri, stage, Reason.NO_SUITABLE_BOX, f"{len(boxes)} boxes rejected", source.key)
        return
    rgb = decode_rgb(source.jpeg)
    outcomes += [_pair_sample(config, settings, provenance, source, rgb, key, box) for key, box in kept]
    yield ImageBoxes(source.uri, source.key, tuple(outcomes))


class MakePairs(Stage):
    """Images with their boxes -> one :class:`ImageBoxes` per image: a pair per kept box, each other box's rejection.

    Boxes pass the filters (a detected box repeating a higher-scored one is ``duplicate_detection``,
    as in bootstrap; then :func:`check_box`), then the largest ``max_boxes`` are kept.
    An image without boxes is rejected ``no_boxes``; one none of whose boxes is kept,
    ``no_suitable_box``, its record going to ``unpaired`` so that its boxes are still
    accounted. All pairs of an image are made before its record is emitted: an error is
    one dead letter of the image, and none of its boxes is counted.

    The fan-out image -> boxes is split over two stages so that both rows of the stage
    table balance key by key: this one is 1:1 per image in the main ledger (a record, a
    rejection or a dead letter, each under the image's key), and :class:`SplitBoxes`
    opens the box ledger with the object keys each record names. One stage in the box
    ledger could not balance: an image without boxes, an image rejected as a whole and
    an image's dead letter are not boxes.
    """

    stage = "pbe_pairs"
    extra_tags = (UNPAIRED_TAG,)

    def __init__(self, config: PbeConfig, settings: PairSettings, provenance: Mapping[str, Any]) -> None:
        super().__init__()
        self._config = config
        self._settings = settings
        self._provenance = dict(provenance)

    def record_fn(self) -> RecordFunction:
        return functools.partial(_make_pairs, self._config, self._settings, self._provenance)

    def expand(self, images: beam.PCollection) -> Paired:
        return Paired.of(self.apply_stage(images))


def _box_outcomes(record: ImageBoxes) -> tuple[EncodedSample | Rejection, ...]:
    return record.boxes


class SplitBoxes(SplitOutcomes):
    """:class:`ImageBoxes` -> their boxes, each a sample to write or its rejection: the box ledger's first stage."""

    stage = "pbe_boxes"
    unit = BOXES
    parts = staticmethod(_box_outcomes)


# --------------------------------------------------------------------------- benchmark (COCOEE-style)


class BenchmarkItem(NamedTuple):
    """One image's single object, ready to be paired with another image's reference."""

    label: str
    key: str
    source: SourceImage
    box: LabelledBox
    record: dict
    target_jpeg: bytes
    mask_png: bytes
    object_jpeg: bytes  # this object's own crop: the reference of another image's pair

    @property
    def uri(self) -> str:
        return self.source.uri


def _benchmark_item(config: PbeConfig, settings: PairSettings, max_mask_fraction: float,
                    image: BoxedImage) -> Iterator[BenchmarkItem | Rejection]:
    source, boxes = image
    stage = BenchmarkItems.stage
    qualifying = [(index, box) for index, box in enumerate(boxes)
                  if check_box(box.box, source.width, source.height, config.boxes) is None]
    if len(qualifying) != 1:
        reason = Reason.MULTIPLE_OBJECTS if qualifying else (Reason.NO_SUITABLE_BOX if boxes else Reason.NO_BOXES)
        yield Rejection(source.uri, stage, reason, f"{len(qualifying)} of {len(boxes)} boxes qualify", source.key)
        return
    index, box = qualifying[0]
    key = object_key(source.key, index)
    seed = box_seed(settings.seed, key)
    width, height = source.width, source.height
    mask, mask_record = object_mask(box.box, width, height, config.masks, np.random.default_rng([seed, 0]))
    if mask.mean() >= max_mask_fraction:
        yield Rejection(source.uri, stage, Reason.MASK_TOO_LARGE,
                        f"mask covers {mask.mean():.3f} of the image (max {max_mask_fraction})", key)
        return
    rgb = decode_rgb(source.jpeg)
    crop_box = square_crop(box.box, width, height, config.crop, np.random.default_rng([seed, 1]))
    target, target_mask = crop_and_resize(rgb, mask, crop_box, config.crop.size)
    reference, reference_record = reference_crop(rgb, box.box, config.reference, seed)
    quality = settings.jpeg_quality
    record = {"crop_box": list(crop_box), "mask": mask_record, "reference": reference_record, "seed": seed}
    yield BenchmarkItem(box.label, key, source, box, record, encode_jpeg(target, quality),
                        encode_mask_png(target_mask), encode_jpeg(reference, quality))


class BenchmarkItems(Stage):
    """Images with their boxes -> the :class:`BenchmarkItem` of each image with exactly one qualifying box.

    An image with none or several is rejected (``no_boxes``, ``no_suitable_box``,
    ``multiple_objects``) under its key, one whose mask covers ``max_mask_fraction`` of it
    or more (``mask_too_large``) under its object's key, as is its item. Records are
    named by uri, which an image shares with whichever it ends as, so the row balances.
    """

    stage = "pbe_benchmark"
    identity = staticmethod(record_uri)

    def __init__(self, config: PbeConfig, settings: PairSettings, max_mask_fraction: float) -> None:
        super().__init__()
        self._config = config
        self._settings = settings
        self._max_mask_fraction = max_mask_fraction

    def record_fn(self) -> RecordFunction:
        return functools.partial(_benchmark_item, self._config, self._settings, self._max_mask_fraction)


class ReferenceChoice(NamedTuple):
    """An item and the item whose object crop is its reference (``None``: its class has no other image)."""

    item: BenchmarkItem
    reference: Optional[BenchmarkItem]

    @property
    def uri(self) -> str:
        return self.item.uri

    @property
    def key(self) -> str:
        return self.item.key


def _item_label(item: BenchmarkItem) -> tuple[str, BenchmarkItem]:
    return item.label, item


def _reference_choices(label_and_items: tuple[str, Iterable[BenchmarkItem]]) -> list[ReferenceChoice]:
    """Each item of a class takes the object crop of the next one in key order (the last, the first's)."""
    _, items = label_and_items
    items = sorted(items, key=lambda item: item.key)
    if len(items) == 1:
        return [ReferenceChoice(items[0], None)]
    return [ReferenceChoice(item, items[(position + 1) % len(items)]) for position, item in enumerate(items)]


def _pair_with_reference(provenance: Mapping[str, Any], choice: ReferenceChoice) -> Iterator[EncodedSample | Rejection]:
    item, other = choice
    if other is None:
        # Named as in the item's stage: the reason is the image's, found only once its class is complete.
        yield Rejection(item.uri, BenchmarkItems.stage, Reason.NO_REFERENCE_IMAGE,
                        f"the only qualifying image of class {item.label!r}", item.key)
        return
    fields = pbe_fields(item.source, item.key, item.box, item.record, item.target_jpeg, item.mask_png,
                        other.object_jpeg, provenance, reference_key=other.key)
    yield EncodedSample(key=item.key, fields=fields,
                        metadata=pbe_metadata_row(item.source, item.key, item.box, item.record, other.key))


class PairWithOtherImages(Stage):
    """Benchmark items -> their pairs, each with the object crop of another image of its class as reference.

    Items are grouped by label, then each one is a record of its own with the item it
    takes its reference from, so the row balances item by item and an error is that
    item's dead letter. A class with a single image has no other image to take a
    reference from: rejected (``no_reference_image``).
    """

    stage = "pbe_benchmark_pairing"

    def __init__(self, provenance: Mapping[str, Any]) -> None:
        super().__init__()
        self._provenance = dict(provenance)

    def prepare(self, items: beam.PCollection) -> beam.PCollection:
        return (
            items
            | "ByLabel" >> beam.Map(_item_label)
            | "GroupByLabel" >> beam.GroupByKey()
            | "ChooseReferences" >> beam.FlatMap(_reference_choices)
        )

    def record_fn(self) -> RecordFunction:
        return functools.partial(_pair_with_reference, self._provenance)
