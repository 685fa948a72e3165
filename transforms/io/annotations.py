"""Annotation files that carry boxes with the images: COCO detection JSON, OpenImages box CSV.

Pure parsing, no Beam: each parser reads one annotation file and yields, per image, an
:class:`AnnotatedImage` with the image's path, its valid boxes and a :class:`Rejection`
for each box it could not keep. Every image the file names is yielded, boxes or not, and
every box ends up kept or rejected, so a run's ledger can close:
``boxes in the file = sum(len(annotations)) + sum(len(rejections))``.

A box is rejected (``Reason.INVALID_BOX``, stage ``"annotations"``) when it is not four
finite numbers, is empty or inverted, lies entirely outside the image, or overhangs an
edge by more than :data:`OVERHANG_TOLERANCE` of the image side (its coordinates then
disagree with the image, and clipping would not give the object's box). A smaller
overhang, which COCO has from rounding, is clipped. A box naming a category the file
does not define is rejected too (``INVALID_BOX``: the schema has no code of its own for
it, and the detail says which). A box that names no image in the file has no
``AnnotatedImage`` to travel with, so the parser yields a bare :class:`Rejection` for it
with an empty ``uri``: consumers split the stream by type.

Coordinates: COCO boxes are pixels of the declared image size. OpenImages boxes are
fractions of the image size, which the CSV does not give, so an OpenImages
``AnnotatedImage`` has ``normalized=True`` and its boxes become pixels once the decoded
image's size is known: :meth:`AnnotatedImage.in_pixels` (a no-op for pixel boxes), or
``Annotation.scaled`` where only the annotations travel on (``RawInput.boxes_normalized``).

Masks: a COCO ``segmentation`` (polygons, or RLE compressed or not) and an OpenImages
segmentation CSV's ``MaskPath`` travel as :class:`~schemas.records.AnnotationMask` in the
file's own encoding (small, and pixels need the decoded image); :func:`mask_pixels` turns
one into a boolean mask of the image. A segmentation that is not one of these forms
rejects its annotation (``Reason.INVALID_MASK``): its box alone would silently lose what
the file meant.
"""
from __future__ import annotations

import codecs
import csv
import dataclasses
import io
import json
import logging
import math
import posixpath
import re
from typing import IO, Callable, Iterable, Iterator, Mapping, Optional, Union

import numpy as np
from apache_beam.io.filesystems import FileSystems
from PIL import Image, UnidentifiedImageError

from schemas import Annotation, Box, Reason, Rejection
from schemas.records import AnnotationMask
from transforms.checks import is_int, is_number
from transforms.io.files import read_bytes

logger = logging.getLogger(__name__)

STAGE = "annotations"

