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

from schemas import Annotation, Box, Reason, Rejection
from transforms.checks import is_number

logger = logging.getLogger(__name__)

STAGE = "annotations"

#: How far a box edge may lie outside the image, as a fraction of the image side, and
#: still be clipped rather than rejected.
OVERHANG_TOLERANCE = 0.02

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")

#: Columns an OpenImages box CSV must have; the others (Source, Confidence, IsOccluded, ...) are optional.
OPENIMAGES_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")

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


def _rejection(uri: str, detail: str) -> Rejection:
    return Rejection(uri=uri, stage=STAGE, reason=Reason.INVALID_BOX, detail=detail)


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

    def add(self, result: Union[Annotation, str], where: str) -> None:
        if isinstance(result, str):
            self.rejected.append(_rejection(self.path, f"{where}: {result}"))
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


def _coco_annotation(
    ann: dict, categories: Mapping[int, str], size: Optional[tuple[int, int]]
) -> Union[Annotation, str]:
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
    return Annotation(
        label=categories[category_id],
        box=box,
        category_id=category_id,
        source="coco",
        is_crowd=bool(ann.get("iscrowd", 0)),
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


def _openimages_annotation(row: dict, class_descriptions: Optional[Mapping[str, str]]) -> Union[Annotation, str]:
    mid = row["LabelName"]
    label = mid if class_descriptions is None else class_descriptions.get(mid)
    if label is None:
        return f"LabelName {mid!r} is not in the class descriptions"
    coordinates = [row[c] for c in ("XMin", "YMin", "XMax", "YMax")]
    try:
        x0, y0, x1, y1 = map(float, coordinates)
    except (TypeError, ValueError):
        return f"XMin, YMin, XMax, YMax are not four numbers: {coordinates!r}"
    box = _checked_box(x0, y0, x1, y1, (1, 1))
    if isinstance(box, str):
        return box
    return Annotation(label=label, box=box, source="openimages", is_crowd=row.get("IsGroupOf") == "1")


def parse_openimages(
    source: Source, images_root: str, class_descriptions: Optional[Mapping[str, str]] = None
) -> Iterator[Parsed]:
    """Yield every image of an OpenImages (v4-v7) box CSV with its boxes, normalised (see ``in_pixels``).

    Rows are grouped by ImageID in one pass, in any order; images come out in order of
    first appearance. The path is ``{ImageID}.jpg`` under ``images_root``. Labels are
    display names from ``class_descriptions`` (a box whose MID it lacks is rejected), or
    the MIDs themselves without it. ``IsGroupOf`` is ``is_crowd``; ``Confidence`` is
    ignored (it is 1 for every box in these files).
    """
    reader = csv.DictReader(_text_lines(source))
    missing = [c for c in OPENIMAGES_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ValueError(f"not an OpenImages box CSV: no column {', '.join(missing)} in header {reader.fieldnames}")
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
        pending[image_id].add(_openimages_annotation(row, class_descriptions), where)
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
