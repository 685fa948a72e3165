"""Model-free quality scores of a removal candidate; every candidate is scored, none is dropped.

Thresholds are applied later, on the candidate shards, so that changing one never re-runs
removal. Each score answers one question about a candidate ``removed`` of a source
``src`` with object ``mask`` (``HxWx3`` uint8 RGB, ``HxW`` bool):

* :func:`ssim_outside` — is the background intact? SSIM outside the object, in [-1, 1]
  (1 = untouched; natural damage gives values in [0, 1]).
* :func:`change_inside` — did anything happen where the object was? Mean absolute
  change inside the mask, in [0, 1] (0 = nothing changed).
* :func:`seam` — is there a visible border around the repainted region? In [0, 1):
  about 0.5 when the border is as busy as its surroundings, towards 1 for an edge the
  surroundings do not explain, low for a fill smoother than the surroundings.

Six more describe how hard the hole is and how the fill sits in its surroundings; alone
each is weak, together they predict how far a fill is from the truth
(:mod:`transforms.quality_model` turns them into ``quality``):

* :func:`hole_stats` — ``hole_fraction`` (share of the image masked), ``hole_depth``
  (mean distance of a hole pixel to the nearest kept one, as a fraction of the longer
  side: how far a fill must invent), ``surround_texture`` (mean gradient of the source
  just outside the hole, grey levels per pixel: busy surroundings are hard to continue)
  and ``surround_contrast`` (their colour standard deviation, grey levels: the error a
  plausible but wrong fill makes grows with it; the strongest single predictor of PSNR);
* :func:`agreement` — how close a candidate is to the per-pixel median of all the
  object's candidates, in (0, 1]: where removers of different kinds agree, the fill is
  determined by its surroundings; an outlier usually invented something;
* :func:`fill_match` — ``texture_gap`` (|log| ratio of the fill's gradient to the
  surroundings': a smear or a busier patchwork) and ``colour_gap`` (mean colour
  difference between fill and surroundings, in surround standard deviations).

``redetect_score`` and ``clip_object_gone`` need models and are filled by a later step;
until then they stay ``None``, which means "not computed", never "zero".
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import cv2
import numpy as np
from skimage.metrics import structural_similarity

from schemas import CandidateScores
from transforms.checks import is_integral
from transforms.masks import dilate, disc

#: SSIM window (scikit-image's default, 7x7): changes reach this far through the window.
SSIM_WINDOW_PX = 7

#: Gradient magnitude (grey levels per pixel) below which a region counts as flat; keeps
#: :func:`seam` finite and near 0 on textureless images instead of dividing noise by noise.
GRADIENT_FLOOR = 1.0


@dataclasses.dataclass(frozen=True)
class QualityConfig:
    """How candidates are scored. Pixel sizes are at the scoring resolution.

    ``max_side``: images whose longer side is larger are scored at this size (area
    downsampling), so a score costs the same for any input size (about 0.1 s at 512).
    ``outside_margin_px``: :func:`ssim_outside` ignores this band around the mask.
    ``seam_band_px`` / ``seam_ring_px``: widths of :func:`seam`'s border band and of the
    ring of surroundings it is compared with. ``change_tolerance``: per-channel change
    in grey levels above which a pixel near the mask counts as repainted (:func:`edit_region`).
    ``surround_px``: width of the ring the hole and fill statistics compare with.
    ``quality_model``: path of a fitted :class:`~transforms.quality_model.QualityModel`
    (JSON); ``None`` is the packaged one, ``""`` leaves ``quality`` uncomputed.
    """

    max_side: int = 512
    outside_margin_px: int = 16
    seam_band_px: int = 2
    seam_ring_px: int = 6
    change_tolerance: int = 8
    surround_px: int = 8
    quality_model: Optional[str] = None

    def __post_init__(self) -> None:
        if not is_integral(self.max_side) or self.max_side < 2 * SSIM_WINDOW_PX:
            raise ValueError(f"max_side must be an integer >= {2 * SSIM_WINDOW_PX}, got {self.max_side!r}")
        if not is_integral(self.outside_margin_px) or self.outside_margin_px < SSIM_WINDOW_PX // 2:
            raise ValueError(
                f"outside_margin_px must be an integer >= {SSIM_WINDOW_PX // 2} (the SSIM window radius), "
                f"got {self.outside_margin_px!r}"
            )
        for name in ("seam_band_px", "seam_ring_px", "surround_px"):
            value = getattr(self, name)
            if not is_integral(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not is_integral(self.change_tolerance) or not 0 <= self.change_tolerance < 255:
            raise ValueError(f"change_tolerance must be an integer in [0, 255), got {self.change_tolerance!r}")
        if self.quality_model is not None and not isinstance(self.quality_model, str):
            raise ValueError(f"quality_model must be a path, '' or None, got {self.quality_model!r}")


def score_candidates(src_rgb: np.ndarray, mask: np.ndarray, removed: Sequence[np.ndarray],
                     config: QualityConfig) -> list[CandidateScores]:
    """The model-free scores of every candidate of one object (``agreement`` compares them); model ones stay ``None``.

    ``quality`` is filled by :func:`transforms.quality_model.with_quality`, from these.
    """
    for candidate in removed:
        _check(src_rgb, mask, candidate)
    if not removed:
        return []
    src, small_mask, fitted = at_scoring_size(src_rgb, mask, list(removed), config.max_side)
    hole = hole_stats(src, small_mask, config.surround_px)
    median = np.median(np.stack(fitted), axis=0) if len(fitted) > 1 else None
    scores = []
    for candidate in fitted:
        region = edit_region(src, candidate, small_mask, config.outside_margin_px, config.change_tolerance)
        texture_gap, colour_gap = fill_match(src, candidate, small_mask, region, config.surround_px)
        scores.append(CandidateScores(
            ssim_outside=ssim_outside(src, candidate, small_mask, margin_px=config.outside_margin_px),
            change_inside=change_inside(src, candidate, small_mask),
            seam=seam(candidate, region, band_px=config.seam_band_px, ring_px=config.seam_ring_px),
            hole_fraction=hole.fraction,
            hole_depth=hole.depth,
            surround_texture=hole.surround_texture,
            surround_contrast=hole.surround_contrast,
            agreement=None if median is None else agreement(candidate, median, small_mask),
            texture_gap=texture_gap,
            colour_gap=colour_gap,
        ))
    return scores


def score_candidate(src_rgb: np.ndarray, mask: np.ndarray, removed_rgb: np.ndarray, config: QualityConfig) -> CandidateScores:
    """The model-free scores of a candidate on its own (no ``agreement``: that needs its siblings)."""
    return score_candidates(src_rgb, mask, [removed_rgb], config)[0]


@dataclasses.dataclass(frozen=True)
class HoleStats:
    """How hard an object's hole is to fill, from the source alone (the same for all its candidates)."""

    fraction: Optional[float]
    depth: Optional[float]
    surround_texture: Optional[float]
    surround_contrast: Optional[float]


