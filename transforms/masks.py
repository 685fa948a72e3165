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
