"""The WebDataset sample layout: how records become tar members and back.

A sample is a dict ``{"__key__": key, "<field>.<ext>": bytes, ...}`` exactly as
``webdataset.TarWriter`` writes it and ``webdataset.WebDataset`` reads it. The field
names below are the public format (docs/FORMAT.md); readers without this package can
rely on them.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Mapping, Optional

import pyarrow as pa

from schemas.reasons import Note
from schemas.records import Annotation, Box, CandidateScores, ObjectCandidates, SourceImage

#: Bumped when a field changes meaning; readers check it in the ``json`` member. 2: ``notes`` is a map of
#: every note to a bool, augmentation params are JSON text, a pair's ``review`` is always an object (one
#: schema from the first sample on, so readers that infer types from the first samples read every sample).
#: 3: a source's ``annotations`` and an augmentation's ``applied`` are JSON text (a list that may be empty
#: has no element type), and a frame pair describes itself in both branches' terms, never ``null``.
FORMAT_VERSION = 3


class Field:
    """Member names (after the key and its dot) of every sample kind we write."""

    SRC = "src.jpg"
    MASK = "mask.png"
    REGION = "region.png"
    REMOVED = "removed.png"
    OBJECT = "object.png"
    PASTED = "pasted.png"
    REF = "ref.jpg"
    JSON = "json"


#: Where a sample lies and what it held, recorded by the shard writer in every metadata row
#: (docs/FORMAT.md, "Locating and verifying one sample"): its tar, the byte range of its
#: members in that tar (headers and padding included, so a range read is a valid tar), and
#: :func:`sample_digest` of its members at write time.
LOCATION_COLUMNS = (
    pa.field("shard", pa.string(), nullable=False),
    pa.field("tar_offset", pa.int64(), nullable=False),
    pa.field("tar_length", pa.int64(), nullable=False),
    pa.field("sample_sha256", pa.string(), nullable=False),
)


def sample_digest(sample: Mapping[str, Any]) -> str:
    """The ``sample_sha256`` of a sample dict as webdataset reads it (undecoded bytes).

    sha256 over its members in field-name order, each as the UTF-8 field name, a NUL byte,
    its length as 8 bytes big-endian, then its bytes; ``__key__`` and the other ``__``
    entries readers add are not members. A reader recomputes it to verify a sample.
    """
    digest = hashlib.sha256()
    for name in sorted(name for name in sample if not name.startswith("__")):
        value = sample[name]
        digest.update(name.encode("utf-8") + b"\0" + len(value).to_bytes(8, "big"))
        digest.update(value)
    return digest.hexdigest()


#: Per-sample metadata of source shards (``{shard}.parquet`` beside each tar).
SOURCE_METADATA_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        *LOCATION_COLUMNS,
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


def note_flags(notes: Any) -> dict[str, bool]:
    """Every note -> whether it applies: the ``notes`` of a ``json`` member (a list in format 1).

    A map with every key, not a list: an empty list has no element type, so a reader that
    infers types from the first samples (Hugging Face ``datasets``) fails on a later note.
    """
    present = {Note(note) for note in notes} if not isinstance(notes, Mapping) else {
        Note(note) for note, applies in notes.items() if applies}
    return {note.value: note in present for note in Note}


def _source_json(image: SourceImage) -> dict[str, Any]:
    return {**_source_fields(image), "notes": note_flags(image.notes)}


def _conformed_source(source: Mapping[str, Any]) -> dict[str, Any]:
    """A ``source`` object read from a shard of any format version, in this version's schema."""
    return {**source, "notes": note_flags(source["notes"])}


def _json_text(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def replay_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """An augmentation record (``transforms.augment``) as written in a ``json`` member.

    ``applied`` becomes JSON text of the list of ``{"name", "params"}`` (the params left out,
    like elastic displacement maps, ``null``): every transform has params of its own, so as
    objects their keys would depend on which transforms the first samples drew, and a list
    of none applied has no element type.
    """
    return {**record, "applied": _json_text([
        {"name": step["name"], "params": {**step["params"], **{k: None for k in step.get("omitted", ())}}}
        for step in record["applied"]])}


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
        **_source_json(image),
        # JSON text: the list is empty for most images, and a box's mask is RLE text or polygons, or absent.
        "annotations": _json_text([annotation.to_json() for annotation in image.annotations]),
        "provenance": dict(provenance),
    }