def _gradient(rgb: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the grey image; Sobel scaled by 1/8 so a ramp of s grey levels per pixel gives s."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    return np.hypot(gx, gy)


def hole_stats(src: np.ndarray, mask: np.ndarray, surround_px: int = 8) -> HoleStats:
    """The hole's share of the image, its mean depth (fraction of the longer side), its surroundings' texture and contrast."""
    if not mask.any():
        return HoleStats(None, None, None, None)
    fraction = float(mask.mean())
    distance = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    depth = float(distance[mask].mean()) / max(mask.shape)
    ring = dilate(mask, surround_px) & ~mask
    if not ring.any():
        return HoleStats(fraction, depth, None, None)
    texture = float(_gradient(src)[ring].mean())
    contrast = float(src[ring].astype(np.float32).std(axis=0).mean())
    return HoleStats(fraction, depth, texture, contrast)


#: Mean deviation from the candidates' median (grey levels) at which :func:`agreement` is 0.5.
AGREEMENT_HALF_DEVIATION = 8.0


def agreement(candidate: np.ndarray, median: np.ndarray, mask: np.ndarray) -> Optional[float]:
    """``1 / (1 + d / 8)`` for ``d`` the candidate's mean absolute deviation from the median inside the hole."""
    if not mask.any():
        return None
    deviation = float(np.abs(candidate.astype(np.float32) - median)[mask].mean())
    return 1.0 / (1.0 + deviation / AGREEMENT_HALF_DEVIATION)


def fill_match(src: np.ndarray, removed: np.ndarray, mask: np.ndarray, region: np.ndarray,
               surround_px: int = 8) -> tuple[Optional[float], Optional[float]]:
    """(texture_gap, colour_gap) of the fill inside ``mask`` against the untouched ring just outside ``region``."""
    ring = dilate(region, surround_px) & ~region
    if not mask.any() or not ring.any():
        return None, None
    fill_gradient = float(_gradient(removed)[mask].mean())
    ring_gradient = float(_gradient(src)[ring].mean())
    texture_gap = abs(float(np.log((fill_gradient + GRADIENT_FLOOR) / (ring_gradient + GRADIENT_FLOOR))))
    fill, surround = removed[mask].astype(np.float32), src[ring].astype(np.float32)
    spread = surround.std(axis=0) + 4.0  # grey levels: a flat surround does not make any colour a gap
    colour_gap = float((np.abs(fill.mean(axis=0) - surround.mean(axis=0)) / spread).mean())
    return texture_gap, colour_gap


def ssim_outside(src: np.ndarray, removed: np.ndarray, mask: np.ndarray, margin_px: int = 16) -> Optional[float]:
    """Mean SSIM over the pixels farther than ``margin_px`` from the mask; ``None`` if there are none.

    The SSIM map is computed on the whole image, then averaged outside the mask grown by
    ``margin_px``. The margin is there for two reasons: a pixel within the window radius
    (3 px) of the mask has the removed object inside its window and would be penalised
    for the change that was asked for; and removers legitimately repaint a band around
    the object (the classical remover dilates its mask by up to 15 px by default), which
    is not background damage.
    """
    _check(src, mask, removed)
    outside = ~dilate(mask, margin_px)
    if not outside.any():
        return None
    _, ssim_map = structural_similarity(src, removed, channel_axis=2, data_range=255, full=True)
    # Clipped: identical images come out a few ulp above 1.
    return float(np.clip(ssim_map.mean(axis=2)[outside].mean(), -1.0, 1.0))


def change_inside(src: np.ndarray, removed: np.ndarray, mask: np.ndarray) -> Optional[float]:
    """Mean absolute change over the mask, channels averaged, as a fraction of 255; ``None`` if empty."""
    _check(src, mask, removed)
    if not mask.any():
        return None
    diff = np.abs(src.astype(np.int16) - removed.astype(np.int16))
    return float(diff[mask].mean() / 255.0)


def edit_region(src: np.ndarray, removed: np.ndarray, mask: np.ndarray, margin_px: int, tolerance: int) -> np.ndarray:
    """The region a remover actually repainted: the mask, plus changed pixels within ``margin_px`` of it.

    Removers repaint more than the object (a dilated mask, a blended border); the seam
    lies where the repainted region meets untouched pixels, wherever that is. Changes
    farther away are background damage, for :func:`ssim_outside` to see, not part of it.
    """
    changed = np.abs(src.astype(np.int16) - removed.astype(np.int16)).max(axis=2) > tolerance
    return mask | (changed & dilate(mask, margin_px))


def seam(removed: np.ndarray, mask: np.ndarray, band_px: int = 2, ring_px: int = 6) -> Optional[float]:
    """How much the border of a repainted region ``mask`` stands out in ``removed``, in [0, 1).

    ``b`` is the mean gradient magnitude of ``removed`` on a band ``band_px`` wide on each
    side of the border, ``r`` the same on the ring of surroundings just outside it (``ring_px``
    wide), and the score is ``b / (b + r + GRADIENT_FLOOR)``. A hard edge on a plain
    background scores near 1; a border as textured as its surroundings about 0.5; a smooth
    fill (half of the band is then flat) below 0.5; a flat image 0. Comparing with the
    surroundings rather than with the source avoids rewarding the removed object's own
    outline. ``None`` when the region has no border inside the image.
    """
    if removed.shape[:2] != mask.shape or mask.dtype != bool:
        raise ValueError(f"expected an HxW bool mask for an image of {removed.shape}, got {mask.dtype} {mask.shape}")
    grown = dilate(mask, band_px)
    band = grown & ~_erode(mask, band_px)
    ring = dilate(mask, band_px + ring_px) & ~grown
    if not band.any() or not ring.any():
        return None
    magnitude = _gradient(removed)
    b, r = float(magnitude[band].mean()), float(magnitude[ring].mean())
    return b / (b + r + GRADIENT_FLOOR)


def _check(src: np.ndarray, mask: np.ndarray, removed: np.ndarray) -> None:
    if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 source, got {src.dtype} {src.shape}")
    if removed.shape != src.shape or removed.dtype != np.uint8:
        raise ValueError(f"candidate is {removed.dtype} {removed.shape}, source is {src.dtype} {src.shape}")
    if mask.shape != src.shape[:2] or mask.dtype != bool:
        raise ValueError(f"expected an HxW bool mask for a {src.shape} source, got {mask.dtype} {mask.shape}")


def at_scoring_size(src: np.ndarray, mask: np.ndarray, removed: list[np.ndarray],
                    max_side: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """All at most ``max_side`` on their longer side; a pixel the mask touches at all stays masked."""
    height, width = mask.shape
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return src, mask, removed
    size = (max(1, round(width * scale)), max(1, round(height * scale)))

    def shrink(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    return shrink(src), shrink(mask.astype(np.float32)) > 0, [shrink(candidate) for candidate in removed]


def _erode(mask: np.ndarray, radius_px: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), disc(radius_px), borderType=cv2.BORDER_REPLICATE) > 0


