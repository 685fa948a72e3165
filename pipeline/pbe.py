"""The self-reference graphs (Paint-by-Example): boxes -> (target crop, mask, reference) shards.

    ReadSources -> boxes (the image's annotations, or the detector's) -> MakePairs: per image,
      box filters, then per kept box a square target crop, a box or Bezier mask and an
      augmented reference crop -> SplitBoxes (every box: its pair or its rejection)
      -> write shards -> finalize

The benchmark graph (COCOEE-style evaluation set) keeps images with exactly one
qualifying box whose mask covers less than half the image, and takes each one's
reference from a *different* image of the same class:

    ReadSources -> boxes -> BenchmarkItems -> PairWithOtherImages (by class) -> write shards -> finalize

Two ledgers close: images (``written`` when at least one of its boxes became a pair,
else rejected ``no_boxes`` / ``no_suitable_box`` / a reading reason, or a dead letter) and
boxes (``written``, or rejected with the box filter's reason). The stages, and how the
fan-out from an image to its boxes balances, are in :mod:`transforms.pbe`; here are the
data path and the counts the jobs define.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler

from pipeline.finalize import FinalizeRun, RunInfo
from pipeline.sources import SOURCE_FUNNEL_STEPS, ReadSources, SourcesConfig, flatten
from transforms.io.shards import ShardWriterConfig, WriteShards
from transforms.ledger import WRITTEN, RunAccounts, count_as, count_funnel
from transforms.models.run_model import RunModel
from transforms.pbe import (
    BOXES,
    BenchmarkItems,
    MakePairs,
    PairSettings,
    PairWithOtherImages,
    PbeConfig,
    SplitBoxes,
    annotation_boxes,
    detected_boxes,
)

FUNNEL_STEPS = (*SOURCE_FUNNEL_STEPS, "with_boxes", "boxes", "boxes_kept", "pairs_written")


@dataclasses.dataclass(frozen=True)
class PbeJobConfig:
    """The job's configs; ``detector`` is ``None`` when boxes come only from annotations."""

    sources: SourcesConfig
    pbe: PbeConfig
    pairs: PairSettings
    writer: ShardWriterConfig
    run: RunInfo
    detector: Optional[ModelHandler] = None



def _boxed_images(p: beam.Pipeline, sources_config: SourcesConfig, detector: Optional[ModelHandler]):
    """Unique source images with their boxes: the annotations' where an image has them, else the detector's."""
    sources = p | "ReadSources" >> ReadSources(sources_config)
    annotated = sources | "SplitAnnotated" >> beam.Partition(
        lambda source, _: 0 if annotation_boxes(source) or detector is None else 1, 2)
    boxed = [annotated[0] | "AnnotationBoxes" >> beam.Map(lambda source: (source, annotation_boxes(source)))]
    if detector is not None:
        detected = annotated[1] | "Detect" >> RunModel(detector, "detect")
        boxed.append(detected | "DetectedBoxes" >> beam.Map(detected_boxes))
    return flatten("BoxedImages", boxed)


def _with_boxes(images: beam.PCollection) -> beam.PCollection:
    return count_funnel(images, "FunnelWithBoxes", "with_boxes", lambda image: int(bool(image[1])))


def build_pbe(p: beam.Pipeline, config: PbeJobConfig) -> beam.PCollection:
    """Add the self-reference graph to ``p``; returns the PCollection holding the run's stats dict."""
    images = _boxed_images(p, config.sources, config.detector)
    made = images | "MakePairs" >> MakePairs(config.pbe, config.pairs, config.run.provenance)
    pairs = flatten("AllImageBoxes", made) | "SplitBoxes" >> SplitBoxes()
    shards = pairs | "WriteShards" >> WriteShards(config.writer, unit=BOXES)
    RunAccounts.of(p).add_counts(flatten("JobCounts", [
        # An image is written once one of its boxes is a pair.
        count_as(made.paired, "ImagesWritten", WRITTEN),
        _with_boxes(images),
        count_funnel(images, "FunnelBoxes", "boxes", lambda image: len(image[1])),
        count_funnel(pairs, "FunnelBoxesKept", "boxes_kept"),
        count_funnel(shards, "FunnelWritten", "pairs_written", lambda shard: shard.nsamples),
    ]))
    return shards | "Finalize" >> FinalizeRun(config.run, config.writer)


# --------------------------------------------------------------------------- benchmark (COCOEE-style)

BENCHMARK_FUNNEL_STEPS = (*SOURCE_FUNNEL_STEPS, "with_boxes", "single_object", "pairs_written")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig(PbeJobConfig):
    """``max_mask_fraction``: a mask covering this share of the image or more is rejected (COCOEE: 0.5)."""

    max_mask_fraction: float = 0.5


def build_pbe_benchmark(p: beam.Pipeline, config: BenchmarkConfig) -> beam.PCollection:
    """Add the benchmark graph to ``p``; returns the PCollection holding the run's stats dict."""
    images = _boxed_images(p, config.sources, config.detector)
    items = images | "Items" >> BenchmarkItems(config.pbe, config.pairs, config.max_mask_fraction)
    pairs = items | "Pair" >> PairWithOtherImages(config.run.provenance)
    shards = pairs | "WriteShards" >> WriteShards(config.writer)
    RunAccounts.of(p).add_counts(flatten("JobCounts", [
        _with_boxes(images),
        count_funnel(items, "FunnelSingle", "single_object"),
        count_funnel(shards, "FunnelWritten", "pairs_written", lambda shard: shard.nsamples),
    ]))
    return shards | "Finalize" >> FinalizeRun(config.run, config.writer)