def source_to_sample(image: SourceImage, provenance: Mapping[str, Any]) -> dict[str, Any]:
    """A source image as a WebDataset sample: ``src.jpg`` + ``json``."""
    return {
        "__key__": image.key,
        Field.SRC: image.jpeg,
        Field.JSON: _json_bytes(source_metadata(image, provenance)),
    }


def source_annotations(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The annotations of a source sample's ``json`` member (JSON text since format 3, a list before)."""
    annotations = meta["annotations"]
    return json.loads(annotations) if isinstance(annotations, str) else list(annotations)


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
        notes=tuple(Note(note) for note, applies in note_flags(meta["notes"]).items() if applies),
        annotations=tuple(Annotation.from_json(a) for a in source_annotations(meta)),
        origin=meta.get("origin", "file"),
    )


# --------------------------------------------------------------------------- candidate shards


def removed_field(candidate_index: int) -> str:
    """Member name of removal candidate ``candidate_index`` in a candidate sample."""
    return f"removed_{candidate_index:02d}.png"


def region_field(candidate_index: int) -> str:
    """Member name of the region candidate ``candidate_index`` repainted (each candidate grows the mask its own way)."""
    return f"region_{candidate_index:02d}.png"


#: The scores of every candidate, in the order of ``CandidateScores``' fields.
SCORE_NAMES = tuple(field.name for field in dataclasses.fields(CandidateScores))

#: Per-object metadata of candidate shards: one row per object, one list entry per candidate.
#: The leading columns of every per-object Parquet (candidate and pair shards).
_OBJECT_COLUMNS = (
    pa.field("key", pa.string(), nullable=False),
    *LOCATION_COLUMNS,
    pa.field("source_key", pa.string(), nullable=False),
    pa.field("uri", pa.string()),
    pa.field("label", pa.string()),
    pa.field("detection_score", pa.float64()),
    pa.field("area_fraction", pa.float64()),
)

CANDIDATE_METADATA_SCHEMA = pa.schema(
    [
        *_OBJECT_COLUMNS,
        pa.field("predicted_iou", pa.float64()),
        pa.field("num_candidates", pa.int32()),
        pa.field("seeds", pa.list_(pa.int64())),
        *(pa.field(name, pa.list_(pa.float64())) for name in SCORE_NAMES),
    ]
)


@dataclasses.dataclass(frozen=True)
class ObjectCutout:
    """The object's RGBA cut-out (``object.png``), where it sits in the source, in pixels, and its soft edge.

    ``area_px`` is the outline's area; ``matte_px`` the half-width of the alpha ramp across it.
    """

    png: bytes
    box: tuple[int, int, int, int]
    area_px: int
    matte_px: int


def candidate_metadata(record: ObjectCandidates, cutout: ObjectCutout, provenance: Mapping[str, Any],
                       models: Mapping[str, str]) -> dict[str, Any]:
    """The ``json`` member of a candidate sample."""
    source, obj = record.source, record.mask
    detection = obj.detection
    return {
        "format_version": FORMAT_VERSION,
        "kind": "candidates",
        "key": obj.key,
        "source": _source_json(source),
        "object_index": obj.object_index,
        "detection": {"label": detection.label, "class_id": detection.class_id, "score": detection.score,
                      "box": detection.box.as_list(), "detector": detection.detector},
        "mask": {"predicted_iou": obj.predicted_iou, "segmenter": obj.segmenter, "area_px": cutout.area_px,
                 "grown": obj.object_png is not None},
        "object": {"box": list(cutout.box), "matte_px": cutout.matte_px},
        "candidates": [
            {"index": c.candidate_index, "key": c.key, "field": removed_field(c.candidate_index),
             "region": region_field(c.candidate_index), "seed": c.seed, "remover": c.remover,
             "scores": c.scores.to_json()}
            for c in record.candidates
        ],
        "models": dict(models),
        "provenance": dict(provenance),
    }


