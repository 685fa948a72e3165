"""Object re-paste (ObjectDrop's bootstrap supervision): the object back on its removed background.

Pasting the RGBA cut-out onto the removal at its original place gives an image that
has the object but none of its effects (shadow, reflection, light it casts): the input
of an insertion pair whose target is the original photo. Outside the cut-out's alpha
the result *is* the removed image, pixel for pixel; inside full alpha it *is* the
object. The cut-out's alpha is already a soft matte across its outline, kept inside the
removal's region (transforms/candidates.py), so pasted and photo differ only there. An
extra feathered edge, when asked for, only ramps alpha down inside the outline.
"""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from transforms.checks import is_integral


@dataclasses.dataclass(frozen=True)
class RepasteConfig:
    """``feather_px``: width of an extra inward alpha ramp at the object's edge (0 = the cut-out's own matte)."""

    feather_px: int = 0

    def __post_init__(self) -> None:
        if not is_integral(self.feather_px) or not 0 <= self.feather_px <= 64:
            raise ValueError(f"feather_px must be an integer in [0, 64], got {self.feather_px!r}")


def feathered_alpha(alpha: np.ndarray, feather_px: int) -> np.ndarray:
    """Alpha (uint8) ramped linearly to 0 over ``feather_px`` pixels inside the outline, never outside it."""
    if feather_px == 0:
        return alpha
    inside = (alpha > 0).astype(np.uint8)
    # Distance to the nearest pixel outside the object; padding makes the crop's border count as outside
    # only where the object actually touches it (the cut-out is cropped to its outline).
    padded = cv2.copyMakeBorder(inside, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    distance = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    ramp = np.clip(distance / feather_px, 0.0, 1.0)
    return np.round(alpha.astype(np.float32) * ramp).astype(np.uint8)


def repaste(removed_rgb: np.ndarray, object_rgba: np.ndarray, box: tuple[int, int, int, int],
            feather_px: int = 0) -> np.ndarray:
    """``removed_rgb`` (HxWx3 uint8) with ``object_rgba`` alpha-composited at ``box`` = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    height, width = removed_rgb.shape[:2]
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise ValueError(f"object box {box} is outside the {width}x{height} image")
    if object_rgba.shape != (y1 - y0, x1 - x0, 4):
        raise ValueError(f"cut-out of shape {object_rgba.shape} does not fit box {box}")
    alpha = feathered_alpha(object_rgba[..., 3], feather_px)
    pasted = removed_rgb.copy()
    region = pasted[y0:y1, x0:x1]
    opaque, partial = alpha == 255, (alpha > 0) & (alpha < 255)
    region[opaque] = object_rgba[..., :3][opaque]
    if partial.any():
        a = alpha[partial].astype(np.float32)[:, None] / 255.0
        blended = object_rgba[..., :3][partial] * a + region[partial] * (1.0 - a)
        region[partial] = np.round(blended).astype(np.uint8)
    return pasted
