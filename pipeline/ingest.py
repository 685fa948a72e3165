"""The ingest graph: raw images, tars or annotated datasets -> normalised source shards.

    ReadSources (read -> decode/normalise -> dedup) -> image size -> encode -> write shards -> finalize
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import apache_beam as beam

from pipeline.finalize import FinalizeRun, RunInfo
from pipeline.sources import SOURCE_FUNNEL_STEPS, ReadSources, SourcesConfig
from schemas import SourceImage
from schemas.sample import source_metadata_row, source_to_sample
from transforms.encode import EncodeSamples
from transforms.io.shards import EncodedSample, ShardWriterConfig, WriteShards
from transforms.ledger import RunAccounts, count_funnel
from transforms.selection import FilterImageSize, SelectionConfig

FUNNEL_STEPS = (*SOURCE_FUNNEL_STEPS, "sized", "written")

#: Ingest's default shortest side: the smallest any job makes a sample from (a PbE crop, a video-pairs
#: frame: 16 px). Bootstrap applies its own, larger ``selection.min_image_side`` to the shards.
MIN_IMAGE_SIDE = 16


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Everything the ingest graph needs, already validated by the stage configs."""

    sources: SourcesConfig
    writer: ShardWriterConfig
    run: RunInfo
    #: Bootstrap's image-size rule (only ``min_image_side`` is read): smaller images are ``image_too_small``.
    image_size: SelectionConfig


class _SourceSampleEncoder:
    """SourceImage -> EncodedSample, stamping each sample's provenance."""

    def __init__(self, provenance: Mapping[str, Any]) -> None:
        self._provenance = dict(provenance)

    def __call__(self, image: SourceImage) -> EncodedSample:
        sample = source_to_sample(image, self._provenance)
        fields = {name: value for name, value in sample.items() if name != "__key__"}
        return EncodedSample(key=image.key, fields=fields, metadata=source_metadata_row(image))


def build_ingest(p: beam.Pipeline, config: IngestConfig) -> beam.PCollection:
    """Add the ingest graph to ``p``; returns the PCollection holding the run's stats dict."""
    sources = p | "ReadSources" >> ReadSources(config.sources)
    sized = sources | "ImageSize" >> FilterImageSize(config.image_size)
    RunAccounts.of(p).add_counts(count_funnel(sized, "FunnelSized", "sized"))
    encoded = sized | "EncodeSamples" >> EncodeSamples(_SourceSampleEncoder(config.run.provenance))
    shards = encoded | "WriteShards" >> WriteShards(config.writer)
    RunAccounts.of(p).add_counts(count_funnel(shards, "FunnelWritten", "written", lambda shard: shard.nsamples))
    return shards | "Finalize" >> FinalizeRun(config.run, config.writer)
