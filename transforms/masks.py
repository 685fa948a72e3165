"""Object masks: the one PNG codec and the one dilation every stage uses.

Masks travel between stages as PNG (``ObjectMask.mask_png``) and are ``HxW`` bool arrays
in memory. Dilation uses a disc, so "grow by r pixels" means the same everywhere: in the
mask-quality check, the remover's repaint region and the scores' margins.
"""
from __future__ import annotations

import io
from typing import Optional

import cv2
import numpy as np
from PIL import Image


def encode_mask_png(mask: np.ndarray) -> bytes:
    """A boolean ``HxW`` mask as a 1-bit PNG (lossless, no metadata: equal masks, equal bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def encode_matte_png(alpha: np.ndarray) -> bytes:
    """A soft ``HxW`` uint8 matte (0 = background, 255 = object) as an 8-bit greyscale PNG.

    :func:`decode_mask_png` reads it as a mask (nonzero = object); :func:`decode_matte_png` keeps the values.
    """
    if alpha.dtype != np.uint8 or alpha.ndim != 2:
        raise ValueError(f"a matte is an HxW uint8 array, got {alpha.dtype} {alpha.shape}")
    buffer = io.BytesIO()
    Image.fromarray(alpha, mode="L").save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def decode_matte_png(data: bytes) -> np.ndarray:
    """An 8-bit (or 1-bit) mask PNG as an ``HxW`` uint8 matte; a 1-bit mask gives 0 and 255."""
    with Image.open(io.BytesIO(data), formats=("PNG",)) as img:
        return np.array(img.convert("L"))


def decode_mask_png(data: bytes, width: Optional[int] = None, height: Optional[int] = None) -> np.ndarray:
    """A mask PNG (1-bit or 8-bit, nonzero = object) as a bool ``HxW`` array.

    With ``width`` and ``height``, a mask of another size raises ``ValueError``: a mask
    that does not fit its source image is a bug upstream, not something to resize away.
    """
    with Image.open(io.BytesIO(data), formats=("PNG",)) as img:
        mask = np.array(img.convert("L")) > 0
    if width is not None and height is not None and mask.shape != (height, width):
        raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]}, source is {width}x{height}")
    return mask


def disc(radius_px: int) -> np.ndarray:
    """The disc-shaped structuring element of radius ``radius_px``."""
    if radius_px < 0:
        raise ValueError(f"radius must be >= 0, got {radius_px}")
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius_px + 1, 2 * radius_px + 1))


def dilate(mask: np.ndarray, radius_px: int) -> np.ndarray:
    """``mask`` grown by ``radius_px`` in every direction (a copy when the radius is 0)."""
    binary = np.asarray(mask).astype(np.uint8)
    if radius_px == 0:
        return binary.astype(bool)
    return cv2.dilate(binary, disc(radius_px)) > 0


def changed_pixels(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Where two ``HxWx3`` images differ in any channel: the region of a candidate that did not record its own."""
    if before.shape != after.shape:
        raise ValueError(f"images of shapes {before.shape} and {after.shape} cannot be compared")
    return (before != after).any(axis=2)


def check_covers(region: np.ndarray, before: np.ndarray, after: np.ndarray, what: str) -> None:
    """Raise unless every pixel in which ``after`` differs from ``before`` lies inside ``region``.

    A pair whose mask misses a changed pixel teaches a model to change what it was told to keep.
    """
    stray = changed_pixels(before, after) & ~region
    if stray.any():
        ys, xs = np.nonzero(stray)
        raise ValueError(f"{what}: {int(stray.sum())} changed pixels lie outside its region, e.g. at x={xs[0]} y={ys[0]}")


def soft_matte(outline: np.ndarray, matte_px: int) -> np.ndarray:
    """A uint8 alpha that ramps linearly from 0 to 255 across the outline, ``matte_px`` on each side.

    Centred on the boundary (alpha ~ 0.5 there), so a re-pasted object neither gains nor
    loses area, and its staircase edge becomes an anti-aliased one. 0 farther than
    ``matte_px`` outside the outline, 255 farther inside; ``matte_px`` 0 gives the binary mask.
    """
    outline = np.asarray(outline, dtype=bool)
    if matte_px < 0:
        raise ValueError(f"matte_px must be >= 0, got {matte_px}")
    if matte_px == 0 or not outline.any() or outline.all():
        return outline.astype(np.uint8) * 255
    # Distances between pixel centres; the boundary lies half a pixel from either side's centre.
    inside = cv2.distanceTransform(outline.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform((~outline).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    signed = np.where(outline, inside - 0.5, 0.5 - outside)
    return np.round(255.0 * np.clip(0.5 + signed / (2.0 * matte_px), 0.0, 1.0)).astype(np.uint8)
