"""The ingest graph: raw images, tars or annotated datasets -> normalised source shards.

    ReadSources (read -> decode/normalise -> dedup) -> encode -> write shards -> finalize
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

FUNNEL_STEPS = (*SOURCE_FUNNEL_STEPS, "written")


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """Everything the ingest graph needs, already validated by the stage configs."""

    sources: SourcesConfig
    writer: ShardWriterConfig
    run: RunInfo


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
    encoded = sources | "EncodeSamples" >> EncodeSamples(_SourceSampleEncoder(config.run.provenance))
    shards = encoded | "WriteShards" >> WriteShards(config.writer)
    RunAccounts.of(p).add_counts(count_funnel(shards, "FunnelWritten", "written", lambda shard: shard.nsamples))
    return shards | "Finalize" >> FinalizeRun(config.run, config.writer)
