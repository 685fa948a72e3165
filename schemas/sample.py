"""The WebDataset sample layout: how records become tar members and back.

A sample is a dict ``{"__key__": key, "<field>.<ext>": bytes, ...}`` exactly as
``webdataset.TarWriter`` writes it and ``webdataset.WebDataset`` reads it. The field
names below are the public format (docs/FORMAT.md); readers without this package can
rely on them.
"""
from __future__ import annotations

import json
from typing import Any, Mapping

import pyarrow as pa

from schemas.reasons import Note
from schemas.records import Annotation, SourceImage

#: Bumped when a field changes meaning; readers check it in the ``json`` member.
FORMAT_VERSION = 1


class Field:
    """Member names (after the key and its dot) of every sample kind we write."""

    SRC = "src.jpg"
    MASK = "mask.png"
    REMOVED = "removed.png"
    OBJECT = "object.png"
    PASTED = "pasted.jpg"
    REF = "ref.jpg"
    JSON = "json"


#: Per-sample metadata of source shards (``{shard}.parquet`` beside each tar).
SOURCE_METADATA_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("origin", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("notes", pa.list_(pa.string())),
        pa.field("labels", pa.list_(pa.string())),
    ]
)


def _source_fields(image: SourceImage) -> dict[str, Any]:
    """What the ``json`` member and the Parquet row of a source sample both record."""
    return {
        "key": image.key,
        "sha256": image.sha256,
        "uri": image.uri,
        "origin": image.origin,
        "width": image.width,
        "height": image.height,
        "notes": [note.value for note in image.notes],
    }


def source_metadata_row(image: SourceImage) -> dict[str, Any]:
    """The Parquet row of a source sample (``shard`` is added by the writer)."""
    return {**_source_fields(image), "labels": [annotation.label for annotation in image.annotations]}


def _json_bytes(data: Mapping[str, Any]) -> bytes:
    # Sorted keys and fixed separators: the same record always gives the same bytes,
    # which is what makes shards byte-identical across re-runs.
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def source_metadata(image: SourceImage, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The ``json`` member of a source sample."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": "source",
        **_source_fields(image),
        "annotations": [annotation.to_json() for annotation in image.annotations],
        "provenance": dict(provenance),
    }


def source_to_sample(image: SourceImage, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """A source image as a WebDataset sample: ``src.jpg`` + ``json``."""
    return {
        "__key__": image.key,
        Field.SRC: image.jpeg,
        Field.JSON: _json_bytes(source_metadata(image, provenance)),
    }


def source_from_sample(sample: Mapping[str, Any]) -> SourceImage:
    """Rebuild a source image from a sample written by :func:`source_to_sample`."""
    meta = json.loads(sample[Field.JSON])
    if meta.get("kind") != "source":
        raise ValueError(f"sample {sample.get('__key__')!r} is not a source sample (kind={meta.get('kind')!r})")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"sample format {meta['format_version']} is newer than this reader ({FORMAT_VERSION})")
    return SourceImage(
        key=meta["key"],
        sha256=meta["sha256"],
        uri=meta["uri"],
        width=int(meta["width"]),
        height=int(meta["height"]),
        jpeg=bytes(sample[Field.SRC]),
        notes=tuple(Note(n) for n in meta["notes"]),
        annotations=tuple(Annotation.from_json(a) for a in meta["annotations"]),
        origin=meta.get("origin", "file"),
    )
