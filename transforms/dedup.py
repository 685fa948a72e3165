"""Content deduplication: identical input bytes are kept once.

The copy with the smallest URI wins, so the choice does not depend on worker order; the
others are rejected as ``duplicate_content`` naming the kept URI. This costs one shuffle,
which is why it runs before any model stage: a duplicate never reaches a GPU. Given a
spool folder, the shuffle holds only digests and references: each image's encoded bytes
wait in a per-bundle spool file (``dedup-spool-*.partial``) and the kept copy is read back
after grouping, so a local runner, which holds a shuffle in memory, does not hold every
image (docs/benchmarks.md, ingest memory).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterable, Iterator, Mapping, NamedTuple, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from schemas import Reason, Rejection, SourceImage
from transforms.io.files import BundleSpool
from transforms.ledger import MAIN_LEDGER, RunAccounts, record_uri

STAGE = "dedup"
_DUPLICATES = "duplicates"


class _SpooledImage(NamedTuple):
    """A source image whose JPEG bytes wait in a spool file: what crosses the shuffle instead of it."""

    uri: str
    fields: Mapping[str, Any]  # every SourceImage field but ``jpeg``
    spool: str
    offset: int
    length: int

    def load(self) -> SourceImage:
        with FileSystems.open(self.spool, compression_type="uncompressed") as stream:
            stream.seek(self.offset)
            jpeg = stream.read(self.length)
        if len(jpeg) != self.length:
            raise OSError(f"spool {self.spool} ends inside {self.uri}")
        return SourceImage(**self.fields, jpeg=jpeg)


class _SpoolImagesFn(beam.DoFn):
    """Append each image's JPEG to one spool file per bundle; emit ``(sha256, reference)``."""

    def __init__(self, spool_dir: str) -> None:
        super().__init__()
        self._spool_dir = spool_dir

    def start_bundle(self) -> None:
        self._spool = BundleSpool(self._spool_dir, "dedup-spool")

    def process(self, image: SourceImage) -> Iterator[tuple[str, _SpooledImage]]:
        path, offset = self._spool.append(image.jpeg)
        fields = {field.name: getattr(image, field.name) for field in dataclasses.fields(image) if field.name != "jpeg"}
        yield image.sha256, _SpooledImage(image.uri, fields, path, offset, len(image.jpeg))

    def finish_bundle(self) -> None:
        self._spool.close()


def _remove_spools(_: None, spools: list[str], kept: int) -> None:
    """Delete the spool files once every kept image is read back (``kept`` is there to wait for them)."""
    del kept
    for path in spools:
        with contextlib.suppress(OSError):  # a finalize's removal of .partial files may have come first
            FileSystems.delete([path])


def _keep_first(sha_and_images: tuple[str, Iterable[SourceImage | _SpooledImage]]) -> Iterator[SourceImage | TaggedOutput]:
    _, images = sha_and_images
    kept, *duplicates = sorted(images, key=lambda image: image.uri)
    yield kept.load() if isinstance(kept, _SpooledImage) else kept
    for duplicate in duplicates:
        yield TaggedOutput(
            _DUPLICATES,
            Rejection(duplicate.uri, STAGE, Reason.DUPLICATE_CONTENT, f"same bytes as {kept.uri}", _key(duplicate)),
        )


def _key(image: SourceImage | _SpooledImage) -> str:
    return image.fields["key"] if isinstance(image, _SpooledImage) else image.key


class DeduplicateByContent(beam.PTransform):
    """Keep one source image per content sha256 (a stage of the run's main ledger, records named by uri).

    ``spool_dir``: where the images' bytes wait during the shuffle (a folder every worker
    can read, e.g. the run's output); without it the shuffle carries the images.
    """

    def __init__(self, spool_dir: Optional[str] = None) -> None:
        super().__init__()
        self._spool_dir = spool_dir

    def expand(self, images: beam.PCollection) -> beam.PCollection:
        if self._spool_dir is None:
            keyed = images | "BySha256" >> beam.Map(lambda image: (image.sha256, image))
        else:
            keyed = images | "SpoolBySha256" >> beam.ParDo(_SpoolImagesFn(self._spool_dir))
        results = (
            keyed
            | "GroupBySha256" >> beam.GroupByKey()
            | "KeepFirst" >> beam.FlatMap(_keep_first).with_outputs(_DUPLICATES, main="unique")
        )
        if self._spool_dir is not None:
            spools = keyed | "SpoolFiles" >> beam.Map(lambda item: item[1].spool) | "DistinctSpools" >> beam.Distinct()
            kept = results.unique | "CountKept" >> beam.combiners.Count.Globally()
            _ = (images.pipeline
                 | "AfterKeepFirst" >> beam.Create([None])
                 | "RemoveSpools" >> beam.Map(_remove_spools, spools=beam.pvalue.AsList(spools),
                                              kept=beam.pvalue.AsSingleton(kept)))
        RunAccounts.of(images.pipeline).add_stage(STAGE, MAIN_LEDGER, images, main=results.unique,
                                                  rejected=results[_DUPLICATES], identity=record_uri)
        return results.unique
