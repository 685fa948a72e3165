"""Safe, explicit decoding of untrusted input bytes into normalised source images.

Every input ends as exactly one of two records: a :class:`~schemas.SourceImage` (8-bit
RGB, upright, JPEG-encoded, with one :class:`~schemas.Note` per conversion applied) or a
:class:`~schemas.Rejection` with a stable :class:`~schemas.Reason`. Only the failures that
malformed input is expected to cause become rejections; any other exception is a bug and
propagates, so that the Beam layer dead-letters the input with its traceback.

No Beam here: the stage's PTransform wraps :func:`decode_source`.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import struct
import threading
import warnings
from typing import Union

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from schemas import Note, RawInput, Reason, Rejection, SourceImage, content_sha256, source_key
from transforms.checks import check_jpeg_quality, is_int

logger = logging.getLogger(__name__)

#: Stage name recorded in rejections.
STAGE = "decode"

#: Pillow's decompression-bomb threshold (``PIL.Image.MAX_IMAGE_PIXELS``), about 9459 x 9459.
DEFAULT_MAX_PIXELS = 89_478_485

#: Formats Pillow may parse. Everything else is refused before any plugin touches the
#: bytes: some plugins are not meant for hostile input (EPS hands the file to Ghostscript).
DEFAULT_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP")

# What Pillow raises on malformed input while parsing or decoding. Anything else (IndexError,
# TypeError, MemoryError, ...) is not swallowed: it reaches the dead-letter output.
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error)

# EXIF orientations 2..8 need a flip or a rotation to be upright; 1 (or none) is upright.
_TRANSPOSED_ORIENTATIONS = frozenset(range(2, 9))

# Integer modes holding more than 8 bits per sample; scaled to 8 bits by their high byte.
_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})

# The note each source mode earns on its way to RGB (RGB-like modes earn none).
_MODE_NOTES = {
    "1": Note.FROM_GRAYSCALE,
    "L": Note.FROM_GRAYSCALE,
    "LA": Note.FROM_GRAYSCALE,
    "P": Note.FROM_PALETTE,
    "PA": Note.FROM_PALETTE,
    "CMYK": Note.FROM_CMYK,
    **{mode: Note.FROM_GRAYSCALE for mode in _WIDE_MODES},
}
_CONVERTIBLE_MODES = frozenset(_MODE_NOTES) | {"RGB", "RGBA", "RGBa", "RGBX", "YCbCr"}

# Image.open warns before it returns the header we check ourselves; see _open.
_OPEN_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How inputs are decoded.

    ``max_pixels`` is checked against the size the header declares, before any pixel is
    decoded. Pillow itself refuses to open headers above ``2 * PIL.Image.MAX_IMAGE_PIXELS``,
    so a larger ``max_pixels`` is capped there (such images are still rejected as too
    large). ``formats`` is an allow-list of Pillow format names. ``alpha_background`` is
    the colour that transparent pixels are composited over.
    """

    max_pixels: int = DEFAULT_MAX_PIXELS
    jpeg_quality: int = 95
    alpha_background: tuple[int, int, int] = (255, 255, 255)
    formats: tuple[str, ...] = DEFAULT_FORMATS

    def __post_init__(self) -> None:
        # Configs often come from YAML, which has lists and no tuples: accept any sequence.
        object.__setattr__(self, "alpha_background", tuple(self.alpha_background))
        object.__setattr__(self, "formats", tuple(self.formats))
        if not is_int(self.max_pixels) or self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be a positive integer, got {self.max_pixels!r}")
        check_jpeg_quality(self.jpeg_quality)
        background = self.alpha_background
        if len(background) != 3 or not all(is_int(c) and 0 <= c <= 255 for c in background):
            raise ValueError(f"alpha_background must be three integers in [0, 255], got {background!r}")
        if not self.formats:
            raise ValueError("formats must name at least one Pillow format")
        Image.init()
        unknown = [name for name in self.formats if name not in Image.OPEN]
        if unknown:
            raise ValueError(f"formats {unknown} are not formats this Pillow can open (known: {sorted(Image.OPEN)})")


