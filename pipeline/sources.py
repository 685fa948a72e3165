"""Reading sources, shared by every job: inputs -> decoded, normalised, unique source images.

    read (files | tars | annotation files) -> decode/normalise -> dedup

Its stages register what they did not keep (rejections, dead letters) and the inputs of
the run's ledger with the run's accounts; it adds the funnel steps ``inputs`` (what the
readers found), ``read``, ``decoded`` and ``unique``, and counts the notes decoding left.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam

from schemas import SourceImage
from transforms.dedup import DeduplicateByContent
from transforms.io.decode import DecodeConfig
from transforms.io.readers import ReadAnnotated, ReadImageFiles, ReadShards
from transforms.ledger import MAIN_LEDGER, RunAccounts, count_funnel
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
    #: Where deduplication spools image bytes while it groups digests (the run's output); None: it groups the images.
    spool_dir: Optional[str] = None

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
        accounts = RunAccounts.of(p)
        rejected_before, dead_before = len(accounts.rejections(MAIN_LEDGER)), len(accounts.dead_letters(MAIN_LEDGER))
        raw = flatten("AllRecords", _readers(p, self._config))
        # What the readers found, kept or not: the images among a job's inputs (a video job has others).
        found = [raw, *accounts.rejections(MAIN_LEDGER)[rejected_before:], *accounts.dead_letters(MAIN_LEDGER)[dead_before:]]
        decoded = raw | "Normalize" >> NormalizeImages(self._config.decode)
        unique = decoded | "Deduplicate" >> DeduplicateByContent(self._config.spool_dir)
        accounts.add_counts(flatten("SourceCounts", [
            # Counted one by one, then flattened: a Flatten of the records themselves would hold every input's bytes.
            *(count_funnel(pcoll, f"FunnelInputs{index}", "inputs") for index, pcoll in enumerate(found)),
            count_funnel(raw, "FunnelRead", "read"),
            count_funnel(decoded, "FunnelDecoded", "decoded"),
            count_funnel(unique, "FunnelUnique", "unique"),
            decoded | "CountNotes" >> beam.FlatMap(_note_counts),
        ]))
        return unique
