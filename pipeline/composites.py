"""The composites graph: candidate shards' cut-outs pasted onto real backgrounds -> ground-truth shards.

    candidate shards --cut-outs + known boxes--> (side inputs)
    ReadSources (backgrounds) -> MakeComposites -> SplitComposites -> write shards -> finalize

Two ledgers close: images (``written`` once one of its attempts became a composite, else
``no_cutout`` / ``no_placement`` / a reading reason, or a dead letter) and composites
(``written``, or rejected ``no_placement``). Cut-outs are reference data, not records of
this job: a candidate sample without one is skipped and the funnel's ``cutouts`` says how
many were usable.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Iterator

import apache_beam as beam

from pipeline.build import CandidateSet
from pipeline.finalize import FinalizeRun, RunInfo
from pipeline.sources import SOURCE_FUNNEL_STEPS, ReadSources, SourcesConfig, flatten
from schemas import Rejection
from schemas.sample import Field, candidate_from_sample
from transforms.composites import COMPOSITES, CompositeConfig, Cutout, MakeComposites, SplitComposites, cutout_of
from transforms.io.readers import read_tar_samples
from transforms.io.shards import ShardWriterConfig, WriteShards
from transforms.ledger import WRITTEN, RunAccounts, count_as, count_funnel

LOG = logging.getLogger(__name__)

FUNNEL_STEPS = (*SOURCE_FUNNEL_STEPS, "cutouts", "attempts", "composites_written")


@dataclasses.dataclass(frozen=True)
class CompositesJobConfig:
    """The job's configs: the candidate sets whose cut-outs are pasted, the backgrounds, placement."""

    objects: tuple[CandidateSet, ...]
    sources: SourcesConfig
    composites: CompositeConfig
    writer: ShardWriterConfig
    run: RunInfo

    def __post_init__(self) -> None:
        if not self.objects:
            raise ValueError("composites need at least one candidate set to take cut-outs from")


def _cutouts_in(path: str) -> Iterator[Cutout]:
    for sample in read_tar_samples(path, "read_cutouts"):
        if isinstance(sample, Rejection):
            LOG.warning("cut-outs of %s: %s", path, sample.detail)
            continue
        key, fields = sample
        try:
            parsed = candidate_from_sample(key, fields, f"{path}#{key}")
        except ValueError as error:
            LOG.warning("%s#%s has no cut-out: %s", path, key, error)
            continue
        yield cutout_of(parsed.meta, parsed.fields[Field.OBJECT])


def build_composites(p: beam.Pipeline, config: CompositesJobConfig) -> beam.PCollection:
    """Add the composites graph to ``p``; returns the PCollection holding the run's stats dict."""
    paths = [shard for candidate_set in config.objects for shard in candidate_set.shards]
    cutouts = p | "CandidateShards" >> beam.Create(paths) | "Cutouts" >> beam.FlatMap(_cutouts_in)
    known_boxes = cutouts | "KnownBoxes" >> beam.Map(lambda cutout: (cutout.source_key, cutout.box))
    sources = p | "ReadSources" >> ReadSources(config.sources)
    made = sources | "MakeComposites" >> MakeComposites(config.composites, config.run.provenance, cutouts, known_boxes)
    images = flatten("AllImages", made)
    composites = images | "SplitComposites" >> SplitComposites()
    shards = composites | "WriteShards" >> WriteShards(config.writer, unit=COMPOSITES)
    RunAccounts.of(p).add_counts(flatten("JobCounts", [
        count_as(made.paired, "ImagesWritten", WRITTEN),
        count_funnel(cutouts, "FunnelCutouts", "cutouts"),
        count_funnel(images, "FunnelAttempts", "attempts", lambda record: len(record.composites)),
        count_funnel(shards, "FunnelWritten", "composites_written", lambda shard: shard.nsamples),
    ]))
    return shards | "Finalize" >> FinalizeRun(config.run, config.writer)