def candidate_metadata_row(record: ObjectCandidates, cutout: ObjectCutout) -> dict[str, Any]:
    """The Parquet row of a candidate sample (``shard`` is added by the writer)."""
    source, obj = record.source, record.mask
    return {
        "key": obj.key,
        "source_key": source.key,
        "uri": source.uri,
        "label": obj.detection.label,
        "detection_score": obj.detection.score,
        "area_fraction": cutout.area_px / (source.width * source.height),
        "predicted_iou": obj.predicted_iou,
        "num_candidates": len(record.candidates),
        "seeds": [c.seed for c in record.candidates],
        **{name: [getattr(c.scores, name) for c in record.candidates] for name in SCORE_NAMES},
    }


def candidate_fields(record: ObjectCandidates, cutout: ObjectCutout, provenance: Mapping[str, Any],
                     models: Mapping[str, str]) -> dict[str, bytes]:
    """The members of a candidate sample: source, removal mask, cut-out, every candidate and its region, json."""
    unrecorded = [c.key for c in record.candidates if c.region_png is None]
    if unrecorded:
        raise ValueError(f"candidates {unrecorded} have no region")
    return {
        Field.SRC: record.source.jpeg,
        Field.MASK: record.mask.mask_png,
        Field.OBJECT: cutout.png,
        **{removed_field(c.candidate_index): c.removed_png for c in record.candidates},
        **{region_field(c.candidate_index): c.region_png for c in record.candidates},
        Field.JSON: _json_bytes(candidate_metadata(record, cutout, provenance, models)),
    }


# --------------------------------------------------------------------------- reading candidate shards


@dataclasses.dataclass(frozen=True, eq=False)
class CandidateSample:
    """A candidate sample read back from its shard: the parsed ``json`` and the member bytes."""

    key: str
    uri: str
    meta: Mapping[str, Any]
    fields: Mapping[str, bytes]

    @property
    def candidates(self) -> list[Mapping[str, Any]]:
        return list(self.meta["candidates"])

    def candidate(self, index: int) -> Mapping[str, Any]:
        for candidate in self.meta["candidates"]:
            if candidate["index"] == index:
                return candidate
        raise KeyError(f"{self.key} has no candidate {index}")

    def removed_png(self, index: int) -> bytes:
        return self.fields[self.candidate(index)["field"]]

    def region_png(self, index: int) -> Optional[bytes]:
        """The region candidate ``index`` repainted; ``None`` in shards written before regions were recorded."""
        field = self.candidate(index).get("region")
        return None if field is None else self.fields[field]

    def keeping_only(self, index: int) -> "CandidateSample":
        """The same sample without the other candidates' images (they are ~1 MB each and no longer needed)."""
        candidate = self.candidate(index)
        members = {name for c in self.meta["candidates"] for name in (c["field"], c.get("region"))}
        dropped = members - {candidate["field"], candidate.get("region")}
        return dataclasses.replace(self, fields={name: data for name, data in self.fields.items() if name not in dropped})


_CANDIDATE_MEMBERS = (Field.SRC, Field.MASK, Field.OBJECT, Field.JSON)


def candidate_from_sample(key: str, fields: Mapping[str, bytes], uri: str) -> CandidateSample:
    """Parse a sample of a candidate shard; raises ``ValueError`` saying what is missing or wrong."""
    missing = [name for name in _CANDIDATE_MEMBERS if name not in fields]
    if missing:
        raise ValueError(f"missing members {missing} (has {sorted(fields)})")
    meta = json.loads(fields[Field.JSON])
    if meta.get("kind") != "candidates":
        raise ValueError(f"sample kind is {meta.get('kind')!r}, not 'candidates'")
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"sample format {meta['format_version']} is newer than this reader ({FORMAT_VERSION})")
    if meta.get("key") != key:
        raise ValueError(f"json key {meta.get('key')!r} does not match the sample key {key!r}")
    if not meta.get("candidates"):
        raise ValueError("the sample has no candidates")
    absent = [name for c in meta["candidates"] for name in (c["field"], c.get("region"))
              if name is not None and name not in fields]
    if absent:
        raise ValueError(f"candidate images {absent} are missing")
    return CandidateSample(key=key, uri=uri, meta=meta, fields=dict(fields))


