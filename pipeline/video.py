"""The frame-pair graph (MimicBrush): videos and still images -> (source, reference, grid mask) shards.

    videos -> VideoPairs: per video, decode at reduced size -> shots (no pair across a cut)
      -> sampled frame pairs -> SSIM band -> SIFT matches (RANSAC) -> grid mask steered by the matches
      -> DeduplicateVideos: one copy of each clip (same bytes, or frames that hash alike)
    images -> ReadSources -> ImagePairs: per image, strongly augmented copy as the reference
      -> matches -> grid mask -> CapImagePairs: capped to the mix ratio (MimicBrush: 70 % video, 30 % images)
    -> SplitPairs (every candidate pair) -> write shards -> finalize

Two ledgers close: inputs (videos and images: ``written`` when at least one of their pairs
is kept, else a reason such as ``corrupt_video``, ``no_frame_pair`` or
``near_duplicate_video``) and pairs (every sampled pair: written, or rejected with its
reason: ``frames_too_similar``, ``frames_unrelated``, ``too_few_matches``,
``over_mix_ratio``, or its video's duplicate reason). The stages, and why their
rows balance although a video's pairs are found only by decoding it, are in
:mod:`transforms.frame_pairs`; here are the data path and the counts the job defines.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam

from pipeline.finalize import FinalizeRun, RunInfo
from pipeline.sources import SOURCE_FUNNEL_STEPS, ReadSources, SourcesConfig, flatten
from transforms.frame_pairs import (
    PAIRS,
    CapImagePairs,
    DeduplicateVideos,
    FramePairSettings,
    ImagePairs,
    PairRules,
    SplitPairs,
    VideoPairs,
)
from transforms.io.readers import MatchPaths
from transforms.io.shards import ShardWriterConfig, WriteShards
from transforms.ledger import WRITTEN, RunAccounts, count_as, count_funnel
from transforms.mimic import StaticAugmentConfig
from transforms.video import CutConfig, PairSamplingConfig, VideoDecodeConfig

FUNNEL_STEPS = ("videos", "videos_decoded", "frame_pairs_sampled", "frame_pairs_kept", *SOURCE_FUNNEL_STEPS,
                "image_pairs_made", "image_pairs_kept", "pairs_written")


@dataclasses.dataclass(frozen=True)
class VideoPairsConfig:
    """The job's configs; ``videos`` are path patterns, ``sources`` the still images (or ``None``)."""

    videos: tuple[str, ...]
    sources: Optional[SourcesConfig]
    decode: VideoDecodeConfig
    cuts: CutConfig
    sampling: PairSamplingConfig
    rules: PairRules
    augment: StaticAugmentConfig
    settings: FramePairSettings
    writer: ShardWriterConfig
    run: RunInfo

    def __post_init__(self) -> None:
        if not self.videos and self.sources is None:
            raise ValueError("video-pairs needs videos, images, or both")



def build_video_pairs(p: beam.Pipeline, config: VideoPairsConfig) -> beam.PCollection:
    """Add the frame-pair graph to ``p``; returns the PCollection holding the run's stats dict."""
    judged, counts = [], []
    paired_videos = None
    if config.videos:
        paths = p | "MatchVideos" >> MatchPaths(config.videos)
        videos = paths | "VideoPairs" >> VideoPairs(config.decode, config.cuts, config.sampling, config.rules,
                                                    config.settings)
        unique = videos.paired | "DeduplicateVideos" >> DeduplicateVideos(config.settings)
        paired_videos = unique.paired
        sampled = flatten("SampledVideos", videos)
        judged += [videos.unpaired, unique.paired, unique.unpaired]
        counts += [
            count_funnel(paths, "FunnelVideos", "videos"),
            # A video counts as decoded once its pairs are sampled: one too short for any pair does not.
            count_funnel(sampled, "FunnelVideosDecoded", "videos_decoded"),
            count_funnel(sampled, "FunnelPairsSampled", "frame_pairs_sampled", lambda video: len(video.pairs)),
            count_funnel(unique.paired, "FunnelPairsKept", "frame_pairs_kept", lambda video: video.kept),
            count_as(unique.paired, "VideosWritten", WRITTEN),
        ]
    if config.sources is not None:
        sources = p | "ReadSources" >> ReadSources(config.sources)
        images = sources | "ImagePairs" >> ImagePairs(config.decode.short_side, config.augment, config.rules,
                                                      config.settings)
        mixed = images.paired | "MixCap" >> CapImagePairs(config.settings, paired_videos)
        judged += [images.unpaired, mixed.paired, mixed.unpaired]
        counts += [
            count_funnel(images.paired, "FunnelImagePairsMade", "image_pairs_made"),
            count_funnel(mixed.paired, "FunnelImagePairsKept", "image_pairs_kept"),
            count_as(mixed.paired, "ImagesWritten", WRITTEN),
        ]
    samples = flatten("AllJudged", judged) | "SplitPairs" >> SplitPairs()
    shards = samples | "WriteShards" >> WriteShards(config.writer, unit=PAIRS)
    counts.append(count_funnel(shards, "FunnelWritten", "pairs_written", lambda shard: shard.nsamples))
    RunAccounts.of(p).add_counts(flatten("JobCounts", counts))
    return shards | "Finalize" >> FinalizeRun(config.run, config.writer)