#: How far a box edge may lie outside the image, as a fraction of the image side, and
#: still be clipped rather than rejected.
OVERHANG_TOLERANCE = 0.02

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: Columns an OpenImages box CSV must have; the others (Source, Confidence, IsOccluded, ...) are optional.
OPENIMAGES_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")
#: The columns of an OpenImages segmentation CSV (a mask PNG per box, its box columns prefixed ``Box``).
OPENIMAGES_MASK_COLUMNS = ("MaskPath", "ImageID", "LabelName", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")

Source = Union[bytes, str, IO]
Parsed = Union["AnnotatedImage", Rejection]


@dataclasses.dataclass(frozen=True)
class AnnotatedImage:
    """One image named by an annotation file, with the boxes kept for it and those rejected.

    ``width``/``height`` are the size the file declares (``None`` if it declares none).
    With ``normalized`` the boxes are fractions of the image size (0..1), not pixels:
    use :meth:`in_pixels` rather than ``annotations`` wherever pixels are meant.
    """

    path: str
    annotations: tuple[Annotation, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    width: Optional[int] = None
    height: Optional[int] = None
    normalized: bool = False

    def __post_init__(self) -> None:
        if (self.width is None) != (self.height is None):
            raise ValueError(f"declare both width and height or neither, got {self.width}x{self.height}")
        if self.width is not None and (self.width <= 0 or self.height <= 0):
            raise ValueError(f"declared image size must be positive, got {self.width}x{self.height}")

    @property
    def uri(self) -> str:
        """The image's path: what a dead letter of the read records."""
        return self.path

    def in_pixels(self, width: int, height: int) -> tuple[Annotation, ...]:
        """The annotations with boxes in pixels of a decoded ``width`` x ``height`` image."""
        if width <= 0 or height <= 0:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        if not self.normalized:
            return self.annotations
        return tuple(a.scaled(width, height) for a in self.annotations)


def join_path(root: str, path: str) -> str:
    """``path`` under ``root`` with ``/`` separators, so that ``gs://`` and ``s3://`` roots work.

    A path that is absolute or a URL already is returned as given.
    """
    if not root or path.startswith("/") or _URL_SCHEME.match(path):
        return path
    return posixpath.join(root, path)


def _rejection(uri: str, detail: str, reason: Reason = Reason.INVALID_BOX) -> Rejection:
    return Rejection(uri=uri, stage=STAGE, reason=reason, detail=detail)


@dataclasses.dataclass(frozen=True)
class _InvalidMask:
    """Why an annotation's segmentation cannot be read (its box may be fine)."""

    detail: str


def _checked_box(x0: float, y0: float, x1: float, y1: float, size: Optional[tuple[float, float]]) -> Union[Box, str]:
    """The box clipped into a ``size`` = (width, height) image (``None``: unknown), or why it is invalid."""
    corners = [x0, y0, x1, y1]
    if not all(math.isfinite(v) for v in corners):
        return f"box has a non-finite coordinate: {corners}"
    if not (x1 > x0 and y1 > y0):
        return f"box is empty or inverted: {corners}"
    box = Box(x0, y0, x1, y1)
    if size is None:
        return box
    width, height = size
    if x0 >= width or y0 >= height or x1 <= 0 or y1 <= 0:
        return f"box {corners} lies entirely outside the image ({width:g}x{height:g})"
    overhang = max(-x0 / width, -y0 / height, x1 / width - 1, y1 / height - 1)
    if overhang > OVERHANG_TOLERANCE:
        return (
            f"box {corners} overhangs the image ({width:g}x{height:g}) by {overhang:.1%} of its side, "
            f"more than the {OVERHANG_TOLERANCE:.0%} that is clipped"
        )
    return box.clipped(width, height)


@dataclasses.dataclass
class _Pending:
    """What has been gathered for one image while its annotation file is read."""

    path: str
    size: Optional[tuple[int, int]] = None
    kept: list[Annotation] = dataclasses.field(default_factory=list)
    rejected: list[Rejection] = dataclasses.field(default_factory=list)

    def add(self, result: Union[Annotation, str, _InvalidMask], where: str) -> None:
        if isinstance(result, str):
            self.rejected.append(_rejection(self.path, f"{where}: {result}"))
        elif isinstance(result, _InvalidMask):
            self.rejected.append(_rejection(self.path, f"{where}: {result.detail}", Reason.INVALID_MASK))
        else:
            self.kept.append(result)

    def done(self, normalized: bool) -> AnnotatedImage:
        width, height = self.size or (None, None)
        return AnnotatedImage(self.path, tuple(self.kept), tuple(self.rejected), width, height, normalized)


def _finish(fmt: str, pending: Iterable[_Pending], orphans: list[Rejection], normalized: bool) -> Iterator[Parsed]:
    images = [p.done(normalized) for p in pending]
    logger.info(
        "%s annotations: %d images, %d boxes kept, %d rejected",
        fmt,
        len(images),
        sum(len(i.annotations) for i in images),
        sum(len(i.rejections) for i in images) + len(orphans),
    )
    yield from images
    yield from orphans


def _text_lines(source: Source) -> Iterable[str]:
    """Lines of text for ``csv`` from bytes, a str, or a binary or text stream (UTF-8, BOM dropped)."""
    if isinstance(source, (bytes, bytearray)):
        source = bytes(source).decode("utf-8-sig")
    if isinstance(source, str):
        return source.splitlines(keepends=True)
    if isinstance(source, io.TextIOBase):
        return source
    return codecs.iterdecode(iter(source.readline, b""), "utf-8-sig")


def _coco_size(entry: dict) -> Optional[tuple[int, int]]:
    width, height = entry.get("width"), entry.get("height")
    if isinstance(width, int) and isinstance(height, int) and width > 0 and height > 0:
        return width, height
    return None


def _coco_mask(segmentation: object, size: Optional[tuple[int, int]]) -> Union[AnnotationMask, None, _InvalidMask]:
    """The annotation's mask (``None`` when it has none), checked for form but not decoded."""
    if segmentation is None or segmentation == []:
        return None
    if isinstance(segmentation, list):
        polygons = []
        for polygon in segmentation:
            if not (isinstance(polygon, list) and len(polygon) % 2 == 0
                    and all(is_number(v) and math.isfinite(v) for v in polygon)):
                return _InvalidMask(f"segmentation polygon is not an even list of numbers: {polygon!r:.80}")
            # Fewer than 3 points enclose nothing (COCO has a few such slivers): they add no pixel.
            if len(polygon) >= 6:
                polygons.append(tuple(float(v) for v in polygon))
        if not polygons:
            return _InvalidMask(f"no segmentation polygon has 3 points: {segmentation!r:.80}")
        return AnnotationMask("polygon", tuple(polygons))
    if isinstance(segmentation, dict) and set(segmentation) >= {"counts", "size"}:
        rle_size, counts = segmentation["size"], segmentation["counts"]
        if not (isinstance(rle_size, list) and len(rle_size) == 2 and all(is_int(v) and v > 0 for v in rle_size)):
            return _InvalidMask(f"RLE size is not [height, width]: {rle_size!r}")
        height, width = rle_size
        if size is not None and (width, height) != size:
            return _InvalidMask(f"RLE is {width}x{height}, the image is declared {size[0]}x{size[1]}")
        if isinstance(counts, list) and all(is_int(v) and v >= 0 for v in counts):
            if sum(counts) != width * height:
                return _InvalidMask(f"RLE runs cover {sum(counts)} pixels, not {width}x{height}")
            return AnnotationMask("rle", tuple(counts), width, height)
        if isinstance(counts, str) and counts:
            return AnnotationMask("rle", counts, width, height)
        return _InvalidMask(f"RLE counts are neither a string nor a list of run lengths: {counts!r:.80}")
    return _InvalidMask(f"segmentation is neither polygons nor RLE: {segmentation!r:.80}")


def _coco_annotation(
    ann: dict, categories: Mapping[int, str], size: Optional[tuple[int, int]]
) -> Union[Annotation, str, _InvalidMask]:
    category_id = ann.get("category_id")
    if category_id not in categories:
        return f"unknown category_id {category_id!r}"
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(map(is_number, bbox))):
        return f"bbox is not four numbers [x, y, w, h]: {bbox!r}"
    x, y, w, h = map(float, bbox)
    box = _checked_box(x, y, x + w, y + h, size)
    if isinstance(box, str):
        return box
    mask = _coco_mask(ann.get("segmentation"), size)
    if isinstance(mask, _InvalidMask):
        return mask
    return Annotation(
        label=categories[category_id],
        box=box,
        category_id=category_id,
        source="coco",
        is_crowd=bool(ann.get("iscrowd", 0)),
        mask=mask,
    )


def parse_coco(source: Source, images_root: str) -> Iterator[Parsed]:
    """Yield every image of a COCO detection JSON with its boxes, then a Rejection per box naming no image.

    ``source`` is the file's bytes or text, or a binary or text stream. Paths are each
    image's ``file_name`` under ``images_root``. Boxes are checked and clipped against the
    declared ``width``/``height``; an image that declares no size keeps its boxes unclipped.
    """
    data = json.loads(source) if isinstance(source, (bytes, bytearray, str)) else json.load(source)
    categories = {c["id"]: c["name"] for c in data.get("categories", ())}
    pending: dict[int, _Pending] = {}
    for entry in data["images"]:
        if entry["id"] in pending:
            raise ValueError(f"COCO file lists image id {entry['id']!r} twice")
        pending[entry["id"]] = _Pending(join_path(images_root, entry["file_name"]), _coco_size(entry))
    orphans: list[Rejection] = []
    for ann in data.get("annotations", ()):
        where = f"annotation {ann.get('id')!r}"
        image = pending.get(ann.get("image_id"))
        if image is None:
            orphans.append(_rejection("", f"{where}: image_id {ann.get('image_id')!r} is not in the file's images"))
        else:
            image.add(_coco_annotation(ann, categories, image.size), where)
    return _finish("COCO", pending.values(), orphans, normalized=False)


def _openimages_annotation(row: dict, class_descriptions: Optional[Mapping[str, str]],
                           masks_root: Optional[str]) -> Union[Annotation, str, _InvalidMask]:
    mid = row["LabelName"]
    label = mid if class_descriptions is None else class_descriptions.get(mid)
    if label is None:
        return f"LabelName {mid!r} is not in the class descriptions"
    prefix = "" if masks_root is None else "Box"
    coordinates = [row[prefix + c] for c in ("XMin", "YMin", "XMax", "YMax")]
    try:
        x0, y0, x1, y1 = map(float, coordinates)
    except (TypeError, ValueError):
        return f"XMin, YMin, XMax, YMax are not four numbers: {coordinates!r}"
    box = _checked_box(x0, y0, x1, y1, (1, 1))
    if isinstance(box, str):
        return box
    mask = None
    if masks_root is not None:
        if not row["MaskPath"]:
            return _InvalidMask("the row has no MaskPath")
        mask = AnnotationMask("png", join_path(masks_root, row["MaskPath"]))
    return Annotation(label=label, box=box, source="openimages", is_crowd=row.get("IsGroupOf") == "1", mask=mask)


def parse_openimages(
    source: Source, images_root: str, class_descriptions: Optional[Mapping[str, str]] = None,
    masks_root: Optional[str] = None,
) -> Iterator[Parsed]:
    """Yield every image of an OpenImages (v4-v7) box CSV with its boxes, normalised (see ``in_pixels``).

    A segmentation CSV (``MaskPath`` and ``BoxXMin``... columns) gives each box its mask
    PNG, the ``MaskPath`` under ``masks_root`` (default: ``images_root``).

    Rows are grouped by ImageID in one pass, in any order; images come out in order of
    first appearance. The path is ``{ImageID}.jpg`` under ``images_root``. Labels are
    display names from ``class_descriptions`` (a box whose MID it lacks is rejected), or
    the MIDs themselves without it. ``IsGroupOf`` is ``is_crowd``; ``Confidence`` is
    ignored (it is 1 for every box in these files).
    """
    reader = csv.DictReader(_text_lines(source))
    has_masks = "MaskPath" in (reader.fieldnames or ())
    columns = OPENIMAGES_MASK_COLUMNS if has_masks else OPENIMAGES_COLUMNS
    missing = [c for c in columns if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"not an OpenImages box CSV: no column {', '.join(missing)} in header {reader.fieldnames}")
    masks_root = (images_root if masks_root is None else masks_root) if has_masks else None
    pending: dict[str, _Pending] = {}
    orphans: list[Rejection] = []
    for row in reader:
        where = f"line {reader.line_num}"
        image_id = row["ImageID"]
        if not image_id:
            orphans.append(_rejection("", f"{where}: the row has no ImageID"))
            continue
        if image_id not in pending:
            pending[image_id] = _Pending(join_path(images_root, f"{image_id}.jpg"))
        pending[image_id].add(_openimages_annotation(row, class_descriptions, masks_root), where)
    return _finish("OpenImages", pending.values(), orphans, normalized=True)


def load_class_descriptions(source: Source) -> dict[str, str]:
    """MID -> display name from ``class-descriptions-boxable.csv`` (no header; a v6/v7 header is skipped)."""
    descriptions: dict[str, str] = {}
    for number, row in enumerate(csv.reader(_text_lines(source)), start=1):
        if not row or row == ["LabelName", "DisplayName"]:
            continue
        if len(row) != 2:
            raise ValueError(f"class descriptions line {number}: expected MID,DisplayName, got {row!r}")
        descriptions[row[0]] = row[1]
    return descriptions


# --------------------------------------------------------------------------- masks in pixels


def _rle_counts(counts: str) -> list[int]:
    """Run lengths from COCO's compressed RLE string (pycocotools ``rleFrString``: 5-bit groups, deltas)."""
    runs: list[int] = []
    position = 0
    while position < len(counts):
        value, shift, more = 0, 0, True
        while more:
            if position >= len(counts):
                raise ValueError("compressed RLE ends inside a run length")
            char = ord(counts[position]) - 48
            if not 0 <= char < 64:
                raise ValueError(f"{counts[position]!r} at {position} is not a compressed RLE character")
            value |= (char & 0x1F) << shift
            more = bool(char & 0x20)
            position += 1
            shift += 5
            if not more and char & 0x10:
                value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
    return runs


def _rle_pixels(mask: AnnotationMask, width: int, height: int) -> np.ndarray:
    if (mask.width, mask.height) != (width, height):
        raise ValueError(f"the annotated RLE mask is {mask.width}x{mask.height}, the image {width}x{height}")
    runs = _rle_counts(mask.data) if isinstance(mask.data, str) else list(mask.data)
    if min(runs, default=0) < 0 or sum(runs) != width * height:
        raise ValueError(f"RLE runs cover {sum(runs)} pixels, not {width}x{height}")
    # Runs alternate background, object, ... over the pixels in column-major order.
    values = np.repeat(np.arange(len(runs)) % 2 == 1, runs)
    return values.reshape(width, height).T


def _polygon_pixels(mask: AnnotationMask, width: int, height: int) -> np.ndarray:
    """Pixels whose centre lies inside a polygon (even-odd rule), the union over the polygons.

    COCO coordinates put pixel ``(x, y)``'s centre at ``(x + 0.5, y + 0.5)``: a square from
    10 to 20 covers the 10 x 10 pixels 10..19, as pycocotools rasterises it (OpenCV's
    ``fillPoly`` would also fill the boundary's pixels, 11 x 11). A centre on an edge is inside
    only on its top and left edges, so polygons that share an edge do not share its pixels.
    Vertices off the image clip.
    """
    canvas = np.zeros((height, width), bool)
    rows = np.arange(height, dtype=np.float64)[:, None] + 0.5
    centres = np.arange(width, dtype=np.float64) + 0.5
    for polygon in mask.data:
        x0, y0 = np.asarray(polygon, np.float64).reshape(-1, 2).T
        x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
        # Half-open in y, so a vertex on a row's centre line is crossed once, not twice.
        crosses = (y0 <= rows) != (y1 <= rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            xs = np.where(crosses, x0 + (rows - y0) * (x1 - x0) / (y1 - y0), np.inf)
        xs.sort(axis=1)
        for y in np.flatnonzero(crosses.any(axis=1)):
            # Crossings at or left of a centre: an edge through a centre keeps it on its right side only.
            canvas[y] |= np.searchsorted(xs[y], centres, side="right") % 2 == 1
    return canvas


def _png_pixels(mask: AnnotationMask, width: int, height: int) -> np.ndarray:
    # A missing file is the annotation's fault, not a transient error worth retrying.
    if not FileSystems.exists(mask.data):
        raise ValueError(f"mask PNG {mask.data} not found")
    try:
        with Image.open(io.BytesIO(read_bytes(mask.data)), formats=("PNG",)) as image:
            values = image.convert("L")
            if values.size != (width, height):
                values = values.resize((width, height), Image.NEAREST)
            return np.asarray(values) > 0
    except UnidentifiedImageError as error:
        raise ValueError(f"mask {mask.data} is not a PNG: {error}") from error


#: Mask kind -> its decoder, called as ``decoder(mask, width, height)``.
_MASK_DECODERS: Mapping[str, Callable[[AnnotationMask, int, int], np.ndarray]] = {
    "rle": _rle_pixels, "polygon": _polygon_pixels, "png": _png_pixels,
}


def mask_pixels(mask: AnnotationMask, width: int, height: int) -> np.ndarray:
    """An annotated mask as a boolean ``height`` x ``width`` array of the decoded image.

    Whatever is wrong with the annotation itself raises ``ValueError``: an RLE of another
    size (its pixels cannot be placed) or whose runs do not add up, a mask PNG that is
    missing or no PNG. Polygons are clipped to the image; a mask PNG (any filesystem) is
    resized to it, as OpenImages' masks are smaller than their images.
    """
    return _MASK_DECODERS[mask.kind](mask, width, height)


#: A parser is called as ``parser(source, images_root, **format_options)``.
Parser = Callable[..., Iterator[Parsed]]

PARSERS: dict[str, Parser] = {"coco": parse_coco, "openimages": parse_openimages}

_FORMAT_BY_EXTENSION = {".json": "coco", ".csv": "openimages"}


def detect_format(filename: str) -> str:
    """The format a file's extension implies, for ``--annotation-format auto``."""
    extension = posixpath.splitext(filename)[1].lower()
    if extension not in _FORMAT_BY_EXTENSION:
        raise ValueError(
            f"cannot tell the annotation format of {filename!r} from its extension "
            f"({', '.join(_FORMAT_BY_EXTENSION)}); name one of {', '.join(PARSERS)}"
        )
    return _FORMAT_BY_EXTENSION[extension]
