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

``redetect_score`` and ``clip_object_gone`` need models and are filled by a later step;
until then they stay ``None``, which means "not computed", never "zero".
"""
from __future__ import annotations

import dataclasses
from typing import Optional

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
    """

    max_side: int = 512
    outside_margin_px: int = 16
    seam_band_px: int = 2
    seam_ring_px: int = 6
    change_tolerance: int = 8

    def __post_init__(self) -> None:
        if not is_integral(self.max_side) or self.max_side < 2 * SSIM_WINDOW_PX:
            raise ValueError(f"max_side must be an integer >= {2 * SSIM_WINDOW_PX}, got {self.max_side!r}")
        if not is_integral(self.outside_margin_px) or self.outside_margin_px < SSIM_WINDOW_PX // 2:
            raise ValueError(
                f"outside_margin_px must be an integer >= {SSIM_WINDOW_PX // 2} (the SSIM window radius), "
                f"got {self.outside_margin_px!r}"
            )
        for name in ("seam_band_px", "seam_ring_px"):
            value = getattr(self, name)
            if not is_integral(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not is_integral(self.change_tolerance) or not 0 <= self.change_tolerance < 255:
            raise ValueError(f"change_tolerance must be an integer in [0, 255), got {self.change_tolerance!r}")


def score_candidate(src_rgb: np.ndarray, mask: np.ndarray, removed_rgb: np.ndarray, config: QualityConfig) -> CandidateScores:
    """The model-free scores of one candidate; the model-based ones stay ``None``."""
    _check(src_rgb, mask, removed_rgb)
    src, mask, removed = _fit(src_rgb, mask, removed_rgb, config.max_side)
    region = edit_region(src, removed, mask, config.outside_margin_px, config.change_tolerance)
    return CandidateScores(
        ssim_outside=ssim_outside(src, removed, mask, margin_px=config.outside_margin_px),
        change_inside=change_inside(src, removed, mask),
        seam=seam(removed, region, band_px=config.seam_band_px, ring_px=config.seam_ring_px),
    )


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
    grey = cv2.cvtColor(removed, cv2.COLOR_RGB2GRAY).astype(np.float32)
    # Sobel scaled by 1/8: a ramp of s grey levels per pixel has magnitude s.
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3, scale=0.125, borderType=cv2.BORDER_REFLECT)
    magnitude = np.hypot(gx, gy)
    b, r = float(magnitude[band].mean()), float(magnitude[ring].mean())
    return b / (b + r + GRADIENT_FLOOR)


def _check(src: np.ndarray, mask: np.ndarray, removed: np.ndarray) -> None:
    if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 source, got {src.dtype} {src.shape}")
    if removed.shape != src.shape or removed.dtype != np.uint8:
        raise ValueError(f"candidate is {removed.dtype} {removed.shape}, source is {src.dtype} {src.shape}")
    if mask.shape != src.shape[:2] or mask.dtype != bool:
        raise ValueError(f"expected an HxW bool mask for a {src.shape} source, got {mask.dtype} {mask.shape}")


def _fit(src: np.ndarray, mask: np.ndarray, removed: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All three at most ``max_side`` on their longer side; a pixel the mask touches at all stays masked."""
    height, width = mask.shape
    scale = max_side / max(height, width)
    if scale >= 1.0:
        return src, mask, removed
    size = (max(1, round(width * scale)), max(1, round(height * scale)))

    def shrink(image: np.ndarray) -> np.ndarray:
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)

    return shrink(src), shrink(mask.astype(np.float32)) > 0, shrink(removed)


def _erode(mask: np.ndarray, radius_px: int) -> np.ndarray:
    return cv2.erode(mask.astype(np.uint8), disc(radius_px), borderType=cv2.BORDER_REPLICATE) > 0


