"""The ingest graph: raw images, tars or annotated datasets -> normalised source shards.

    read (files | tars | annotation files) -> decode/normalise -> dedup -> encode -> write shards
                          \\ rejections, dead letters, counts -> finalize (manifest, stats, ledger)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import apache_beam as beam

from pipeline.finalize import FUNNEL, FinalizeInputs, FinalizeRun, RunInfo
from pipeline.ledger import WRITTEN, Tally, count_as, count_dead_letters, count_rejections
from schemas import SourceImage
from schemas.sample import source_metadata_row, source_to_sample
from transforms.dedup import DeduplicateByContent
from transforms.encode import EncodeSamples
from transforms.io.decode import DecodeConfig
from transforms.io.readers import ReadAnnotated, ReaderOutputs, ReadImageFiles, ReadShards
from transforms.io.shards import EncodedSample, ShardWriterConfig, WriteShards
from transforms.normalize import NormalizeImages

FUNNEL_STEPS = ("inputs", "read", "decoded", "unique", "written")


@dataclasses.dataclass(frozen=True)
class AnnotationSource:
    """One annotation file and where its images live."""

    path: str
    images_root: str
    annotation_format: str = "auto"
    class_descriptions: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Everything the ingest graph needs, already validated by the stage configs."""

    images: tuple[str, ...]
    shards: tuple[str, ...]
    annotations: tuple[AnnotationSource, ...]
    decode: DecodeConfig
    writer: ShardWriterConfig
    run: RunInfo

    def __post_init__(self) -> None:
        if not (self.images or self.shards or self.annotations):
            raise ValueError("ingest needs at least one input: image files, tar shards or an annotation file")


class _SourceSampleEncoder:
    """SourceImage -> EncodedSample, stamping each sample's provenance."""

    def __init__(self, provenance: Mapping[str, Any]) -> None:
        self._provenance = dict(provenance)

    def __call__(self, image: SourceImage) -> EncodedSample:
        sample = source_to_sample(image, self._provenance)
        fields = {name: value for name, value in sample.items() if name != "__key__"}
        return EncodedSample(key=image.key, fields=fields, metadata=source_metadata_row(image))


def _readers(p: beam.Pipeline, config: IngestConfig) -> list[ReaderOutputs]:
    readers = []
    if config.images:
        readers.append(p | "ReadImageFiles" >> ReadImageFiles(config.images))
    if config.shards:
        readers.append(p | "ReadShards" >> ReadShards(config.shards))
    for index, source in enumerate(config.annotations):
        readers.append(
            p
            | f"ReadAnnotated{index}"
            >> ReadAnnotated(source.path, source.images_root, source.annotation_format, source.class_descriptions)
        )
    return readers


def _flatten(label: str, pcolls) -> beam.PCollection:
    return tuple(pcolls) | label >> beam.Flatten()


def _note_counts(image: SourceImage):
    for note in image.notes or ("none",):
        yield ("notes", str(note)), 1


def build_ingest(p: beam.Pipeline, config: IngestConfig) -> beam.PCollection:
    """Add the ingest graph to ``p``; returns the PCollection holding the run's stats dict."""
    readers = _readers(p, config)
    raw = _flatten("AllRecords", (reader.records for reader in readers))
    decoded = raw | "Normalize" >> NormalizeImages(config.decode)
    deduplicated = decoded.main | "Deduplicate" >> DeduplicateByContent()
    provenance = {"job": config.run.job, "code_version": config.run.code_version, "dataset": config.run.dataset_name}
    encoded = deduplicated.unique | "EncodeSamples" >> EncodeSamples(_SourceSampleEncoder(provenance))
    shards = encoded.main | "WriteShards" >> WriteShards(config.writer)

    rejected = _flatten(
        "AllRejected",
        [*(reader.rejected for reader in readers), decoded.rejected, deduplicated.rejected],
    )
    box_rejected = [reader.box_rejected for reader in readers if reader.box_rejected is not None]
    dead_letters = _flatten(
        "AllDeadLetters", [*(reader.dead_letters for reader in readers), decoded.dead_letters, encoded.dead_letters]
    )
    counts = [
        *(reader.inputs for reader in readers),
        count_rejections(rejected, "CountRejected"),
        count_dead_letters(dead_letters, "CountDeadLetters"),
        shards | "CountWritten" >> beam.Map(lambda shard: ((WRITTEN, ""), shard.nsamples)),
        decoded.main | "CountNotes" >> beam.FlatMap(_note_counts),
        _flatten("AllInputs", (reader.inputs for reader in readers))
        | "FunnelInputs" >> beam.Map(lambda counted: ((FUNNEL, "inputs"), counted[1])),
        count_as(raw, "FunnelRead", FUNNEL, lambda _: "read"),
        count_as(decoded.main, "FunnelDecoded", FUNNEL, lambda _: "decoded"),
        count_as(deduplicated.unique, "FunnelUnique", FUNNEL, lambda _: "unique"),
        shards | "FunnelWritten" >> beam.Map(lambda shard: ((FUNNEL, "written"), shard.nsamples)),
    ]
    if box_rejected:
        all_box_rejected = _flatten("AllBoxRejected", box_rejected)
        counts.append(count_rejections(all_box_rejected, "CountBoxRejected", counter="boxes_rejected"))
        rejected = (rejected, all_box_rejected) | "RejectedWithBoxes" >> beam.Flatten()
    tally = _flatten("AllCounts", counts) | "Tally" >> Tally()
    return FinalizeInputs(shards, tally, rejected, dead_letters) | "Finalize" >> FinalizeRun(config.run, config.writer)
