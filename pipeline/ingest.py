"""The ingest graph: raw images, tars or annotated datasets -> normalised source shards.

    ReadSources (read -> decode/normalise -> dedup) -> encode -> write shards
                          \\ rejections, dead letters, counts -> finalize (manifest, stats, ledger)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import apache_beam as beam

from pipeline.finalize import FUNNEL, FinalizeInputs, FinalizeRun, RunInfo
from pipeline.ledger import WRITTEN, Tally, count_dead_letters, count_rejections
from pipeline.sources import SOURCE_FUNNEL_STEPS, ReadSources, SourcesConfig, flatten
from schemas import SourceImage
from schemas.sample import source_metadata_row, source_to_sample
from transforms.encode import EncodeSamples
from transforms.io.shards import EncodedSample, ShardWriterConfig, WriteShards

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
    encoded = sources.sources | "EncodeSamples" >> EncodeSamples(_SourceSampleEncoder(config.run.provenance))
    shards = encoded.main | "WriteShards" >> WriteShards(config.writer)

    dead_letters = flatten("AllDeadLetters", [sources.dead_letters, encoded.dead_letters])
    counts = [
        sources.counts,
        count_rejections(sources.rejected, "CountRejected"),
        count_dead_letters(dead_letters, "CountDeadLetters"),
        shards | "CountWritten" >> beam.Map(lambda shard: ((WRITTEN, ""), shard.nsamples)),
        shards | "FunnelWritten" >> beam.Map(lambda shard: ((FUNNEL, "written"), shard.nsamples)),
    ]
    tally = flatten("AllCounts", counts) | "Tally" >> Tally()
    rejected = flatten("AllRejected", [sources.rejected, sources.boxes_rejected])
    return FinalizeInputs(shards, tally, rejected, dead_letters) | "Finalize" >> FinalizeRun(config.run, config.writer)