# --------------------------------------------------------------------------- pair shards

#: The two training pairs every pair sample holds, as (input, mask) -> target member names. Both
#: masks are the region the chosen candidate repainted: input and target differ nowhere else.
PAIRS = {
    "removal": {"input": Field.SRC, "mask": Field.REGION, "target": Field.REMOVED},
    "insertion": {"input": Field.PASTED, "mask": Field.REGION, "target": Field.SRC},
}

#: Per-pair metadata of pair shards: one row per object, the chosen candidate's scores.
PAIR_METADATA_SCHEMA = pa.schema(
    [
        *_OBJECT_COLUMNS,
        pa.field("candidate_index", pa.int32()),
        pa.field("seed", pa.int64()),
        pa.field("combined_score", pa.float64()),
        pa.field("selected_by", pa.string()),
        pa.field("reviewer", pa.string()),
        *(pa.field(name, pa.float64()) for name in SCORE_NAMES),
    ]
)


#: A pair's ``review`` when no decision chose it: the decision's fields, empty (``selected_by`` says
#: whether a review chose the pair).
NO_REVIEW = {"key": "", "decision": "", "reviewer": "", "time": "", "note": ""}


@dataclasses.dataclass(frozen=True)
class PairChoice:
    """Which candidate became the pair, and why (thresholds or a review decision)."""

    candidate_index: int
    combined_score: float
    selected_by: str
    review: Optional[Mapping[str, Any]] = None


