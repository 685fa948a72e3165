"""Contact sheets: one picture of many samples, for a reviewer's first look.

Candidate samples: one row per object, the source with the removal mask tinted red and
the detection box, the RGBA cut-out on a checkerboard, then every removal candidate
captioned with its scores. Self-reference (Paint-by-Example) samples: the reference, the
target with its mask tinted, and the target, two pairs per row. Frame pairs (MimicBrush):
the source with its grid mask tinted and the reference. Built pairs: the source, the
source with the repainted region tinted (both pairs' mask), the removal and the re-paste,
cropped alike around the object, one object per row. Reads the shards with
``webdataset``, so it works on any shards of these kinds; a sample of our shards whose
bytes differ from the digest recorded when it was written is left out (and counted), as
every job's reader leaves it out, so a reviewer never judges a damaged picture.
"""
from __future__ import annotations

import io
import json
import logging
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np
import webdataset
from PIL import Image, ImageDraw

from schemas import Reason
from schemas.sample import Field, removed_field
from transforms.io.readers import digest_mismatch
from transforms.io.shards import recorded_digests

LOG = logging.getLogger(__name__)

MASK_TINT = np.array([255, 40, 40], np.float32)
CAPTION_PX = 14
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


def _thumbnail(image: Image.Image, side: int) -> Image.Image:
    image = image.copy()
    image.thumbnail((side, side), Image.Resampling.LANCZOS)
    tile = Image.new("RGB", (side, side), BACKGROUND)
    tile.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return tile


