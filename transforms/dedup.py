"""Content deduplication: identical input bytes are kept once.

The copy with the smallest URI wins, so the choice does not depend on worker order; the
others are rejected as ``duplicate_content`` naming the kept URI. This costs one shuffle
of the encoded images, which is why it runs before any model stage: a duplicate never
reaches a GPU.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from schemas import Reason, Rejection, SourceImage
from transforms.ledger import MAIN_LEDGER, RunAccounts, record_uri

STAGE = "dedup"
_DUPLICATES = "duplicates"


def _keep_first(sha_and_images: tuple[str, Iterable[SourceImage]]) -> Iterator[SourceImage | TaggedOutput]:
    _, images = sha_and_images
    kept, *duplicates = sorted(images, key=lambda image: image.uri)
    yield kept
    for duplicate in duplicates:
        yield TaggedOutput(
            _DUPLICATES,
            Rejection(duplicate.uri, STAGE, Reason.DUPLICATE_CONTENT, f"same bytes as {kept.uri}", duplicate.key),
        )


class DeduplicateByContent(beam.PTransform):
    """Keep one source image per content sha256 (a stage of the run's main ledger, records named by uri)."""

    def expand(self, images: beam.PCollection) -> beam.PCollection:
        results = (
            images
            | "BySha256" >> beam.Map(lambda image: (image.sha256, image))
            | "GroupBySha256" >> beam.GroupByKey()
            | "KeepFirst" >> beam.FlatMap(_keep_first).with_outputs(_DUPLICATES, main="unique")
        )
        RunAccounts.of(images.pipeline).add_stage(STAGE, MAIN_LEDGER, images, main=results.unique,
                                                  rejected=results[_DUPLICATES], identity=record_uri)
        return results.unique
