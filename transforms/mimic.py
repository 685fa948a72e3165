"""MimicBrush frame pairs: which two frames make a pair, where they match, what to mask; pure and seeded.

MimicBrush (Chen et al., 2024, "Zero-shot Image Editing with Reference Imitation") learns
to fill a masked region of a *source* frame by imitating a *reference* frame that shows
the same content in another pose, light or view. Its data code was not released; this
module follows the paper's description. For two RGB frames of one clip the job calls:

1. :func:`pair_ssim` and :func:`check_ssim_band`: the pair is kept when the frames are
   neither near-identical (nothing to imitate) nor unrelated (nothing to imitate from);
2. :func:`match_frames` and :func:`check_matches`: SIFT correspondences between them,
   kept when they agree with one rigid scene (RANSAC on a fundamental matrix);
3. :func:`grid_mask`: the source is cut into an N x N grid and cells are masked at random,
   those holding a matched keypoint more often, so the masked region usually has a
   counterpart in the reference.

The static branch (:func:`static_reference`) makes the reference from a single image by
strong augmentation; steps 2-3 then run on (image, reference) as on two frames.

Everything is a function of its inputs: matching is deterministic (brute-force matching,
OpenCV's fixed-seed RANSAC), the mask draws from the caller's generator and the
augmentation from an integer seed. No state is shared between calls, so Beam may run
them in threads.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Optional

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from schemas import Reason
from transforms.augment import HUE_SHIFT, A, augment
from transforms.checks import check_rgb, check_seed, check_units, is_int, is_integral, is_number

logger = logging.getLogger(__name__)

#: SSIM's sliding window (scikit-image's default, passed explicitly): the smallest side it can measure.
_SSIM_WINDOW = 7

#: Fewest candidate matches RANSAC is run on: the 8-point model. Seven points always fit a
#: fundamental matrix exactly (up to three of them), so they could not be told from noise.
_MIN_RANSAC_POINTS = 8

#: RANSAC's confidence of having drawn one all-inlier sample (OpenCV's default).
_RANSAC_CONFIDENCE = 0.999

#: The albumentations transforms of :func:`static_reference` draw from ``SeedSequence([seed, this, index])``.
_STATIC_STREAM = 1


def _number_pair(name: str, value: object, low: float, high: float) -> tuple[float, float]:
    """``value`` as a ``(lo, hi)`` tuple with ``low <= lo <= hi <= high`` (YAML gives lists), else raises."""
    pair = tuple(value) if isinstance(value, (list, tuple)) else value
    if not (isinstance(pair, tuple) and len(pair) == 2 and all(is_number(v) and low <= v <= high for v in pair)):
        raise ValueError(f"{name} must be two numbers in [{low:g}, {high:g}] (lo, hi), got {value!r}")
    if pair[0] > pair[1]:
        raise ValueError(f"{name} lo {pair[0]} > hi {pair[1]}")
    return pair


def _grey(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


# --------------------------------------------------------------------------- SSIM band


@dataclasses.dataclass(frozen=True)
class SsimBandConfig:
    """The SSIM band a frame pair must fall in (bounds inclusive), measured by :func:`pair_ssim`.

    The defaults come from SSIM at ``side`` 128 on real footage and photos:

    - ``max_ssim`` 0.95: adjacent frames of a static camera (OpenCV's ``vtest.avi``) score
      a median 0.976 (10th percentile 0.955), of an animated clip (``Megamind.avi``)
      0.969; ``vtest`` frames 3 to 200 apart, where people have moved, score 0.85-0.96,
      the bundled pair ``vtest_f0198``/``vtest_f0397`` 0.898.
    - ``min_ssim`` 0.3: 431 pairs of unrelated photos (the bundled samples and OpenCV's
      sample images, resized to 171 x 128) score a median 0.10, 90th percentile 0.22,
      99th 0.34: 97% fall below 0.3. The highest (up to 0.46) are objects on flat white
      backgrounds, where :func:`match_frames` then finds no inliers. The bundled
      ``bikes_f0083``/``bikes_f0166``, where a passing car hides the street, scores 0.14
      and is rejected. The cost: SSIM compares pixels in place, so a camera pan makes
      related frames score low as well (``bikes.mp4`` frames 30 apart: median 0.20, some
      with hundreds of RANSAC inliers); lower the floor and lean on
      :func:`check_matches` to keep more of those.

    ``side``: SSIM runs on greyscale shrunk to this shorter side: cheap, and less swayed
    by sensor noise and compression artefacts than at full size.
    """

    min_ssim: float = 0.3
    max_ssim: float = 0.95
    side: int = 128

    def __post_init__(self) -> None:
        check_units(self, ("min_ssim", "max_ssim"))
        if self.min_ssim > self.max_ssim:
            raise ValueError(f"min_ssim {self.min_ssim} > max_ssim {self.max_ssim}")
        if not (is_int(self.side) and self.side >= _SSIM_WINDOW):
            raise ValueError(f"side must be an integer >= {_SSIM_WINDOW}, got {self.side!r}")


def _shrink_grey(rgb: np.ndarray, side: int) -> np.ndarray:
    height, width = rgb.shape[:2]
    scale = side / min(height, width)
    size = (max(side, round(width * scale)), max(side, round(height * scale)))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return _grey(cv2.resize(rgb, size, interpolation=interpolation))


def pair_ssim(a: np.ndarray, b: np.ndarray, side: int) -> float:
    """SSIM of two same-sized RGB frames, on greyscale resized to ``side`` pixels on the shorter side.

    scikit-image's mean SSIM with its 7x7 uniform window and ``data_range`` 255; 1.0 for
    identical frames.
    """
    check_rgb(a, "a")
    check_rgb(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"frames differ in size: {a.shape} and {b.shape}")
    if not (is_integral(side) and side >= _SSIM_WINDOW):
        raise ValueError(f"side must be an integer >= {_SSIM_WINDOW}, got {side!r}")
    grey_a, grey_b = _shrink_grey(a, int(side)), _shrink_grey(b, int(side))
    return float(structural_similarity(grey_a, grey_b, win_size=_SSIM_WINDOW, data_range=255))


def check_ssim_band(value: float, config: SsimBandConfig) -> Optional[tuple[Reason, str]]:
    """Why a pair with SSIM ``value`` is rejected (too similar, or unrelated), with a detail; None inside the band."""
    if not (isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) and math.isfinite(value)):
        raise ValueError(f"ssim must be a finite number, got {value!r}")
    if value > config.max_ssim:
        return Reason.FRAMES_TOO_SIMILAR, f"ssim {value:.4g} > {config.max_ssim:g}"
    if value < config.min_ssim:
        return Reason.FRAMES_UNRELATED, f"ssim {value:.4g} < {config.min_ssim:g}"
    return None


# --------------------------------------------------------------------------- matches


@dataclasses.dataclass(frozen=True)
class MatchConfig:
    """SIFT matching and RANSAC.

    ``max_features``: SIFT keypoints kept per frame (strongest first). ``ratio``: Lowe's
    ratio test. ``ransac_threshold_px``: largest distance of a match from its epipolar
    line. ``min_matches``: fewer inliers gives :data:`Reason.TOO_FEW_MATCHES`.

    Read inlier counts near ``min_matches`` as weak evidence: a fundamental matrix has
    7 degrees of freedom, so RANSAC fits any 7 matches, plus whichever fall near their
    line by chance. Over the 431 unrelated photo pairs of :class:`SsimBandConfig` (at
    512 px), the inliers reached 8 or more in 1 pair of 10, and 12 at most; the SSIM band has
    already turned away nearly all of those pairs. Related frames inside the band had
    over 700 (``vtest.avi``), over 50 (``tree.avi``), and down to 8-16 in
    ``Megamind.avi`` (animation, fast motion) 30 frames apart or more; small, smooth
    frames have few keypoints at all (13 candidates on 160 x 224 blurred noise).
    16 leaves no unrelated pair measured here; 8 keeps the weak related ones.
    """

    max_features: int = 2000
    ratio: float = 0.75
    ransac_threshold_px: float = 3.0
    min_matches: int = 8

    def __post_init__(self) -> None:
        if not (is_int(self.max_features) and self.max_features >= 1):
            raise ValueError(f"max_features must be an integer >= 1, got {self.max_features!r}")
        if not (is_number(self.ratio) and 0 < self.ratio <= 1):
            raise ValueError(f"ratio must be a number in (0, 1], got {self.ratio!r}")
        if not (is_number(self.ransac_threshold_px) and self.ransac_threshold_px > 0):
            raise ValueError(f"ransac_threshold_px must be a number > 0, got {self.ransac_threshold_px!r}")
        if not (is_int(self.min_matches) and self.min_matches >= 0):
            raise ValueError(f"min_matches must be an integer >= 0, got {self.min_matches!r}")


@dataclasses.dataclass(frozen=True, eq=False)
class Matches:
    """RANSAC inliers: ``source_points[i]`` (x, y) in the source matches ``reference_points[i]``
    in the reference (both Kx2 float32); ``candidates``: matches that passed the ratio and
    mutual tests, before RANSAC. Compared by identity (they hold arrays)."""

    source_points: np.ndarray
    reference_points: np.ndarray
    candidates: int

    def __post_init__(self) -> None:
        for name in ("source_points", "reference_points"):
            points = getattr(self, name)
            if not (isinstance(points, np.ndarray) and points.dtype == np.float32 and points.ndim == 2
                    and points.shape[1] == 2):
                raise ValueError(f"{name} must be a Kx2 float32 array")
        if len(self.source_points) != len(self.reference_points):
            raise ValueError(f"{len(self.source_points)} source points, {len(self.reference_points)} reference points")
        if not (is_integral(self.candidates) and self.candidates >= len(self.source_points)):
            raise ValueError(f"candidates must be an integer >= the {len(self.source_points)} inliers, "
                             f"got {self.candidates!r}")

    @property
    def inliers(self) -> int:
        return len(self.source_points)


def _no_inliers(candidates: int) -> Matches:
    empty = np.zeros((0, 2), dtype=np.float32)
    return Matches(source_points=empty, reference_points=empty.copy(), candidates=candidates)


def _candidate_pairs(source_descriptors: Optional[np.ndarray], reference_descriptors: Optional[np.ndarray],
                     ratio: float) -> list[tuple[int, int]]:
    """(source, reference) descriptor indices passing Lowe's ratio test and mutually nearest.

    The mutual test matters for RANSAC on a fundamental matrix: where many source points
    pick the same reference point (blur, repeated texture), any F whose epipole is that
    point fits them all, and unrelated photos scored hundreds of "inliers" without it.
    """
    if source_descriptors is None or reference_descriptors is None:  # no keypoints
        return []
    matcher = cv2.BFMatcher(cv2.NORM_L2)  # exact and deterministic, unlike FLANN's randomised trees
    forward = matcher.knnMatch(source_descriptors, reference_descriptors, k=2)
    backward = {m.queryIdx: m.trainIdx for m in matcher.match(reference_descriptors, source_descriptors)}
    return [(best.queryIdx, best.trainIdx) for best, second in (p for p in forward if len(p) == 2)
            if best.distance < ratio * second.distance and backward.get(best.trainIdx) == best.queryIdx]


def match_frames(source: np.ndarray, reference: np.ndarray, config: MatchConfig) -> Matches:
    """SIFT matches between two RGB frames (any sizes) that one rigid scene explains.

    SIFT on greyscale; candidates pass Lowe's ratio test and are mutual nearest
    neighbours; RANSAC then keeps those consistent with a fundamental matrix. A
    homography would suit only a planar scene or a camera that only rotates: with
    parallax, points off the dominant plane would be thrown out although they match.
    Independently moving objects are outliers either way. Frames without texture, or
    with fewer than 8 candidates, give zero inliers; this never raises on content. The
    detector and matcher are made per call (about a microsecond), so threads share none.
    """
    check_rgb(source, "source")
    check_rgb(reference, "reference")
    sift = cv2.SIFT_create(nfeatures=config.max_features)
    source_keypoints, source_descriptors = sift.detectAndCompute(_grey(source), None)
    reference_keypoints, reference_descriptors = sift.detectAndCompute(_grey(reference), None)
    pairs = _candidate_pairs(source_descriptors, reference_descriptors, config.ratio)
    if len(pairs) < _MIN_RANSAC_POINTS:
        return _no_inliers(len(pairs))
    source_points = np.float32([source_keypoints[i].pt for i, _ in pairs])
    reference_points = np.float32([reference_keypoints[j].pt for _, j in pairs])
    fundamental, inlier_mask = cv2.findFundamentalMat(source_points, reference_points, cv2.FM_RANSAC,
                                                      config.ransac_threshold_px, _RANSAC_CONFIDENCE)
    if fundamental is None:  # degenerate (e.g. all points on a line); the mask is then undefined
        logger.debug("no fundamental matrix from %d candidates", len(pairs))
        return _no_inliers(len(pairs))
    keep = inlier_mask.ravel() > 0
    return Matches(source_points=source_points[keep], reference_points=reference_points[keep],
                   candidates=len(pairs))


def check_matches(matches: Matches, config: MatchConfig) -> Optional[tuple[Reason, str]]:
    """:data:`Reason.TOO_FEW_MATCHES` with a detail when ``matches`` has under ``min_matches`` inliers; else None."""
    if matches.inliers < config.min_matches:
        return Reason.TOO_FEW_MATCHES, (f"{matches.inliers} inliers < {config.min_matches} "
                                        f"({matches.candidates} candidates)")
    return None


# --------------------------------------------------------------------------- grid masks


@dataclasses.dataclass(frozen=True)
class GridMaskConfig:
    """The MimicBrush grid mask: N drawn uniformly from ``[min_cells, max_cells]``, the image
    cut into N x N cells, each masked with probability ``p_matched`` if it holds a matched
    source keypoint, else ``p_other`` (the paper: N in 3..10, 0.75 and 0.5)."""

    min_cells: int = 3
    max_cells: int = 10
    p_matched: float = 0.75
    p_other: float = 0.5

    def __post_init__(self) -> None:
        # One cell could not be both masked and not: the correction needs at least 2 x 2.
        for name in ("min_cells", "max_cells"):
            if not (is_int(getattr(self, name)) and getattr(self, name) >= 2):
                raise ValueError(f"{name} must be an integer >= 2, got {getattr(self, name)!r}")
        if self.min_cells > self.max_cells:
            raise ValueError(f"min_cells {self.min_cells} > max_cells {self.max_cells}")
        check_units(self, ("p_matched", "p_other"))


def _edges(length: int, cells: int) -> np.ndarray:
    """``cells + 1`` integer boundaries from 0 to ``length``, as even as rounding allows."""
    return np.rint(np.linspace(0, length, cells + 1)).astype(int)


def _pick(cells: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
    row, col = cells[rng.integers(len(cells))]
    return int(row), int(col)


def grid_mask(height: int, width: int, source_points: np.ndarray, config: GridMaskConfig,
              rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A bool ``height`` x ``width`` mask of whole grid cells, and its record.

    Cell boundaries are ``np.linspace(0, side, N + 1)`` rounded, so the cells tile the
    image exactly. Each cell is masked independently (:class:`GridMaskConfig`); then the
    draw is corrected so the source is neither untouched nor wholly hidden: with no cell
    masked, one is masked (a matched cell if any, chosen at random); with every cell
    masked, one is unmasked (a cell without matches if any). The correction raises the
    masking rate of matched cells and lowers that of the others, noticeably only at small
    N: at N = 3 with the defaults, nothing masked comes up about 1 draw in 500 (all nine
    cells at 0.5) or fewer, everything masked about 1 in 500 (none matched) to 1 in 13
    (all matched); at N = 10 both are below 1e-12.

    ``source_points`` are Kx2 (x, y) inside the image (:attr:`Matches.source_points`);
    K may be 0. The record is ``{"cells": N, "masked": [[row, col], ...], "matched_cells":
    [[row, col], ...]}``, row-major. Draws, in order: N, one uniform per cell, then one
    more only when the correction applies.
    """
    for name, value in (("height", height), ("width", width)):
        if not (is_integral(value) and value >= config.max_cells):
            raise ValueError(f"{name} must be an integer >= max_cells {config.max_cells}, got {value!r}")
    points = np.asarray(source_points, dtype=np.float64)
    if not (points.ndim == 2 and points.shape[1] == 2 and np.isfinite(points).all()):
        raise ValueError(f"source_points must be a finite Kx2 array, got shape {points.shape}")
    outside = (points < 0).any(axis=1) | (points[:, 0] > width) | (points[:, 1] > height)
    if outside.any():
        raise ValueError(f"{int(outside.sum())} source points lie outside the {width}x{height} image")

    cells = int(rng.integers(config.min_cells, config.max_cells, endpoint=True))
    row_edges, col_edges = _edges(int(height), cells), _edges(int(width), cells)
    matched = np.zeros((cells, cells), dtype=bool)
    point_rows = np.searchsorted(row_edges, points[:, 1], side="right") - 1
    point_cols = np.searchsorted(col_edges, points[:, 0], side="right") - 1
    matched[np.minimum(point_rows, cells - 1), np.minimum(point_cols, cells - 1)] = True

    masked = rng.random((cells, cells)) < np.where(matched, config.p_matched, config.p_other)
    everywhere = np.argwhere(np.ones_like(masked))
    if not masked.any():
        masked[_pick(np.argwhere(matched) if matched.any() else everywhere, rng)] = True
    elif masked.all():
        masked[_pick(np.argwhere(~matched) if not matched.all() else everywhere, rng)] = False

    row_of_pixel = np.repeat(np.arange(cells), np.diff(row_edges))
    col_of_pixel = np.repeat(np.arange(cells), np.diff(col_edges))
    mask = masked[row_of_pixel[:, None], col_of_pixel[None, :]]
    record = {"cells": cells, "masked": np.argwhere(masked).tolist(), "matched_cells": np.argwhere(matched).tolist()}
    return mask, record


# --------------------------------------------------------------------------- static branch


@dataclasses.dataclass(frozen=True)
class StaticAugmentConfig:
    """The static branch's strong augmentation (``*_p``: a transform's probability).

    MimicBrush makes pseudo-frames from still images with colour jitter, rotation,
    resizing, flipping and a perspective warp. Rotation (uniform within
    +-``rotate_limit_deg``) and resizing (a zoom by a factor in ``scale_range``, the output
    keeping the input's size) always apply, as one affine warp: a single resampling.
    ``perspective_scale``: the range of the corner displacement's spread, as a share of
    the image side. Borders uncovered by a warp are black, not mirrored: a mirror would
    invent content for the model to imitate.

    A flipped reference defeats SIFT (its descriptors are not mirror-invariant):
    :func:`match_frames` found 0-48 inliers on flipped copies of the bundled photos,
    against 170-1100 unflipped. The record holds the exact correspondence instead: the
    flip (x to width - 1 - x), then Affine's ``matrix``, then Perspective's ``matrix``
    scaled by (width / ``max_width``, height / ``max_height``), its resize back.
    """

    color_jitter_p: float = 0.8
    rotate_limit_deg: float = 30
    scale_range: tuple[float, float] = (0.7, 1.3)
    flip_p: float = 0.5
    perspective_p: float = 0.5
    perspective_scale: tuple[float, float] = (0.05, 0.1)

    def __post_init__(self) -> None:
        check_units(self, ("color_jitter_p", "flip_p", "perspective_p"))
        if not (is_number(self.rotate_limit_deg) and 0 <= self.rotate_limit_deg <= 180):
            raise ValueError(f"rotate_limit_deg must be a number in [0, 180], got {self.rotate_limit_deg!r}")
        scale_range = _number_pair("scale_range", self.scale_range, 0.0, math.inf)
        if scale_range[0] <= 0:
            raise ValueError(f"scale_range must be positive, got {self.scale_range!r}")
        object.__setattr__(self, "scale_range", scale_range)
        object.__setattr__(self, "perspective_scale", _number_pair("perspective_scale", self.perspective_scale, 0, 1))

    def augmentations(self) -> A.Compose:
        """The augmentation pipeline, unseeded (:func:`static_reference` seeds each transform)."""
        black = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0}
        return A.Compose(
            [
                A.HorizontalFlip(p=self.flip_p),
                A.Affine(rotate=(-self.rotate_limit_deg, self.rotate_limit_deg), scale=self.scale_range,
                         keep_ratio=True, p=1.0, **black),
                A.Perspective(scale=self.perspective_scale, keep_size=True, p=self.perspective_p, **black),
                A.ColorJitter(hue=HUE_SHIFT, p=self.color_jitter_p),
            ],
            save_applied_params=True,
        )


def static_reference(rgb: np.ndarray, config: StaticAugmentConfig, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """A strongly augmented copy of ``rgb``, the same size, as the reference of a single-image pair; and its record.

    The record is ``{"seed", "albumentations", "applied"}``: per transform applied, its
    name and sampled params (including the 3x3 warp matrices); seeding as
    :func:`transforms.augment.augment`.
    """
    check_rgb(rgb, "rgb")
    check_seed(seed)
    return augment(config.augmentations(), rgb, seed, _STATIC_STREAM)
