"""Reading sources, shared by every job: inputs -> decoded, normalised, unique source images.

    read (files | tars | annotation files) -> decode/normalise -> dedup

Its stages register what they did not keep (rejections, dead letters) and the inputs of
the run's ledger with the run's accounts; it adds the funnel steps ``inputs`` (what the
readers found), ``read``, ``decoded`` and ``unique``, and counts the notes decoding left.
"""
from __future__ import annotations

import dataclasses
import posixpath
from typing import Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from pipeline.finalize import MANIFEST
from schemas import SourceImage
from transforms.dedup import DeduplicateByContent
from transforms.io.decode import DecodeConfig
from transforms.io.files import list_files, list_inputs, read_json
from transforms.io.readers import ReadAnnotated, ReadImageFiles, ReadShards, expand_pattern
from transforms.io.shards import ShardMismatch, verify_shards
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


def _manifest_entries(folder: str) -> Optional[dict[str, Mapping]]:
    """The shards a run's folder lists (url -> its ``shardindex.json`` entry); None for a folder of no run of ours."""
    manifest = FileSystems.join(folder, MANIFEST)
    if not FileSystems.exists(manifest):
        return None
    return {entry["url"]: entry for entry in read_json(manifest)["shardlist"]}


def _shard_paths(pattern: str) -> list[str]:
    """A folder's shards (a run's: those its manifest lists; else every ``*.tar`` below it), or a glob's matches."""
    if expand_pattern(pattern) == pattern:
        return list_inputs(pattern)  # every name, so that the reader rejects a FIFO or a broken link by name
    folder = pattern.rstrip("/")
    entries = _manifest_entries(folder)
    if entries is None:
        return [path for path in list_files(expand_pattern(pattern)) if path.endswith(".tar")]
    return [FileSystems.join(folder, url) for url in entries]


def shard_inputs(patterns: Sequence[str]) -> tuple[str, ...]:
    """The tars ``--shards`` names, each of ours checked against its run's manifest first, as build checks its own.

    A tar beside a ``shardindex.json`` must be listed there and match its size and md5
    (:func:`~transforms.io.shards.verify_shards`): a changed shard, or a killed re-run's
    beside the manifest of the run before, raises :class:`~transforms.io.shards.ShardMismatch`
    before anything runs. Tars with no manifest beside them are anyone's and read as they are.
    """
    paths = list(dict.fromkeys(path for pattern in patterns for path in _shard_paths(pattern)))
    by_folder: dict[str, list[str]] = {}
    for path in paths:
        if path.endswith(".tar"):
            by_folder.setdefault(posixpath.dirname(path) or ".", []).append(posixpath.basename(path))
    for folder, names in sorted(by_folder.items()):
        entries = _manifest_entries(folder)
        if entries is None:
            continue
        unlisted = [name for name in names if name not in entries]
        if unlisted:
            raise ShardMismatch(f"{FileSystems.join(folder, unlisted[0])} is not listed in {MANIFEST} beside it "
                                f"(left by another run): name the run's folder to read the shards it lists")
        verify_shards(folder, [entries[name] for name in names])
    return tuple(paths)


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