def pair_metadata(sample: CandidateSample, choice: PairChoice, selection: Mapping[str, Any],
                  provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The ``json`` member of a pair sample: the candidate sample's facts plus how the pair was chosen.

    ``selection`` is what every pair of a build shares (thresholds, ranking, re-paste
    settings); ``provenance`` is the build's, ``candidates_provenance`` the bootstrap run's.
    """
    meta = sample.meta
    return {
        "format_version": FORMAT_VERSION,
        "kind": "pairs",
        "key": sample.key,
        "source": _conformed_source(meta["source"]),
        "object_index": meta["object_index"],
        "detection": meta["detection"],
        "mask": meta["mask"],
        "object": meta["object"],
        "candidate": {**sample.candidate(choice.candidate_index), "combined_score": choice.combined_score},
        "selected_by": choice.selected_by,
        "review": {**NO_REVIEW, **(choice.review or {})},
        "pairs": PAIRS,
        "selection": dict(selection),
        "models": meta["models"],
        "provenance": dict(provenance),
        "candidates_provenance": meta["provenance"],
    }


def pair_metadata_row(sample: CandidateSample, choice: PairChoice) -> dict[str, Any]:
    """The Parquet row of a pair sample (``shard`` is added by the writer)."""
    meta = sample.meta
    source = meta["source"]
    candidate = sample.candidate(choice.candidate_index)
    return {
        "key": sample.key,
        "source_key": source["key"],
        "uri": source["uri"],
        "label": meta["detection"]["label"],
        "detection_score": meta["detection"]["score"],
        "area_fraction": meta["mask"]["area_px"] / (source["width"] * source["height"]),
        "candidate_index": choice.candidate_index,
        "seed": candidate["seed"],
        "combined_score": choice.combined_score,
        "selected_by": choice.selected_by,
        "reviewer": (choice.review or {}).get("reviewer"),
        **{name: candidate["scores"].get(name) for name in SCORE_NAMES},
    }


def pair_fields(sample: CandidateSample, choice: PairChoice, pasted_png: bytes, region_png: bytes,
                selection: Mapping[str, Any], provenance: Mapping[str, Any]) -> dict[str, bytes]:
    """The members of a pair sample: both pairs' images and their mask (shared), the object mask, the cut-out, json."""
    return {
        Field.SRC: sample.fields[Field.SRC],
        Field.MASK: sample.fields[Field.MASK],
        Field.REGION: region_png,
        Field.REMOVED: sample.removed_png(choice.candidate_index),
        Field.PASTED: pasted_png,
        Field.OBJECT: sample.fields[Field.OBJECT],
        Field.JSON: _json_bytes(pair_metadata(sample, choice, selection, provenance)),
    }


# --------------------------------------------------------------------------- self-reference (Paint-by-Example) shards

#: Per-pair metadata of self-reference shards: one row per box.
PBE_METADATA_SCHEMA = pa.schema(
    [
        *_OBJECT_COLUMNS,
        pa.field("box_origin", pa.string()),
        pa.field("mask_kind", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("reference_key", pa.string()),
    ]
)


@dataclasses.dataclass(frozen=True)
class LabelledBox:
    """A box to make a pair from: its label, where it came from (an annotation format or a
    detector) and the detector's score, if any."""

    label: str
    box: Box
    origin: str
    score: Optional[float] = None

    def to_json(self) -> dict[str, Any]:
        return {"label": self.label, "box": self.box.as_list(), "origin": self.origin, "score": self.score}


def pbe_fields(source: SourceImage, key: str, box: LabelledBox, record: Mapping[str, Any], target_jpeg: bytes,
               mask_png: bytes, reference_jpeg: bytes, provenance: Mapping[str, Any],
               reference_key: Optional[str] = None) -> dict[str, bytes]:
    """The members of a self-reference sample: the square target crop, its mask, the reference, json.

    ``reference_key`` names the object whose crop is the reference when it is not this
    one (benchmark pairs take it from another image).
    """
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "pbe",
        "key": key,
        "source": _source_json(source),
        "box": box.to_json(),
        "reference_key": reference_key or key,
        **dict(record),
        "reference": replay_json(record["reference"]),
        "provenance": dict(provenance),
    }
    return {Field.SRC: target_jpeg, Field.MASK: mask_png, Field.REF: reference_jpeg, Field.JSON: _json_bytes(meta)}


def pbe_metadata_row(source: SourceImage, key: str, box: LabelledBox, record: Mapping[str, Any],
                     reference_key: Optional[str] = None) -> dict[str, Any]:
    """The Parquet row of a self-reference sample (``shard`` is added by the writer)."""
    return {
        "key": key,
        "source_key": source.key,
        "uri": source.uri,
        "label": box.label,
        "detection_score": box.score,
        "area_fraction": box.box.area / (source.width * source.height),
        "box_origin": box.origin,
        "mask_kind": record["mask"]["kind"],
        "seed": record["seed"],
        "reference_key": reference_key or key,
    }


# --------------------------------------------------------------------------- composites (known counterfactuals)

#: Per-composite metadata of composite shards: which background, which object, how large.
COMPOSITE_METADATA_SCHEMA = pa.schema(
    [
        *_OBJECT_COLUMNS,
        pa.field("object_key", pa.string()),
        pa.field("object_uri", pa.string()),
        pa.field("box", pa.list_(pa.int64())),
        pa.field("seed", pa.int64()),
    ]
)


def composite_fields(source: SourceImage, key: str, obj: Any, record: Mapping[str, Any], composite_jpeg: bytes,
                     matte_png: bytes, truth_png: bytes, provenance: Mapping[str, Any]) -> dict[str, bytes]:
    """The members of a composite sample: the composite, the pasted matte, the exact removal target, json.

    ``obj`` is the pasted cut-out (its ``key``, ``label``, ``source_key`` and ``uri``);
    ``source`` the background.
    """
    meta = {
        "format_version": FORMAT_VERSION,
        "kind": "composite",
        "key": key,
        "background": _source_json(source),
        "object": {"key": obj.key, "label": obj.label, "source_key": obj.source_key, "uri": obj.uri},
        **dict(record),
        "provenance": dict(provenance),
    }
    return {Field.SRC: composite_jpeg, Field.MASK: matte_png, Field.REMOVED: truth_png, Field.JSON: _json_bytes(meta)}


def composite_metadata_row(source: SourceImage, key: str, obj: Any, record: Mapping[str, Any]) -> dict[str, Any]:
    """The Parquet row of a composite sample (``shard`` is added by the writer)."""
    return {
        "key": key,
        "source_key": source.key,
        "uri": source.uri,
        "label": obj.label,
        "detection_score": None,
        "area_fraction": record["area_fraction"],
        "object_key": obj.key,
        "object_uri": obj.uri,
        "box": list(record["box"]),
        "seed": record["seed"],
    }


_COMPOSITE_MEMBERS = (Field.SRC, Field.MASK, Field.REMOVED, Field.JSON)


@dataclasses.dataclass(frozen=True)
class CompositeSample:
    """A composite sample as read back: its members and its parsed json."""

    key: str
    uri: str
    meta: Mapping[str, Any]
    fields: Mapping[str, bytes]


def composite_from_sample(key: str, fields: Mapping[str, bytes], uri: str) -> CompositeSample:
    """Parse a composite sample read from a shard; raises ``ValueError`` naming what is wrong."""
    missing = [name for name in _COMPOSITE_MEMBERS if name not in fields]
    if missing:
        raise ValueError(f"not a composite sample: no {', '.join(missing)}")
    meta = json.loads(fields[Field.JSON])
    if meta.get("kind") != "composite":
        raise ValueError(f"not a composite sample: kind {meta.get('kind')!r}")
    if meta.get("key") != key:
        raise ValueError(f"json key {meta.get('key')!r} does not match the sample key {key!r}")
    return CompositeSample(key=key, uri=uri, meta=meta, fields=dict(fields))


# --------------------------------------------------------------------------- frame pairs (MimicBrush)

#: Per-pair metadata of frame-pair shards.
MIMIC_METADATA_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        *LOCATION_COLUMNS,
        pa.field("source_key", pa.string(), nullable=False),
        pa.field("uri", pa.string()),
        pa.field("branch", pa.string()),
        pa.field("source_frame", pa.int32()),
        pa.field("reference_frame", pa.int32()),
        pa.field("gap_s", pa.float64()),
        pa.field("ssim", pa.float64()),
        pa.field("inliers", pa.int32()),
        pa.field("grid_cells", pa.int32()),
        pa.field("masked_cells", pa.int32()),
        pa.field("seed", pa.int64()),
    ]
)


#: What a frame pair records of each branch: every sample has every key, typed alike (``branch`` says
#: which facts were measured), so which branch the first samples came from does not decide the schema.
_MIMIC_BRANCH_KEYS = ("video", "frames", "image", "augmentation")


def mimic_fields(key: str, source_jpeg: bytes, reference_jpeg: bytes, mask_png: bytes,
                 meta: Mapping[str, Any]) -> dict[str, bytes]:
    """The members of a frame-pair sample: source (to be masked), reference, mask, json.

    ``meta`` holds the pair's facts in both branches' terms (``video``, ``frames``, ``image``,
    ``augmentation``: docs/FORMAT.md), SSIM, matches, the grid record and the seed.
    """
    missing = [name for name in _MIMIC_BRANCH_KEYS if meta.get(name) is None]
    if missing:
        raise ValueError(f"frame pair {key!r} lacks {missing}: every pair describes both branches")
    return {
        Field.SRC: source_jpeg,
        Field.REF: reference_jpeg,
        Field.MASK: mask_png,
        Field.JSON: _json_bytes({"format_version": FORMAT_VERSION, "kind": "mimic", "key": key, **meta,
                                 "augmentation": replay_json(meta["augmentation"])}),
    }
