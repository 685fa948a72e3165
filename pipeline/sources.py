"""Reading sources, shared by every job: inputs -> decoded, normalised, unique source images.

    read (files | tars | annotation files) -> decode/normalise -> dedup

Besides the images it gives every record it did not keep (rejections, dead letters) and
the counts a job's ledger and funnel start from: ``inputs`` as the readers first saw
them, then ``read``, ``decoded`` and ``unique``.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

import apache_beam as beam

from pipeline.finalize import FUNNEL
from pipeline.ledger import count_as, count_rejections
from schemas import SourceImage
from transforms.dedup import DeduplicateByContent
from transforms.io.decode import DecodeConfig
from transforms.io.readers import ReadAnnotated, ReaderOutputs, ReadImageFiles, ReadShards
from transforms.normalize import NormalizeImages

#: The funnel steps :class:`ReadSources` counts, in order.
SOURCE_FUNNEL_STEPS = ("inputs", "read", "decoded", "unique")


@dataclasses.dataclass(frozen=True)
class AnnotationSource:
    """One annotation file and where its images live."""

    path: str
    images_root: str
    annotation_format: str = "auto"
    class_descriptions: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class SourcesConfig:
    """Where the inputs are and how they are decoded."""

    images: tuple[str, ...] = ()
    shards: tuple[str, ...] = ()
    annotations: tuple[AnnotationSource, ...] = ()
    decode: DecodeConfig = DecodeConfig()

    def __post_init__(self) -> None:
        if not (self.images or self.shards or self.annotations):
            raise ValueError("at least one input is needed: image files, tar shards or an annotation file")

    @property
    def inputs(self) -> tuple[str, ...]:
        """Every input pattern, for lineage."""
        return self.images + self.shards + tuple(source.path for source in self.annotations)


class SourceOutputs(NamedTuple):
    """``rejected`` and ``dead_letters`` are inputs the ledger counts; ``boxes_rejected``
    are annotation boxes dropped from images that were kept (recorded, not ledger items)."""

    sources: beam.PCollection
    rejected: beam.PCollection
    boxes_rejected: beam.PCollection
    dead_letters: beam.PCollection
    counts: beam.PCollection


def _readers(p: beam.Pipeline, config: SourcesConfig) -> list[ReaderOutputs]:
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


def flatten(label: str, pcolls) -> beam.PCollection:
    """Flatten PCollections (a label is required: jobs flatten many times)."""
    return tuple(pcolls) | label >> beam.Flatten()


def _note_counts(image: SourceImage):
    for note in image.notes or ("none",):
        yield ("notes", str(note)), 1


class ReadSources(beam.PTransform):
    """All inputs of a job -> unique, decoded source images, plus what was not kept and the counts."""

    def __init__(self, config: SourcesConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, p: beam.Pipeline) -> SourceOutputs:
        readers = _readers(p, self._config)
        raw = flatten("AllRecords", (reader.records for reader in readers))
        decoded = raw | "Normalize" >> NormalizeImages(self._config.decode)
        deduplicated = decoded.main | "Deduplicate" >> DeduplicateByContent()
        rejected = flatten("AllRejected", [*(reader.rejected for reader in readers), decoded.rejected,
                                           deduplicated.rejected])
        boxes_rejected = flatten("AllBoxRejected", [reader.box_rejected for reader in readers
                                                    if reader.box_rejected is not None] or [p | "NoBoxRejected" >> beam.Create([])])
        dead_letters = flatten("AllDeadLetters", [*(reader.dead_letters for reader in readers), decoded.dead_letters])
        inputs = flatten("AllInputs", (reader.inputs for reader in readers))
        counts = flatten("SourceCounts", [
            inputs,
            inputs | "FunnelInputs" >> beam.Map(lambda counted: ((FUNNEL, "inputs"), counted[1])),
            count_as(raw, "FunnelRead", FUNNEL, lambda _: "read"),
            count_as(decoded.main, "FunnelDecoded", FUNNEL, lambda _: "decoded"),
            count_as(deduplicated.unique, "FunnelUnique", FUNNEL, lambda _: "unique"),
            decoded.main | "CountNotes" >> beam.FlatMap(_note_counts),
            count_rejections(boxes_rejected, "CountBoxRejected", counter="boxes_rejected"),
        ])
        return SourceOutputs(deduplicated.unique, rejected, boxes_rejected, dead_letters, counts)