class _UnsupportedMode(Exception):
    """A decoded image whose pixel values have no faithful 8-bit RGB meaning."""


def decode_source(raw: RawInput, config: DecodeConfig) -> Union[SourceImage, Rejection]:
    """Decode one input, or say precisely why it cannot be used.

    The key and sha256 are those of ``raw.data`` as given, whatever decoding changes. A
    JPEG that needs no change keeps its original bytes (lossless and free); anything else
    is re-encoded. Raises only on bugs, never on bad input.
    """
    sha256 = content_sha256(raw.data)
    key = source_key(sha256)

    def reject(reason: Reason, detail: str) -> Rejection:
        logger.debug("rejected %s: %s (%s)", raw.uri, reason.value, detail)
        return Rejection(uri=raw.uri, stage=STAGE, reason=reason, detail=detail, key=key)

    if not raw.data:
        return reject(Reason.EMPTY_FILE, "0 bytes")
    try:
        img = _open(raw.data, config.formats)
    except UnidentifiedImageError:
        return reject(*_unidentified(raw.data, config.formats))
    except Image.DecompressionBombError as exc:
        return reject(Reason.IMAGE_TOO_LARGE, f"refused by Pillow while reading the header: {exc}")
    except _DECODE_ERRORS as exc:
        return reject(*_failure(exc))

    with img:
        width, height = img.size
        if width * height > config.max_pixels:
            return reject(
                Reason.IMAGE_TOO_LARGE,
                f"{width}x{height} = {width * height} pixels > max_pixels {config.max_pixels}",
            )
        try:
            frame, notes = _read_first_frame_upright(img)
        except _DECODE_ERRORS as exc:
            return reject(*_failure(exc))
        # Outside the guard above: a failure while converting decoded pixels is our bug.
        try:
            rgb, mode_notes = _to_rgb(frame, config.alpha_background)
        except _UnsupportedMode as exc:
            return reject(Reason.UNSUPPORTED_MODE, str(exc))
        notes += mode_notes
        unchanged_jpeg = img.format == "JPEG" and img.mode == "RGB" and not notes

    if unchanged_jpeg:
        jpeg = raw.data
    else:
        jpeg = _encode_jpeg(rgb, config.jpeg_quality)
        notes.append(Note.REENCODED)
    return SourceImage(
        key=key,
        sha256=sha256,
        uri=raw.uri,
        width=rgb.width,
        height=rgb.height,
        jpeg=jpeg,
        notes=tuple(notes),
        annotations=raw.annotations,
        origin=raw.origin,
    )


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """JPEG bytes of an ``HxWx3`` uint8 RGB array, encoded the way decoded sources are.

    4:4:4 chroma (no subsampling: colour edges of masks and edits stay sharp) and no
    metadata, so equal pixels always give equal bytes.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 array, got {rgb.dtype} {rgb.shape}")
    return _encode_jpeg(Image.fromarray(rgb), quality)


def decode_rgb(encoded: bytes) -> np.ndarray:
    """The pixels of a JPEG or PNG this package wrote (``SourceImage.jpeg``, a candidate's PNG), ``HxWx3`` uint8.

    For trusted bytes only: untrusted input goes through :func:`decode_source`.
    """
    with _open(encoded, ("JPEG", "PNG")) as img:
        return np.array(img.convert("RGB"))


def _encode_jpeg(rgb: Image.Image, quality: int) -> bytes:
    # Pillow writes only what is passed here (no EXIF/ICC from rgb.info), and libjpeg has no
    # clock or randomness: the bytes depend on the pixels, quality and libjpeg version.
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=quality, subsampling=0)
    return buffer.getvalue()


def _open(data: bytes, formats: tuple[str, ...]) -> Image.Image:
    # Image.open emits DecompressionBombWarning for headers above PIL.Image.MAX_IMAGE_PIXELS
    # before it hands the header back; the caller then applies its own, configured limit,
    # so the warning would only be noise in worker logs. Silencing it with catch_warnings
    # swaps process-wide filter state, which is not thread-safe, and Beam runs bundles in
    # threads: the lock keeps concurrent opens from restoring each other's filters. Opening
    # parses only the header, so the lock is held briefly; pixels decode outside it.
    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=formats)


def _read_first_frame_upright(img: Image.Image) -> tuple[Image.Image, list[Note]]:
    """Decode the first frame and apply EXIF orientation; may raise any of _DECODE_ERRORS."""
    notes: list[Note] = []
    if getattr(img, "is_animated", False):
        notes.append(Note.FIRST_FRAME_ONLY)
    # Pillow hands 16-bit RGB/RGBA/LA PNGs and TIFFs over as 8-bit modes (the high byte of
    # each sample); only the decoder's raw mode still tells that the source was 16-bit.
    wide = img.mode in _WIDE_MODES or any(";16" in _raw_mode(tile) for tile in img.tile)
    # Read before load(): Pillow's TIFF loader turns the pixels upright and drops the tag.
    orientation = img.getexif().get(ExifTags.Base.Orientation)
    img.load()
    if orientation in _TRANSPOSED_ORIENTATIONS:
        img = ImageOps.exif_transpose(img)  # a no-op where the loader already applied it
        notes.append(Note.EXIF_ORIENTED)
    if wide:
        notes.append(Note.FROM_16_BIT)
    return img, notes


def _raw_mode(tile: tuple) -> str:
    # A tile is (codec, extents, offset, args); args is the raw mode or starts with it.
    args = tile[3]
    if isinstance(args, tuple) and args:
        args = args[0]
    return args if isinstance(args, str) else ""


def _to_rgb(img: Image.Image, background: tuple[int, int, int]) -> tuple[Image.Image, list[Note]]:
    """8-bit RGB, alpha composited over ``background``; raises _UnsupportedMode."""
    mode = img.mode
    if mode not in _CONVERTIBLE_MODES:
        raise _UnsupportedMode(f"mode {mode} has no 8-bit RGB equivalent")
    notes = [_MODE_NOTES[mode]] if mode in _MODE_NOTES else []
    if mode in _WIDE_MODES:
        img = _high_byte(img)
    if not img.has_transparency_data:
        return img.convert("RGB"), notes
    rgba = img.convert("RGBA")
    if rgba.getchannel("A").getextrema()[0] == 255:
        return rgba.convert("RGB"), notes
    flat = Image.new("RGBA", rgba.size, (*background, 255))
    flat.alpha_composite(rgba)
    return flat.convert("RGB"), notes + [Note.ALPHA_FLATTENED]


def _high_byte(img: Image.Image) -> Image.Image:
    """A 16-bit grayscale image as 8-bit L, keeping each sample's high byte.

    Scaling, not clipping: 65535 -> 255, 32768 -> 128. The high byte is what Pillow, libpng
    (strip_16) and OpenCV do for 16-bit colour, so grey and colour sources agree.
    """
    values = np.asarray(img)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 0xFFFF:
        raise _UnsupportedMode(f"mode {img.mode} values span {low}..{high}, outside 16 bits")
    return Image.fromarray((values >> 8).astype(np.uint8))


def _failure(exc: BaseException) -> tuple[Reason, str]:
    detail = f"{type(exc).__name__}: {exc}"
    # Pillow has no exception type for short data; its messages say "truncated", and
    # readers that run out of data raise EOFError.
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return Reason.TRUNCATED_IMAGE, detail
    return Reason.CORRUPT_IMAGE, detail


def _unidentified(data: bytes, formats: tuple[str, ...]) -> tuple[Reason, str]:
    """Tell a damaged image (its format's signature, but no valid header) from a non-image."""
    signature = _signature_format(data)
    if signature is None:
        return Reason.NOT_AN_IMAGE, "no known image signature"
    if signature in formats:
        return Reason.CORRUPT_IMAGE, f"has a {signature} signature but its header cannot be parsed"
    return Reason.UNSUPPORTED_FORMAT, f"a {signature} file; accepted formats are {', '.join(formats)}"


def _signature_format(data: bytes) -> str | None:
    # Pillow's registry of format plugins: a plugin with an accept() test recognises its
    # magic bytes; plugins without one (TGA, ...) would claim anything and are skipped.
    Image.init()
    prefix = data[:16]
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        if accept is not None and accept(prefix):
            return name
    return None
