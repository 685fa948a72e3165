"""Derived pictures are made once, from the member's bytes, and cached under digest names."""
import io
import os

import numpy as np
from PIL import Image

from review.images import THUMB_SIDE, ImageCache


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_thumbnail_is_made_once_and_then_read_from_disk(tmp_path):
    cache = ImageCache(str(tmp_path / "pictures"))
    source = png(np.full((600, 800, 3), 90, np.uint8))
    reads = []

    def read() -> bytes:
        reads.append(1)
        return source

    first = cache.get("v1", "k_o000", "removed_00.png", "thumb", read)
    second = cache.get("v1", "k_o000", "removed_00.png", "thumb", read)
    assert first == second and len(reads) == 1
    with Image.open(io.BytesIO(first)) as thumb:
        assert thumb.format == "JPEG" and max(thumb.size) == THUMB_SIDE and thumb.size == (256, 192)
    path = cache.path("v1", "k_o000", "removed_00.png", "thumb")
    assert os.path.commonpath([path, str(tmp_path / "pictures")]) == str(tmp_path / "pictures")
    assert "k_o000" not in path and os.path.exists(path)
    assert cache.path("v2", "k_o000", "removed_00.png", "thumb") != path  # another version, another file


def test_a_mask_overlay_is_transparent_outside_the_mask(tmp_path):
    mask = np.zeros((10, 20), np.uint8)
    mask[2:5, 3:9] = 255
    data = ImageCache(str(tmp_path)).get("v1", "k", "mask.png", "overlay", lambda: png(mask))
    with Image.open(io.BytesIO(data)) as overlay:
        alpha = np.asarray(overlay)[..., 3]
    assert (alpha > 0).sum() == 18 and alpha[0, 0] == 0 and alpha[3, 4] > 0
