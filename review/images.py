"""Pictures the review page derives from sample members, made once and cached on disk.

``thumb`` is a JPEG no larger than :data:`THUMB_SIDE` (the candidate strip and the queue
page); ``overlay`` turns a mask into a transparent red PNG laid over the picture it
belongs to. A cached file is named by a digest of (dataset version, key, member,
variant), never by anything a request spelled, and written under a temporary name then
renamed, so concurrent requests and a killed server never leave a half file.
"""
from __future__ import annotations

import hashlib
import io
import os
import tempfile
from typing import Callable, Mapping

import numpy as np
from PIL import Image

THUMB_SIDE = 256
OVERLAY_RGBA = (255, 40, 40, 110)


def _thumb(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
        image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _overlay(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:
        mask = np.asarray(image.convert("L")) > 0
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = OVERLAY_RGBA
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


#: Variant -> (media type, maker from the member's bytes).
VARIANTS: Mapping[str, tuple[str, Callable[[bytes], bytes]]] = {
    "thumb": ("image/jpeg", _thumb),
    "overlay": ("image/png", _overlay),
}


class ImageCache:
    """Derived pictures in ``folder``, keyed by what they are made from."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        os.makedirs(folder, exist_ok=True)

    def path(self, version: str, key: str, member: str, variant: str) -> str:
        digest = hashlib.sha256("\0".join((version, key, member, variant)).encode()).hexdigest()
        return os.path.join(self.folder, digest[:2], f"{digest}.{variant}")

    def get(self, version: str, key: str, member: str, variant: str, read: Callable[[], bytes]) -> bytes:
        """The cached picture, made from ``read()`` on the first request."""
        path = self.path(version, key, member, variant)
        try:
            with open(path, "rb") as file:
                return file.read()
        except FileNotFoundError:
            pass
        data = VARIANTS[variant][1](read())
        os.makedirs(os.path.dirname(path), exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".partial")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(partial, path)
        return data
