"""Every kind of broken or unusual input the decoder must handle, built in memory.

Each builder returns the same bytes on every call (fixed pixels from scikit-image's bundled
photos or from fixed arrays; no clock, no randomness), so the decode tests and the files
in ``jobs/samples/broken/`` are the same inputs. Regenerate those files with::

    python -c "from tests.unit.broken_inputs import write_all; write_all('jobs/samples/broken')"

PNG chunks are assembled by hand where Pillow cannot write the case (16-bit colour, a
header declaring 40000 x 40000 pixels without the pixels); everything else goes through
Pillow's encoders.
"""
from __future__ import annotations

import io
import logging
import pathlib
import struct
import zlib
from typing import Callable

import numpy as np
import skimage.data
from PIL import ExifTags, Image

logger = logging.getLogger(__name__)

#: Values of the 16-bit test blocks, and what scaling them to 8 bits must give.
SIXTEEN_BIT_GREYS = (0, 255, 256, 4660, 32768, 65280, 65535)
SIXTEEN_BIT_GREYS_AS_8_BIT = (0, 0, 1, 18, 128, 255, 255)
SIXTEEN_BIT_COLOURS = ((65535, 32768, 300), (256, 4660, 0), (0, 65280, 65535))
SIXTEEN_BIT_COLOURS_AS_8_BIT = ((255, 128, 1), (1, 18, 0), (0, 255, 255))
#: Side of the flat blocks: a multiple of JPEG's 8x8 so a re-encoded block stays flat.
BLOCK = 16

#: Palette of :func:`palette_alpha_png`: (RGB, alpha) per index.
PALETTE_ALPHA = (((255, 0, 0), 255), ((0, 0, 255), 0), ((0, 255, 0), 128))

#: Colours of the frames of :func:`animated_gif`, first frame first.
GIF_FRAMES = ((255, 0, 0), (0, 255, 0), (0, 0, 255))

#: The EXIF orientation of :func:`exif_rotated_jpeg`: stored sideways, shown turned 90 deg clockwise.
EXIF_ORIENTATION = 6


def _jpeg(img: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90, **options)
    return buffer.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, bit_depth: int, colour_type: int, idat: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _png_16_bit(samples: np.ndarray) -> bytes:
    """A 16-bit PNG of an HxW (grey) or HxWx3 (RGB) array, which Pillow cannot write."""
    height, width = samples.shape[:2]
    colour_type = 0 if samples.ndim == 2 else 2
    rows = samples.astype(">u2").reshape(height, -1).view(np.uint8)
    scanlines = np.hstack([np.zeros((height, 1), np.uint8), rows])  # filter type 0 per row
    return _png(width, height, 16, colour_type, zlib.compress(scanlines.tobytes(), 9))


def _blocks(values: tuple) -> np.ndarray:
    """One BLOCK x BLOCK square per value, side by side."""
    row = np.array(values)
    return np.repeat(np.repeat(row[np.newaxis], BLOCK, axis=0), BLOCK, axis=1)


# Inputs that must be rejected, one reason each.


def empty_file() -> bytes:
    return b""


def text_named_jpg() -> bytes:
    return b"This is a text file that somebody saved with a .jpg name.\n"


def truncated_jpeg() -> bytes:
    """A real photo cut off after 60% of its bytes, as an interrupted download leaves it."""
    data = _jpeg(Image.fromarray(skimage.data.coffee()))
    return data[: len(data) * 6 // 10]


def corrupt_png() -> bytes:
    """Intact chunk structure and CRCs, but the compressed pixel stream is not zlib."""
    return _png(64, 64, 8, 2, bytes(200))


def huge_png(width: int = 40_000, height: int = 40_000) -> bytes:
    """A few hundred bytes whose header declares ``width`` x ``height`` RGB pixels."""
    return _png(width, height, 8, 2, zlib.compress(bytes(1 + 3 * width), 9))


def float_tiff() -> bytes:
    """32-bit float samples (mode F): no defined 8-bit range, so no RGB meaning."""
    ramp = np.linspace(-1.0, 1.0, 32 * 32, dtype=np.float32).reshape(32, 32)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="TIFF")
    return buffer.getvalue()


