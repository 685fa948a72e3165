"""Reading sources, shared by every job: inputs -> decoded, normalised, unique source images.

    read (files | tars | annotation files) -> decode/normalise -> dedup

Its stages register what they did not keep (rejections, dead letters) and the inputs of
the run's ledger with the run's accounts; it adds the funnel steps ``read``, ``decoded``
and ``unique`` (``inputs`` is the ledger's) and counts the notes decoding left.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam

from pipeline.finalize import FUNNEL
from schemas import SourceImage
from transforms.dedup import DeduplicateByContent
from transforms.io.decode import DecodeConfig
from transforms.io.readers import ReadAnnotated, ReadImageFiles, ReadShards
from transforms.ledger import RunAccounts, count_as
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


def _readers(p: beam.Pipeline, config: SourcesConfig) -> list[beam.PCollection]:
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
    """All inputs of a job -> unique, decoded source images."""

    def __init__(self, config: SourcesConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, p: beam.Pipeline) -> beam.PCollection:
        raw = flatten("AllRecords", _readers(p, self._config))
        decoded = raw | "Normalize" >> NormalizeImages(self._config.decode)
        unique = decoded | "Deduplicate" >> DeduplicateByContent()
        RunAccounts.of(p).add_counts(flatten("SourceCounts", [
            count_as(raw, "FunnelRead", FUNNEL, lambda _: "read"),
            count_as(decoded, "FunnelDecoded", FUNNEL, lambda _: "decoded"),
            count_as(unique, "FunnelUnique", FUNNEL, lambda _: "unique"),
            decoded | "CountNotes" >> beam.FlatMap(_note_counts),
        ]))
        return unique
