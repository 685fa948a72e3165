"""The frame-pair graph (MimicBrush): videos and still images -> (source, reference, grid mask) shards.

    videos -> per video: decode at reduced size -> shots (no pair across a cut) -> sampled
      frame pairs -> SSIM band -> SIFT matches (RANSAC) -> grid mask steered by the matches
    images -> per image: strongly augmented copy as the reference -> matches -> grid mask
      -> capped to the mix ratio (MimicBrush: 70 % video, 30 % images)
    -> write shards -> finalize

Two ledgers close: inputs (videos and images: ``written`` when at least one of their pairs
is, else a reason such as ``corrupt_video`` or ``no_frame_pair``) and pairs (every sampled
pair: written, or rejected with its reason: ``frames_too_similar``, ``frames_unrelated``,
``too_few_matches``, ``over_mix_ratio``). A video is one step: all of its pairs are made
before any is emitted, so an error leaves one dead letter and no half-counted video.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import tempfile
from typing import Any, BinaryIO, Iterator, Optional, Sequence

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from pipeline.finalize import FUNNEL, FinalizeInputs, FinalizeRun, RunInfo
from pipeline.ledger import INPUTS, REJECTED, WRITTEN, Tally, count_as, count_dead_letters, count_rejections
from pipeline.sources import SOURCE_FUNNEL_STEPS, ReadSources, SourcesConfig, flatten
from pipeline.stage import StageDoFn, apply_tagged_stage
from schemas import Reason, Rejection, SourceImage
from schemas.keys import SOURCE_KEY_HEX_DIGITS, derived_seed
from schemas.sample import mimic_fields
from transforms.checks import is_integral, is_unit
from transforms.io.decode import decode_rgb, encode_jpeg
from transforms.io.readers import MatchPaths
from transforms.io.shards import EncodedSample, ShardWriterConfig, WriteShards
from transforms.masks import encode_mask_png
from transforms.mimic import (
    GridMaskConfig,
    MatchConfig,
    SsimBandConfig,
    StaticAugmentConfig,
    check_matches,
    check_ssim_band,
    grid_mask,
    match_frames,
    pair_ssim,
    static_reference,
)
from transforms.video import (
    CutConfig,
    Frame,
    PairSamplingConfig,
    VideoDecodeConfig,
    VideoError,
    read_frames,
    sample_pairs,
    shot_boundaries,
    video_seed,
)

#: Counters of the pair ledger are ``pairs.<counter>``.
PAIRS = "pairs"
FUNNEL_STEPS = ("videos", "videos_decoded", "frame_pairs_sampled", "frame_pairs_kept", *SOURCE_FUNNEL_STEPS,
                "image_pairs_made", "image_pairs_kept", "pairs_written")
_COUNTS = "counts"
_PAIR_REJECTED = "pair_rejected"
_CHUNK_BYTES = 8 << 20
#: Videos up to this size are copied to memory, larger ones to a temporary file.
_IN_MEMORY_BYTES = 64 << 20


@dataclasses.dataclass(frozen=True)
class FramePairSettings:
    """Per-job settings: the base seed, JPEG quality, and ``video_share``: the static-image
    pairs are capped at ``(1 - video_share) / video_share`` times the video pairs (0: no cap)."""

    seed: int = 0
    jpeg_quality: int = 95
    video_share: float = 0.7

    def __post_init__(self) -> None:
        if not is_integral(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not is_integral(self.jpeg_quality) or not 50 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be an integer in [50, 100], got {self.jpeg_quality!r}")
        if not is_unit(self.video_share) or self.video_share >= 1.0:
            raise ValueError(f"video_share must be in [0, 1), got {self.video_share!r}")

    def static_cap(self, video_pairs: int) -> Optional[int]:
        """How many image pairs may join ``video_pairs`` video pairs; ``None``: no cap."""
        if self.video_share == 0:
            return None
        return int(video_pairs * (1.0 - self.video_share) / self.video_share)


@dataclasses.dataclass(frozen=True)
class PairRules:
    """How one pair is judged and masked, for both branches."""

    ssim: SsimBandConfig = dataclasses.field(default_factory=SsimBandConfig)
    matches: MatchConfig = dataclasses.field(default_factory=MatchConfig)
    grid: GridMaskConfig = dataclasses.field(default_factory=GridMaskConfig)


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


def _histogram_label(value: float, edges: Sequence[float]) -> str:
    """The bin of ``value`` among ``edges`` as ``"lo-hi"`` (the last bin is ``">=lo"``); tally-friendly."""
    for lo, hi in zip(edges, edges[1:]):
        if value < hi:
            return f"{lo:g}-{hi:g}"
    return f">={edges[-1]:g}"


SSIM_EDGES = tuple(round(0.1 * i, 1) for i in range(-10, 11))
MATCH_EDGES = (0, 1, 8, 16, 32, 64, 128, 256, 512, 1024)


def _judge(source: np.ndarray, reference: np.ndarray, rules: PairRules, check_band: bool,
           match_against: Optional[np.ndarray] = None) -> tuple[list[Any], Optional[tuple[Reason, str]], float, Any]:
    """Counts, the failure (if any), SSIM and matches of one candidate pair.

    ``match_against`` replaces the reference for matching only (the static branch's
    reference with its flip undone: SIFT descriptors are not mirror-invariant).
    """
    ssim = pair_ssim(source, reference, rules.ssim.side)
    counts = [(("ssim_histogram", _histogram_label(ssim, SSIM_EDGES)), 1)]
    failure = check_ssim_band(ssim, rules.ssim) if check_band else None
    if failure is not None:
        return counts, failure, ssim, None
    matches = match_frames(source, reference if match_against is None else match_against, rules.matches)
    counts.append((("matches_histogram", _histogram_label(matches.inliers, MATCH_EDGES)), 1))
    return counts, check_matches(matches, rules.matches), ssim, matches


def _encode(key: str, source: np.ndarray, reference: np.ndarray, matches: Any, rules: PairRules, seed: int,
            quality: int, meta: dict[str, Any]) -> EncodedSample:
    mask, grid = grid_mask(source.shape[0], source.shape[1], matches.source_points, rules.grid,
                           np.random.default_rng([seed, 7]))
    meta = {**meta, "matches": {"inliers": matches.inliers, "candidates": matches.candidates},
            "grid": grid, "seed": seed}
    fields = mimic_fields(key, encode_jpeg(source, quality), encode_jpeg(reference, quality), encode_mask_png(mask),
                          meta)
    frames = meta.get("frames", {})
    row = {
        "key": key, "source_key": meta["source_key"], "uri": meta["uri"], "branch": meta["branch"],
        "source_frame": frames.get("source", {}).get("index"), "reference_frame": frames.get("reference", {}).get("index"),
        "gap_s": frames.get("gap_s"), "ssim": meta["ssim"], "inliers": matches.inliers,
        "grid_cells": grid["cells"], "masked_cells": len(grid["masked"]), "seed": seed,
    }
    return EncodedSample(key=key, fields=fields, metadata=row)


def local_copy(path: str) -> tuple[BinaryIO, str]:
    """One sequential read of a video: a seekable local copy, and the video's key.

    The key is the leading hex digits of the content sha256. Reading once serves both the
    hash and the decoder, whose probing seeks (an MP4's index is often at the end) are
    cheap on a local copy and a ranged request each on object storage. Small videos stay
    in memory, larger ones spill to a temporary file that closing removes.
    """
    digest = hashlib.sha256()
    copy = tempfile.SpooledTemporaryFile(max_size=_IN_MEMORY_BYTES)
    try:
        with FileSystems.open(path, compression_type="uncompressed") as stream:
            for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
                digest.update(chunk)
                copy.write(chunk)
        copy.seek(0)
    except BaseException:
        copy.close()
        raise
    return copy, digest.hexdigest()[:SOURCE_KEY_HEX_DIGITS]


def _frame_json(frame: Frame) -> dict[str, Any]:
    return {"index": frame.index, "time_s": round(frame.time_s, 6)}


class _VideoPairsFn(StageDoFn):
    stage = "video_pairs"

    def __init__(self, config: VideoPairsConfig) -> None:
        super().__init__()
        self._config = config

    def process_record(self, path: str) -> Iterator[Any]:
        config = self._config
        copy, key = local_copy(path)
        with copy:
            if not copy.seek(0, io.SEEK_END):
                yield Rejection(path, self.stage, Reason.EMPTY_FILE, "zero bytes")
                return
            copy.seek(0)
            try:
                frames = read_frames(copy, config.decode, name=path)
            except VideoError as error:
                yield Rejection(path, self.stage, error.reason, error.detail)
                return
        outputs: list[Any] = [TaggedOutput(_COUNTS, ((FUNNEL, "videos_decoded"), 1))]
        shots = shot_boundaries(frames, config.cuts)
        seed = video_seed(config.settings.seed, key)
        pairs = sample_pairs(frames, shots, config.sampling, seed)
        if not pairs:
            yield Rejection(path, self.stage, Reason.VIDEO_TOO_SHORT,
                            f"{len(frames)} frames in {len(shots)} shots: no pair within the gap limits", key)
            return
        outputs += [TaggedOutput(_COUNTS, ((f"{PAIRS}.{INPUTS}", ""), len(pairs))),
                    TaggedOutput(_COUNTS, ((FUNNEL, "frame_pairs_sampled"), len(pairs)))]
        kept = 0
        for number, (a, b) in enumerate(pairs):
            source, reference = frames[a], frames[b]
            pair_key = f"{key}_f{source.index:06d}_{reference.index:06d}"
            counts, failure, ssim, matches = _judge(source.rgb, reference.rgb, config.rules, check_band=True)
            outputs += [TaggedOutput(_COUNTS, count) for count in counts]
            if failure is not None:
                outputs.append(TaggedOutput(_PAIR_REJECTED, Rejection(path, self.stage, failure[0], failure[1], pair_key)))
                continue
            meta = {"branch": "video", "source_key": key, "uri": path, "ssim": ssim,
                    "video": {"key": key, "uri": path, "frames_decoded": len(frames), "shots": len(shots)},
                    "frames": {"source": _frame_json(source), "reference": _frame_json(reference),
                               "gap_s": round(reference.time_s - source.time_s, 6)}}
            pair_seed = int(np.random.default_rng([seed, number]).integers(2**62))
            outputs.append(_encode(pair_key, source.rgb, reference.rgb, matches, config.rules, pair_seed,
                                   config.settings.jpeg_quality, meta))
            kept += 1
        if not kept:
            yield from outputs
            yield Rejection(path, self.stage, Reason.NO_FRAME_PAIR, f"all {len(pairs)} sampled pairs rejected", key)
            return
        outputs += [TaggedOutput(_COUNTS, ((WRITTEN, ""), 1)), TaggedOutput(_COUNTS, ((FUNNEL, "frame_pairs_kept"), kept))]
        yield from outputs


def reduce_short_side(rgb: np.ndarray, short_side: int) -> np.ndarray:
    """``rgb`` with its shorter side at most ``short_side`` (area downsampling; never upscaled)."""
    height, width = rgb.shape[:2]
    scale = short_side / min(height, width)
    if scale >= 1.0:
        return rgb
    return cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA)


def image_seed(base_seed: int, key: str) -> int:
    """The seed of an image's static pair (62 bits, as numpy's ``SeedSequence`` entropy needs no more)."""
    return derived_seed(base_seed, "image", key, bits=62)


class _ImagePairFn(StageDoFn):
    stage = "image_pairs"

    def __init__(self, config: VideoPairsConfig) -> None:
        super().__init__()
        self._config = config

    def process_record(self, source: SourceImage) -> Iterator[Any]:
        config = self._config
        rgb = reduce_short_side(decode_rgb(source.jpeg), config.decode.short_side)
        seed = image_seed(config.settings.seed, source.key)
        reference, augmentation = static_reference(rgb, config.augment, seed)
        flipped = any(step["name"] == "HorizontalFlip" for step in augmentation["applied"])
        pair_key = f"{source.key}_aug"
        outputs: list[Any] = [TaggedOutput(_COUNTS, ((f"{PAIRS}.{INPUTS}", ""), 1))]
        counts, failure, ssim, matches = _judge(rgb, reference, config.rules, check_band=False,
                                                match_against=np.fliplr(reference) if flipped else None)
        outputs += [TaggedOutput(_COUNTS, count) for count in counts]
        if failure is not None:
            outputs.append(TaggedOutput(_PAIR_REJECTED, Rejection(source.uri, self.stage, failure[0], failure[1],
                                                                  pair_key)))
            yield from outputs
            yield Rejection(source.uri, self.stage, Reason.NO_FRAME_PAIR, failure[1], source.key)
            return
        meta = {"branch": "image", "source_key": source.key, "uri": source.uri, "ssim": ssim,
                "image": {"key": source.key, "uri": source.uri, "width": source.width, "height": source.height},
                "augmentation": augmentation}
        outputs.append(TaggedOutput(_COUNTS, ((FUNNEL, "image_pairs_made"), 1)))
        yield from outputs
        yield _encode(pair_key, rgb, reference, matches, config.rules, seed, config.settings.jpeg_quality, meta)


def _pair_rank(sample: EncodedSample) -> int:
    """A deterministic, uniform order of image pairs for the mix cap (not the key order)."""
    return int.from_bytes(hashlib.blake2b(sample.key.encode("utf-8"), digest_size=8).digest(), "big")


def _cap_threshold(ranks: list[int], video_pairs: int, settings: FramePairSettings) -> Optional[int]:
    """The largest rank kept under the mix cap; ``None``: keep all."""
    cap = settings.static_cap(video_pairs)
    if cap is None or cap >= len(ranks):
        return None
    return sorted(ranks)[cap - 1] if cap > 0 else -1


def _apply_cap(sample: EncodedSample, threshold: Optional[int]):
    if threshold is None or _pair_rank(sample) <= threshold:
        yield sample
    else:
        uri = sample.metadata["uri"]
        yield TaggedOutput(_PAIR_REJECTED, Rejection(uri, "mix", Reason.OVER_MIX_RATIO, "image pairs capped", sample.key))
        yield TaggedOutput("image_rejected", Rejection(uri, "mix", Reason.OVER_MIX_RATIO, "its pair was capped",
                                                       sample.metadata["source_key"]))


def build_video_pairs(p: beam.Pipeline, config: VideoPairsConfig) -> beam.PCollection:
    """Add the frame-pair graph to ``p``; returns the PCollection holding the run's stats dict."""
    samples, rejected, pair_rejected, dead, counts = [], [], [], [], []
    video_samples = None
    if config.videos:
        paths = p | "MatchVideos" >> MatchPaths(config.videos)
        videos, tagged = apply_tagged_stage(paths, "VideoPairs", _VideoPairsFn(config), (_COUNTS, _PAIR_REJECTED))
        video_samples = videos.main
        samples.append(videos.main)
        rejected.append(videos.rejected)
        pair_rejected.append(tagged[_PAIR_REJECTED])
        dead.append(videos.dead_letters)
        counts += [tagged[_COUNTS], count_as(paths, "CountVideos", INPUTS, lambda _: "video"),
                   count_as(paths, "FunnelVideos", FUNNEL, lambda _: "videos")]
    if config.sources is not None:
        sources = p | "ReadSources" >> ReadSources(config.sources)
        images, tagged = apply_tagged_stage(sources.sources, "ImagePairs", _ImagePairFn(config),
                                            (_COUNTS, _PAIR_REJECTED))
        video_count = (video_samples | "CountVideoPairs" >> beam.combiners.Count.Globally() if video_samples is not None
                       else p | "NoVideoPairs" >> beam.Create([0]))
        ranks = images.main | "Ranks" >> beam.Map(_pair_rank) | "AllRanks" >> beam.combiners.ToList()
        threshold = ranks | "CapThreshold" >> beam.Map(_cap_threshold, beam.pvalue.AsSingleton(video_count),
                                                       config.settings)
        capped = images.main | "Cap" >> beam.FlatMap(_apply_cap, beam.pvalue.AsSingleton(threshold)).with_outputs(
            _PAIR_REJECTED, "image_rejected", main="kept")
        samples.append(capped.kept)
        rejected += [sources.rejected, images.rejected, capped.image_rejected]
        pair_rejected += [tagged[_PAIR_REJECTED], capped[_PAIR_REJECTED]]
        dead += [sources.dead_letters, images.dead_letters]
        counts += [sources.counts, tagged[_COUNTS],
                   count_as(capped.kept, "ImagesWritten", WRITTEN),
                   count_as(capped.kept, "FunnelImagePairsKept", FUNNEL, lambda _: "image_pairs_kept")]
    shards = flatten("AllSamples", samples) | "WriteShards" >> WriteShards(config.writer)
    rejected = flatten("AllRejected", rejected)
    pair_rejected = flatten("AllPairRejected", pair_rejected)
    dead_letters = flatten("AllDeadLetters", dead)
    counts += [
        count_rejections(rejected, "CountRejected"),
        count_dead_letters(dead_letters, "CountDeadLetters"),
        count_rejections(pair_rejected, "CountPairsRejected", counter=f"{PAIRS}.{REJECTED}"),
        shards | "CountPairsWritten" >> beam.Map(lambda shard: ((f"{PAIRS}.{WRITTEN}", ""), shard.nsamples)),
        shards | "FunnelWritten" >> beam.Map(lambda shard: ((FUNNEL, "pairs_written"), shard.nsamples)),
    ]
    tally = flatten("AllCounts", counts) | "Tally" >> Tally()
    all_rejected = flatten("AllRejectedRows", [rejected, pair_rejected])
    return FinalizeInputs(shards, tally, all_rejected, dead_letters) | "Finalize" >> FinalizeRun(config.run, config.writer)