def _open(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image


def _tinted(sample: dict, mask_field: str = Field.MASK) -> Image.Image:
    src = np.asarray(_open(sample[Field.SRC]).convert("RGB"), np.float32)
    mask = np.asarray(_open(sample[mask_field]).convert("L")) > 0
    src[mask] = 0.55 * src[mask] + 0.45 * MASK_TINT
    return Image.fromarray(src.astype(np.uint8))


def _source_with_mask(sample: dict, meta: dict) -> Image.Image:
    image = _tinted(sample)
    ImageDraw.Draw(image).rectangle(meta["detection"]["box"], outline=(255, 220, 0), width=3)
    return image


def _cutout(sample: dict) -> Image.Image:
    rgba = _open(sample[Field.OBJECT]).convert("RGBA")
    checker = np.indices((rgba.height, rgba.width)).sum(axis=0) // 8 % 2
    board = Image.fromarray((np.where(checker[..., None], 200, 150) * np.ones(3)).astype(np.uint8))
    board.paste(rgba, (0, 0), rgba)
    return board


def _caption(scores: dict) -> str:
    short = {"ssim_outside": "ssim", "change_inside": "chg", "seam": "seam", "redetect_score": "redet",
             "clip_object_gone": "clip"}
    return " ".join(f"{short[name]} {value:.2f}" for name, value in scores.items()
                    if value is not None and name in short)


def _row(sample: dict, side: int, candidates: int) -> Image.Image:
    meta = json.loads(sample[Field.JSON])
    tiles = [(_source_with_mask(sample, meta), f"{meta['detection']['label']} {meta['detection']['score']:.2f}"),
             (_cutout(sample), meta["key"][-10:])]
    for candidate in meta["candidates"][:candidates]:
        tiles.append((_open(sample[removed_field(candidate["index"])]).convert("RGB"), _caption(candidate["scores"])))
    row = Image.new("RGB", (side * (2 + candidates), side + CAPTION_PX), BACKGROUND)
    draw = ImageDraw.Draw(row)
    for column, (image, caption) in enumerate(tiles):
        row.paste(_thumbnail(image, side), (column * side, 0))
        draw.text((column * side + 3, side + 1), caption, fill=TEXT)
    return row


def _checked(shards: Sequence[str]) -> Iterator[tuple[dict, Optional[str]]]:
    """Every sample of ``shards`` in order, with why it is not the one written (None when it is)."""
    recorded: dict[str, Optional[dict[str, str]]] = {}
    for sample in webdataset.WebDataset(list(shards), shardshuffle=False):
        url = sample["__url__"]
        if url not in recorded:
            recorded[url] = recorded_digests(url)
        yield sample, digest_mismatch(recorded[url], sample["__key__"], sample)


def _samples(shards: Sequence[str], keys: Iterable[str], limit: int) -> list[dict]:
    """Up to ``limit`` intact samples (those in ``keys`` if given), in shard order; damaged ones logged, counted."""
    wanted, found, damaged = set(keys), [], 0
    for sample, mismatch in _checked(shards):
        if wanted and sample["__key__"] not in wanted:
            continue
        if mismatch:
            damaged += 1
            LOG.warning("%s: sample %r left out: its bytes are not those written (%s: %s)", sample["__url__"],
                        sample["__key__"], Reason.SAMPLE_DIGEST_MISMATCH.value, mismatch)
            continue
        found.append(sample)
        if len(found) == limit:
            break
    if damaged:
        LOG.warning("left %d damaged samples out of the sheet (%s)", damaged, Reason.SAMPLE_DIGEST_MISMATCH.value)
    if not found:
        raise ValueError(f"no intact sample found in {len(shards)} shards")
    return found


def _stack(rows: Sequence[Image.Image]) -> Image.Image:
    sheet = Image.new("RGB", (max(row.width for row in rows), sum(row.height for row in rows)), BACKGROUND)
    for index, row in enumerate(rows):
        sheet.paste(row, (0, index * rows[0].height))
    return sheet


def candidate_sheet(shards: Sequence[str], keys: Iterable[str] = (), limit: int = 12, side: int = 224,
                    candidates: int = 4) -> Image.Image:
    """A sheet of up to ``limit`` candidate samples (those in ``keys`` if given), in shard order."""
    return _stack([_row(sample, side, candidates) for sample in _samples(shards, keys, limit)])


def _pbe_tiles(sample: dict) -> list[tuple[Image.Image, str]]:
    meta = json.loads(sample[Field.JSON])
    return [(_open(sample[Field.REF]).convert("RGB"), f"ref {meta['box']['label']}"),
            (_tinted(sample), f"mask: {meta['mask']['kind']}"),
            (_open(sample[Field.SRC]).convert("RGB"), meta["key"][-10:])]


def _mimic_tiles(sample: dict) -> list[tuple[Image.Image, str]]:
    meta = json.loads(sample[Field.JSON])
    frames = meta["frames"]  # a still's are its one frame (format 3): the branch says which
    where = (f"f{frames['source']['index']}->{frames['reference']['index']} ({frames['gap_s']:.1f}s)"
             if meta["branch"] == "video" else "augmented copy")
    return [(_tinted(sample), f"{meta['branch']} ssim {meta['ssim']:.2f} n{meta['grid']['cells']}"),
            (_open(sample[Field.REF]).convert("RGB"), f"{where} {meta['matches']['inliers']} matches")]


def _pairs_tiles(sample: dict) -> list[tuple[Image.Image, str]]:
    """The four pictures, cropped alike around the object (with context): a small object stays visible."""
    meta = json.loads(sample[Field.JSON])
    candidate = meta["candidate"]
    src = _open(sample[Field.SRC]).convert("RGB")
    crop = _crop_box(meta["detection"]["box"], src.width, src.height, margin=1.0, min_side=96)
    tiles = [(src, f"{meta['detection']['label']} {meta['key'][-10:]}"),
             (_tinted(sample, Field.REGION), "region (mask)"),
             (_open(sample[Field.REMOVED]).convert("RGB"),
              f"removed c{candidate['index']} score {candidate['combined_score']:.2f}"),
             (_open(sample[Field.PASTED]).convert("RGB"), f"pasted ({meta['selected_by']})")]
    return [(image.crop(crop), caption) for image, caption in tiles]


def _tile_sheet(pairs: Sequence[list[tuple[Image.Image, str]]], side: int, per_row: int) -> Image.Image:
    """Pairs of tiles, ``per_row`` pairs to a row, captioned."""
    width = len(pairs[0])
    rows = []
    for start in range(0, len(pairs), per_row):
        tiles = [tile for pair in pairs[start:start + per_row] for tile in pair]
        row = Image.new("RGB", (side * width * per_row + 8 * (per_row - 1), side + CAPTION_PX), BACKGROUND)
        draw = ImageDraw.Draw(row)
        for column, (image, caption) in enumerate(tiles):
            x = column * side + (column // width) * 8
            row.paste(_thumbnail(image, side), (x, 0))
            draw.text((x + 3, side + 1), caption, fill=TEXT)
        rows.append(row)
    return _stack(rows)


def pbe_sheet(shards: Sequence[str], keys: Iterable[str] = (), limit: int = 12, side: int = 224,
              per_row: int = 2) -> Image.Image:
    """A sheet of up to ``limit`` self-reference samples: reference | target with mask | target."""
    return _tile_sheet([_pbe_tiles(sample) for sample in _samples(shards, keys, limit)], side, per_row)


def mimic_sheet(shards: Sequence[str], keys: Iterable[str] = (), limit: int = 12, side: int = 224,
                per_row: int = 3) -> Image.Image:
    """A sheet of up to ``limit`` frame pairs: the source with its grid mask tinted | the reference."""
    return _tile_sheet([_mimic_tiles(sample) for sample in _samples(shards, keys, limit)], side, per_row)


def pairs_sheet(shards: Sequence[str], keys: Iterable[str] = (), limit: int = 12, side: int = 224,
                per_row: int = 1) -> Image.Image:
    """Up to ``limit`` built pairs around their object: source | region tinted on the source | removed | pasted."""
    return _tile_sheet([_pairs_tiles(sample) for sample in _samples(shards, keys, limit)], side, per_row)


#: Sheet of each sample kind (the ``kind`` of its json).
SHEETS = {"candidates": candidate_sheet, "pbe": pbe_sheet, "mimic": mimic_sheet, "pairs": pairs_sheet}


def sample_kind(shards: Sequence[str]) -> str:
    """The ``kind`` of the first intact sample of ``shards`` (the sheet itself reports damaged ones)."""
    for sample, mismatch in _checked(shards):
        if not mismatch:
            return json.loads(sample[Field.JSON])["kind"]
    raise ValueError(f"no intact sample found in {len(shards)} shards")


def _crop_box(box: Sequence[float], width: int, height: int, margin: float = 0.3, min_side: int = 64) -> tuple[int, ...]:
    """The object's box grown by ``margin`` of its size on each side (at least ``min_side``), inside the image."""
    x0, y0, x1, y1 = box
    grow_x = max((x1 - x0) * margin, (min_side - (x1 - x0)) / 2, 0)
    grow_y = max((y1 - y0) * margin, (min_side - (y1 - y0)) / 2, 0)
    return (max(0, int(x0 - grow_x)), max(0, int(y0 - grow_y)),
            min(width, int(np.ceil(x1 + grow_x))), min(height, int(np.ceil(y1 + grow_y))))


def candidate_thumbnail(sample: dict, candidate_index: int, height: int = 160, quality: int = 85) -> bytes:
    """JPEG of one candidate around its object: the source with its mask | the removal, side by side."""
    meta = json.loads(sample[Field.JSON])
    source = _source_with_mask(sample, meta)
    removed = _open(sample[removed_field(candidate_index)]).convert("RGB")
    crop = _crop_box(meta["detection"]["box"], source.width, source.height)
    tiles = [image.crop(crop) for image in (source, removed)]
    width = max(1, round(tiles[0].width * height / tiles[0].height))
    picture = Image.new("RGB", (2 * width + 4, height), BACKGROUND)
    for column, tile in enumerate(tiles):
        picture.paste(tile.resize((width, height), Image.Resampling.LANCZOS), (column * (width + 4), 0))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