# Inputs that are kept after a conversion, one note each.


def plain_rgb_jpeg() -> bytes:
    """An ordinary upright RGB JPEG: the one case that needs no change at all."""
    return _jpeg(Image.fromarray(skimage.data.astronaut()[96:352, 128:384]))


def exif_rotated_jpeg() -> bytes:
    """A photo stored sideways, with EXIF orientation 6 saying how to show it upright."""
    stored = np.ascontiguousarray(np.rot90(skimage.data.chelsea(), k=1))  # upright = stored turned clockwise
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = EXIF_ORIENTATION
    return _jpeg(Image.fromarray(stored), exif=exif.tobytes())


def exif_rotated_tiff() -> bytes:
    """A TIFF stored sideways with orientation 8; Pillow's TIFF loader applies it itself."""
    stored = np.ascontiguousarray(np.rot90(skimage.data.chelsea(), k=-1))  # upright = stored turned anticlockwise
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[ExifTags.Base.Orientation] = 8
    buffer = io.BytesIO()
    img.save(buffer, format="TIFF", exif=exif)
    return buffer.getvalue()


def sixteen_bit_grey_png() -> bytes:
    """16-bit grey blocks of :data:`SIXTEEN_BIT_GREYS`, most above 255."""
    return _png_16_bit(_blocks(SIXTEEN_BIT_GREYS))


def sixteen_bit_rgb_png() -> bytes:
    """16-bit-per-channel (48-bit) RGB blocks of :data:`SIXTEEN_BIT_COLOURS`."""
    return _png_16_bit(_blocks(SIXTEEN_BIT_COLOURS))


def cmyk_jpeg() -> bytes:
    """A real photo as a CMYK JPEG; Pillow stores it Adobe-style (inverted, APP14 marker)."""
    return _jpeg(Image.fromarray(skimage.data.coffee()).convert("CMYK"))


def palette_alpha_png() -> bytes:
    """A palette PNG with opaque, fully transparent and half-transparent entries."""
    indices = _blocks(tuple(range(len(PALETTE_ALPHA)))).astype(np.uint8)
    img = Image.frombytes("P", indices.shape[::-1], indices.tobytes())
    img.putpalette([channel for colour, _ in PALETTE_ALPHA for channel in colour])
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", transparency=bytes(alpha for _, alpha in PALETTE_ALPHA))
    return buffer.getvalue()


def opaque_rgba_png() -> bytes:
    """RGBA whose alpha is 255 everywhere: nothing to flatten."""
    rgb = skimage.data.astronaut()[:64, :64]
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, format="PNG")
    return buffer.getvalue()


def grayscale_jpeg() -> bytes:
    return _jpeg(Image.fromarray(skimage.data.camera()[128:384, 128:384]))


def animated_gif() -> bytes:
    """Three flat frames; only the first (:data:`GIF_FRAMES`[0]) may be used."""
    frames = [Image.new("RGB", (32, 32), colour) for colour in GIF_FRAMES]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


#: The files of ``jobs/samples/broken/``, by name.
SAMPLE_FILES: dict[str, Callable[[], bytes]] = {
    "empty.jpg": empty_file,
    "text.jpg": text_named_jpg,
    "truncated.jpg": truncated_jpeg,
    "corrupt.png": corrupt_png,
    "huge.png": huge_png,
    "float32.tif": float_tiff,
    "exif_rotated.jpg": exif_rotated_jpeg,
    "sixteen_bit.png": sixteen_bit_grey_png,
    "sixteen_bit_rgb.png": sixteen_bit_rgb_png,
    "cmyk.jpg": cmyk_jpeg,
    "palette_alpha.png": palette_alpha_png,
    "animated.gif": animated_gif,
}


def write_all(directory: str | pathlib.Path) -> list[pathlib.Path]:
    """Write every :data:`SAMPLE_FILES` entry into ``directory``; returns the paths."""
    target = pathlib.Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, build in SAMPLE_FILES.items():
        path = target / name
        path.write_bytes(build())
        logger.info("wrote %s (%d bytes)", path, path.stat().st_size)
        paths.append(path)
    return paths
