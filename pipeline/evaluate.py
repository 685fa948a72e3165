"""The evaluation graph: composite shards -> the job's remover and scores -> judged against the exact truth.

    ReadComposites -> truth requests (the matte is the mask, or --masks_from segmenter: the
      segmenter's mask from the true box) -> remove (K candidates)
      -> scores [-> re-detection] [-> CLIP] -> judge against the truth -> candidate shards
      + truth rows (Parquet: one row per candidate, every score, PSNR and SSIM in the hole)

From the removal on this is bootstrap's graph with bootstrap's configs, so what is
measured is what bootstrap would record; and the output is a candidate set (``build``
reads it), so a build's real kept set can be judged too. The ledger counts composite
samples: each ends as a candidate sample, a rejection (``corrupt_shard``,
``not_a_composite_sample``) or a dead letter.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler

from pipeline.finalize import FinalizeRun, RunInfo
from pipeline.sources import flatten
from schemas.sample import SCORE_NAMES
from transforms.candidates import CandidateSampleEncoder, ScoreCandidates
from transforms.encode import EncodeSamples
from transforms.evaluation import (
    JudgeCandidates,
    ReadComposites,
    SegmentationRequests,
    SegmentedRequests,
    TruthRequests,
    truth_of,
)
from transforms.io.shards import ShardWriterConfig, WriteShards
from transforms.ledger import RunAccounts, count_funnel
from transforms.mask_quality import MaskQualityConfig
from transforms.models.removal import RemovalHandler
from transforms.models.run_model import RunModel
from transforms.quality import QualityConfig

FUNNEL_STEPS = ("composite_samples", "objects_removed", "objects_judged", "candidates_judged", "objects_written")
#: Where the truth rows go, under the output folder.
TRUTH_ROWS = "truth"

#: One row per judged candidate (transforms.evaluation.TruthRow).
TRUTH_ROW_SCHEMA = pa.schema([
    pa.field("key", pa.string(), nullable=False),
    pa.field("object_key", pa.string(), nullable=False),
    pa.field("background_key", pa.string()),
    pa.field("label", pa.string()),
    pa.field("candidate_index", pa.int32()),
    pa.field("remover", pa.string()),
    pa.field("psnr_db", pa.float64()),
    pa.field("ssim", pa.float64()),
    *(pa.field(name, pa.float64()) for name in SCORE_NAMES),
])


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """The composite shards to judge on, and bootstrap's configs and handlers from the removal on."""

    shards: tuple[str, ...]
    masks: MaskQualityConfig
    remover: RemovalHandler
    quality: QualityConfig
    writer: ShardWriterConfig
    run: RunInfo
    redetect: Optional[ModelHandler] = None
    clip: Optional[ModelHandler] = None
    #: Masks from this segmenter, prompted with the pasted object's true box; ``None``: the true matte.
    segmenter: Optional[ModelHandler] = None

    def __post_init__(self) -> None:
        if not self.shards:
            raise ValueError("an evaluation needs at least one composite shard")


def _rescored(label: str, objects: beam.PCollection, handler: ModelHandler, stage: str) -> beam.PCollection:
    predictions = objects | label >> RunModel(handler, stage)
    return predictions | f"{label}Records" >> beam.Map(lambda prediction: prediction.inference)


def build_evaluate(p: beam.Pipeline, config: EvaluateConfig) -> beam.PCollection:
    """Add the evaluation graph to ``p``; returns the PCollection holding the run's stats dict."""
    tars = p | "CompositeShards" >> beam.Create(list(config.shards)) | "Spread" >> beam.Reshuffle()
    samples = tars | "ReadComposites" >> ReadComposites()
    truths = samples | "Truths" >> beam.Map(truth_of)
    if config.segmenter is None:
        requests = samples | "TruthRequests" >> TruthRequests(config.masks, config.remover.config.request)
    else:
        segmented = (samples | "SegmentationRequests" >> SegmentationRequests()
                     | "Segment" >> RunModel(config.segmenter, "segment"))
        requests = segmented | "SegmentedRequests" >> SegmentedRequests(config.masks, config.remover.config.request)
    removed = requests | "Remove" >> RunModel(config.remover, "remove")
    objects = removed | "Score" >> ScoreCandidates(config.quality)
    if config.redetect is not None:
        objects = _rescored("Redetect", objects, config.redetect, "redetect")
    if config.clip is not None:
        objects = _rescored("Clip", objects, config.clip, "clip")
    judged, rows = objects | "Judge" >> JudgeCandidates(truths)
    rows | "WriteTruthRows" >> beam.io.WriteToParquet(
        f"{config.writer.output_dir}/{TRUTH_ROWS}/rows", TRUTH_ROW_SCHEMA, file_name_suffix=".parquet",
        num_shards=1)
    encoder = CandidateSampleEncoder(config.run.provenance, config.run.models)
    encoded = judged | "EncodeSamples" >> EncodeSamples(encoder)
    shards = encoded | "WriteShards" >> WriteShards(config.writer)
    RunAccounts.of(p).add_counts(flatten("FunnelCounts", [
        count_funnel(samples, "FunnelSamples", "composite_samples"),
        count_funnel(removed, "FunnelRemoved", "objects_removed"),
        count_funnel(judged, "FunnelJudged", "objects_judged"),
        count_funnel(rows, "FunnelCandidates", "candidates_judged"),
        count_funnel(shards, "FunnelWritten", "objects_written", lambda shard: shard.nsamples),
    ]))
    return shards | "Finalize" >> FinalizeRun(config.run, config.writer)


def read_rows(output: str) -> list[dict[str, Any]]:
    """The truth rows an evaluation wrote under ``output`` (none for a bootstrap run), in key order."""
    match = FileSystems.match([FileSystems.join(output, TRUTH_ROWS, "rows*.parquet")])[0]
    rows: list[dict[str, Any]] = []
    for metadata in sorted(match.metadata_list, key=lambda m: m.path):
        with FileSystems.open(metadata.path) as stream:
            rows += pq.read_table(stream).to_pylist()
    return sorted(rows, key=lambda row: row["key"])
