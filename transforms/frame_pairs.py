"""The stages of the frame-pair job (MimicBrush): videos and still images -> judged, masked, encoded pairs.

    video paths -> VideoPairs (decode, shots, sampled frame pairs, each judged and encoded)
      -> DeduplicateVideos (one copy of a clip: same bytes, or frames that hash alike)
    source images -> ImagePairs (augmented copy as the reference, judged, encoded)
      -> CapImagePairs (the mix ratio)
    -> SplitPairs (every candidate pair: its sample or its rejection)

Two ledgers: the run's main one counts videos and images, ``pairs`` every candidate pair.
Each video or image becomes one :class:`InputPairs` holding all of its pairs, so an error
while pairing it leaves one dead letter of the input and no pair counted.

A video is a source-like fan-out: how many pairs it holds is known only once it is
decoded. It is not marked ``source`` (unbalanced, all its outcomes counted as one
ledger's inputs): a video's own rejection or dead letter is the main ledger's, its pairs
are the pair ledger's. Instead each input's record names its pairs, so every row
balances key by key: the pairing stages are 1:1 per input in the main ledger (an input
that keeps no pair is rejected there, its record going on as ``unpaired`` so that its
pairs are still counted), and :class:`SplitPairs` opens the pair ledger with the pairs
each record names, every one of which must leave it once.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import tempfile
from typing import Any, BinaryIO, Iterator, Optional, Sequence

import apache_beam as beam
import cv2
import numpy as np
from apache_beam.pvalue import TaggedOutput

from schemas import Reason, Rejection, SourceImage
from schemas.keys import SOURCE_KEY_HEX_DIGITS, derived_seed
from schemas.sample import mimic_fields
from transforms.checks import check_jpeg_quality, check_seed, is_number, is_unit
from transforms.io.decode import decode_rgb, encode_jpeg
from transforms.io.files import NotARegularFile, open_input
from transforms.io.shards import EncodedSample
from transforms.ledger import RunAccounts, record_uri
from transforms.masks import encode_mask_png
from transforms.mimic import (
    GridMaskConfig,
    MatchConfig,
    Matches,
    SsimBandConfig,
    StaticAugmentConfig,
    check_matches,
    check_ssim_band,
    grid_mask,
    match_frames,
    pair_ssim,
    static_reference,
)
from transforms.stage import UNPAIRED_TAG, Paired, RecordFunction, SplitOutcomes, Stage
from transforms.video import (
    CutConfig,
    Frame,
    PairSamplingConfig,
    VideoDecodeConfig,
    HASH_BITS,
    VideoError,
    VideoSignature,
    read_video,
    sample_pairs,
    shot_boundaries,
    video_seed,
    video_signature,
)

#: The ledger of candidate pairs (its counters are ``pairs.<counter>``).
PAIRS = "pairs"
#: The extra outputs of the pairing stages: inputs none of whose pairs is kept, and histogram counts.
COUNTS_TAG = "counts"
#: Lowest JPEG quality of a training pair.
MIN_JPEG_QUALITY = 50
_CHUNK_BYTES = 8 << 20
#: Videos up to this size are copied to memory, larger ones to a temporary file.
_IN_MEMORY_BYTES = 64 << 20

SSIM_EDGES = tuple(round(0.1 * i, 1) for i in range(-10, 11))
MATCH_EDGES = (0, 1, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclasses.dataclass(frozen=True)
class FramePairSettings:
    """Per-job settings: the base seed, JPEG quality, and ``video_share``: the static-image
    pairs are capped at ``(1 - video_share) / video_share`` times the video pairs (0: no cap).
    ``near_duplicate_bits``: two videos whose frame hashes are at most this many bits apart
    on average (:meth:`~transforms.video.VideoSignature.distance`) are one clip."""

    seed: int = 0
    jpeg_quality: int = 95
    video_share: float = 0.7
    near_duplicate_bits: float = 12.0

    def __post_init__(self) -> None:
        check_seed(self.seed)
        check_jpeg_quality(self.jpeg_quality, minimum=MIN_JPEG_QUALITY)
        if not is_unit(self.video_share) or self.video_share >= 1.0:
            raise ValueError(f"video_share must be in [0, 1), got {self.video_share!r}")
        if not is_number(self.near_duplicate_bits) or not 0 <= self.near_duplicate_bits < HASH_BITS / 2:
            raise ValueError(f"near_duplicate_bits must be a number in [0, {HASH_BITS // 2}), "
                             f"got {self.near_duplicate_bits!r}")

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
class InputPairs:
    """One input (a video, an image) and the outcome of each of its candidate pairs: a sample or a rejection.

    A video's record carries its :class:`~transforms.video.VideoSignature` for :class:`DeduplicateVideos`.
    """

    uri: str
    key: str
    pairs: tuple[EncodedSample | Rejection, ...]
    signature: Optional[VideoSignature] = None

    @property
    def kept(self) -> int:
        return sum(isinstance(pair, EncodedSample) for pair in self.pairs)


# --------------------------------------------------------------------------- one pair


def _histogram_label(value: float, edges: Sequence[float]) -> str:
    """The bin of ``value`` among ``edges`` as ``"lo-hi"`` (the last bin is ``">=lo"``); tally-friendly."""
    for lo, hi in zip(edges, edges[1:]):
        if value < hi:
            return f"{lo:g}-{hi:g}"
    return f">={edges[-1]:g}"


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


def _encode(key: str, source: np.ndarray, reference: np.ndarray, matches: Matches, rules: PairRules, seed: int,
            quality: int, meta: dict[str, Any]) -> EncodedSample:
    """The sample of a kept pair; an image pair's frame columns are Parquet nulls (its JSON's frames are a still's)."""
    mask, grid = grid_mask(source.shape[0], source.shape[1], matches.source_points, rules.grid,
                           np.random.default_rng([seed, 7]))
    meta = {**meta, "matches": {"inliers": matches.inliers, "candidates": matches.candidates},
            "grid": grid, "seed": seed}
    fields = mimic_fields(key, encode_jpeg(source, quality), encode_jpeg(reference, quality), encode_mask_png(mask),
                          meta)
    frames = meta["frames"] if meta["branch"] == "video" else {}
    row = {
        "key": key, "source_key": meta["source_key"], "uri": meta["uri"], "branch": meta["branch"],
        "source_frame": frames.get("source", {}).get("index"), "reference_frame": frames.get("reference", {}).get("index"),
        "gap_s": frames.get("gap_s"), "ssim": meta["ssim"], "inliers": matches.inliers,
        "grid_cells": grid["cells"], "masked_cells": len(grid["masked"]), "seed": seed,
    }
    return EncodedSample(key=key, fields=fields, metadata=row)


def _counted(counts: list[Any]) -> Iterator[TaggedOutput]:
    return (TaggedOutput(COUNTS_TAG, count) for count in counts)


def _outcome(stage: str, record: InputPairs, reason_if_unpaired: tuple[Reason, str]) -> Iterator[Any]:
    """A pairing stage's outputs for one input: its record, or its rejection with the record of its rejected pairs."""
    if record.kept:
        yield record
        return
    yield TaggedOutput(UNPAIRED_TAG, record)
    yield Rejection(record.uri, stage, *reason_if_unpaired, record.key)


# --------------------------------------------------------------------------- videos


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
        with open_input(path) as stream:
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


#: A still image's pair as frames: both from its one frame, at once.
_STILL_FRAMES = {"source": {"index": 0, "time_s": 0.0}, "reference": {"index": 0, "time_s": 0.0}, "gap_s": 0.0}


def _still_video(image: SourceImage) -> dict[str, Any]:
    """A still image as a video: one frame, one shot, decoded whole."""
    return {"key": image.key, "uri": image.uri, "frames_decoded": 1, "shots": 1, "notes": {"truncated": False},
            "truncated": ""}


def _no_augmentation(seed: int) -> dict[str, Any]:
    """A video pair's reference is a decoded frame as it is: no transform, albumentations not used."""
    return {"seed": seed, "albumentations": "", "applied": []}


def _pair_video(decode: VideoDecodeConfig, cuts: CutConfig, sampling: PairSamplingConfig, rules: PairRules,
                settings: FramePairSettings, path: str) -> Iterator[Any]:
    stage = VideoPairs.stage
    try:
        copy, key = local_copy(path)
    except NotARegularFile as error:
        yield Rejection(path, stage, error.reason, error.detail)
        return
    with copy:
        size_bytes = copy.seek(0, io.SEEK_END)
        if not size_bytes:
            yield Rejection(path, stage, Reason.EMPTY_FILE, "zero bytes")
            return
        copy.seek(0)
        try:
            video = read_video(copy, decode, name=path)
        except VideoError as error:
            yield Rejection(path, stage, error.reason, error.detail)
            return
    frames = video.frames
    # Every sample carries both keys, so readers that infer a schema from the first samples see one type.
    notes = {"notes": {"truncated": video.truncated is not None}, "truncated": video.truncated or ""}
    if video.truncated is not None:
        yield from _counted([(("video_notes", "truncated"), 1)])
    shots = shot_boundaries(frames, cuts)
    seed = video_seed(settings.seed, key)
    pairs = sample_pairs(frames, shots, sampling, seed)
    if not pairs:
        yield Rejection(path, stage, Reason.VIDEO_TOO_SHORT,
                        f"{len(frames)} frames in {len(shots)} shots: no pair within the gap limits", key)
        return
    outcomes: list[EncodedSample | Rejection] = []
    for number, (a, b) in enumerate(pairs):
        source, reference = frames[a], frames[b]
        pair_key = f"{key}_f{source.index:06d}_{reference.index:06d}"
        counts, failure, ssim, matches = _judge(source.rgb, reference.rgb, rules, check_band=True)
        yield from _counted(counts)
        if failure is not None:
            outcomes.append(Rejection(path, stage, failure[0], failure[1], pair_key))
            continue
        pair_seed = int(np.random.default_rng([seed, number]).integers(2**62))
        height, width = source.rgb.shape[:2]
        meta = {"branch": "video", "source_key": key, "uri": path, "ssim": ssim,
                "video": {"key": key, "uri": path, "frames_decoded": len(frames), "shots": len(shots), **notes},
                "frames": {"source": _frame_json(source), "reference": _frame_json(reference),
                           "gap_s": round(reference.time_s - source.time_s, 6)},
                "image": {"key": key, "uri": path, "width": width, "height": height},
                "augmentation": _no_augmentation(pair_seed)}
        outcomes.append(_encode(pair_key, source.rgb, reference.rgb, matches, rules, pair_seed,
                                settings.jpeg_quality, meta))
    yield from _outcome(stage, InputPairs(path, key, tuple(outcomes), video_signature(frames, size_bytes)),
                        (Reason.NO_FRAME_PAIR, f"all {len(pairs)} sampled pairs rejected"))


class VideoPairs(Stage):
    """Video paths -> one :class:`InputPairs` per video whose frame pairs were sampled.

    Opens the main ledger (a video is one input) and names its records by path: the
    video's key is known only once it is read. A video none of whose pairs is kept is
    rejected (``no_frame_pair``), its record going to ``unpaired`` so that its pairs
    are still accounted. Histograms of SSIM and inliers go to the run's counts.
    """

    stage = "video_pairs"
    opens_ledger = True
    input_label = "video"
    identity = staticmethod(record_uri)
    extra_tags = (UNPAIRED_TAG, COUNTS_TAG)

    def __init__(self, decode: VideoDecodeConfig, cuts: CutConfig, sampling: PairSamplingConfig, rules: PairRules,
                 settings: FramePairSettings) -> None:
        super().__init__()
        self._configs = (decode, cuts, sampling, rules, settings)

    def record_fn(self) -> RecordFunction:
        return functools.partial(_pair_video, *self._configs)

    def expand(self, paths: beam.PCollection) -> Paired:
        outputs = self.apply_stage(paths)
        RunAccounts.of(paths).add_counts(outputs.extra[COUNTS_TAG])
        return Paired.of(outputs)


# --------------------------------------------------------------------------- one copy of a clip


def _copy_rank(uri_and_signature: tuple[str, VideoSignature]) -> tuple[int, int, str]:
    uri, signature = uri_and_signature
    return -signature.frames, -signature.size_bytes, uri


#: Why a video is rejected as a copy: its reason and detail.
CopyDecision = tuple[Reason, str]


def duplicate_videos(videos: Sequence[tuple[str, str, VideoSignature]], max_bits: float) -> dict[str, CopyDecision]:
    """``uri -> (reason, detail)`` of each video that repeats another among ``(uri, key, signature)``.

    Copies are ranked by :func:`_copy_rank` (most frames, then most bytes, then smallest URI)
    and each is kept unless it repeats one kept before it: the same content key is
    ``duplicate_content``, frame hashes within ``max_bits`` are ``near_duplicate_video``.
    The decision depends on the set of videos only, not on the workers' order.
    """
    keys = {uri: key for uri, key, _ in videos}
    kept: list[tuple[str, VideoSignature]] = []
    decisions: dict[str, CopyDecision] = {}
    for uri, signature in sorted(((uri, signature) for uri, _, signature in videos), key=_copy_rank):
        same = next((other for other, _ in kept if keys[other] == keys[uri]), None)
        if same is not None:
            decisions[uri] = (Reason.DUPLICATE_CONTENT, f"same bytes as {same}")
            continue
        near = next(((other, distance) for other, kept_signature in kept
                     if (distance := signature.distance(kept_signature)) <= max_bits), None)
        if near is not None:
            decisions[uri] = (Reason.NEAR_DUPLICATE_VIDEO,
                              f"frame hashes {near[1]:.1f} of {HASH_BITS} bits from {near[0]}, which is kept")
            continue
        kept.append((uri, signature))
    return decisions


def _signature_of(video: InputPairs) -> tuple[str, str, VideoSignature]:
    return video.uri, video.key, video.signature


def _with_decisions(video: InputPairs, decisions: dict[str, CopyDecision]) -> tuple[InputPairs, Optional[CopyDecision]]:
    return video, decisions.get(video.uri)


def _keep_one_copy(video_and_decision: tuple[InputPairs, Optional[CopyDecision]]) -> Iterator[Any]:
    video, decision = video_and_decision
    if decision is None:
        yield video
        return
    stage = DeduplicateVideos.stage
    pairs = tuple(Rejection(video.uri, stage, *decision, pair.key) for pair in video.pairs)
    yield from _outcome(stage, dataclasses.replace(video, pairs=pairs), decision)


class DeduplicateVideos(Stage):
    """Paired videos -> one copy of each clip; the other copies rejected with all their pairs.

    Two files of the same bytes would write the same sample keys twice (a shard webdataset
    and wids refuse); two encodes of one clip would give the same pairs twice. Copies are
    found by content key, or by frame hashes at fixed times (:func:`duplicate_videos`),
    over every paired video at once (:meth:`prepare` hands each record the decisions, as
    :class:`CapImagePairs` does its threshold), so the job compares ``n^2 / 2`` pairs of
    small signatures. Records are named by URI: copies share their content key.
    """

    stage = "video_dedup"
    identity = staticmethod(record_uri)
    extra_tags = (UNPAIRED_TAG,)

    def __init__(self, settings: FramePairSettings) -> None:
        super().__init__()
        self._max_bits = settings.near_duplicate_bits

    def prepare(self, videos: beam.PCollection) -> beam.PCollection:
        decisions = (videos
                     | "Signatures" >> beam.Map(_signature_of)
                     | "AllSignatures" >> beam.combiners.ToList()
                     | "Decide" >> beam.Map(duplicate_videos, self._max_bits))
        return videos | "WithDecisions" >> beam.Map(_with_decisions, beam.pvalue.AsSingleton(decisions))

    def record_fn(self) -> RecordFunction:
        return _keep_one_copy

    def expand(self, videos: beam.PCollection) -> Paired:
        return Paired.of(self.apply_stage(videos))


# --------------------------------------------------------------------------- still images


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


def _pair_image(short_side: int, augment: StaticAugmentConfig, rules: PairRules, settings: FramePairSettings,
                source: SourceImage) -> Iterator[Any]:
    stage = ImagePairs.stage
    rgb = reduce_short_side(decode_rgb(source.jpeg), short_side)
    seed = image_seed(settings.seed, source.key)
    reference, augmentation = static_reference(rgb, augment, seed)
    flipped = any(step["name"] == "HorizontalFlip" for step in augmentation["applied"])
    pair_key = f"{source.key}_aug"
    counts, failure, ssim, matches = _judge(rgb, reference, rules, check_band=False,
                                            match_against=np.fliplr(reference) if flipped else None)
    yield from _counted(counts)
    if failure is not None:
        pair = Rejection(source.uri, stage, failure[0], failure[1], pair_key)
        yield from _outcome(stage, InputPairs(source.uri, source.key, (pair,)), (Reason.NO_FRAME_PAIR, failure[1]))
        return
    meta = {"branch": "image", "source_key": source.key, "uri": source.uri, "ssim": ssim,
            "video": _still_video(source), "frames": _STILL_FRAMES,
            "image": {"key": source.key, "uri": source.uri, "width": source.width, "height": source.height},
            "augmentation": augmentation}
    sample = _encode(pair_key, rgb, reference, matches, rules, seed, settings.jpeg_quality, meta)
    yield InputPairs(source.uri, source.key, (sample,))


class ImagePairs(Stage):
    """Source images -> one :class:`InputPairs` per image: the image and a strongly augmented copy of it.

    One image, one pair: an image whose pair has too few matches is rejected
    (``no_frame_pair``), its record going to ``unpaired``. Images are reduced like video
    frames (``short_side``). The SSIM band is not applied: the augmentation, not the
    scene, decides how alike the two are.
    """

    stage = "image_pairs"
    extra_tags = (UNPAIRED_TAG, COUNTS_TAG)

    def __init__(self, short_side: int, augment: StaticAugmentConfig, rules: PairRules,
                 settings: FramePairSettings) -> None:
        super().__init__()
        self._configs = (short_side, augment, rules, settings)

    def record_fn(self) -> RecordFunction:
        return functools.partial(_pair_image, *self._configs)

    def expand(self, images: beam.PCollection) -> Paired:
        outputs = self.apply_stage(images)
        RunAccounts.of(images).add_counts(outputs.extra[COUNTS_TAG])
        return Paired.of(outputs)


# --------------------------------------------------------------------------- mix ratio


def _pair_rank(image: InputPairs) -> int:
    """A deterministic, uniform order of image pairs for the mix cap (not the key order)."""
    (sample,) = image.pairs
    return int.from_bytes(hashlib.blake2b(sample.key.encode("utf-8"), digest_size=8).digest(), "big")


def _cap_threshold(ranks: list[int], video_pairs: int, settings: FramePairSettings) -> Optional[int]:
    """The largest rank kept under the mix cap; ``None``: keep all."""
    cap = settings.static_cap(video_pairs)
    if cap is None or cap >= len(ranks):
        return None
    return sorted(ranks)[cap - 1] if cap > 0 else -1


def _with_threshold(image: InputPairs, threshold: Optional[int]) -> tuple[InputPairs, Optional[int]]:
    return image, threshold


def _cap(image_and_threshold: tuple[InputPairs, Optional[int]]) -> Iterator[Any]:
    image, threshold = image_and_threshold
    if threshold is None or _pair_rank(image) <= threshold:
        yield image
        return
    (sample,) = image.pairs
    stage = CapImagePairs.stage
    capped = Rejection(image.uri, stage, Reason.OVER_MIX_RATIO, "image pairs capped", sample.key)
    yield from _outcome(stage, dataclasses.replace(image, pairs=(capped,)),
                        (Reason.OVER_MIX_RATIO, "its pair was capped"))


class CapImagePairs(Stage):
    """Paired images -> those within the mix ratio; the others rejected (``over_mix_ratio``) with their pair.

    The cap is ``settings.static_cap`` of the pairs kept in ``paired_videos`` (the
    :class:`VideoPairs` records that keep a pair; ``None``: no video branch, so none).
    Which images stay is a hash of their pair keys, not the key order, so the kept share
    is a uniform draw that does not depend on the workers. The threshold that draw sets
    needs every image pair, so :meth:`prepare` computes it once and hands it to each
    record beside its image: the record function still decides one image at a time.
    """

    stage = "mix"
    extra_tags = (UNPAIRED_TAG,)

    def __init__(self, settings: FramePairSettings, paired_videos: Optional[beam.PCollection]) -> None:
        super().__init__()
        self._settings = settings
        self._paired_videos = paired_videos

    def prepare(self, images: beam.PCollection) -> beam.PCollection:
        if self._paired_videos is None:
            video_pairs = images.pipeline | "NoVideoPairs" >> beam.Create([0])
        else:
            video_pairs = (self._paired_videos
                           | "KeptVideoPairs" >> beam.Map(lambda video: video.kept)
                           | "CountVideoPairs" >> beam.CombineGlobally(sum))
        threshold = (images
                     | "Ranks" >> beam.Map(_pair_rank)
                     | "AllRanks" >> beam.combiners.ToList()
                     | "CapThreshold" >> beam.Map(_cap_threshold, beam.pvalue.AsSingleton(video_pairs), self._settings))
        return images | "WithThreshold" >> beam.Map(_with_threshold, beam.pvalue.AsSingleton(threshold))

    def record_fn(self) -> RecordFunction:
        return _cap

    def expand(self, images: beam.PCollection) -> Paired:
        return Paired.of(self.apply_stage(images))


# --------------------------------------------------------------------------- the pair ledger


def _pairs_of(record: InputPairs) -> tuple[EncodedSample | Rejection, ...]:
    return record.pairs


class SplitPairs(SplitOutcomes):
    """:class:`InputPairs` -> their pairs, each a sample to write or its rejection: the pair ledger's first stage."""

    stage = "split_pairs"
    unit = PAIRS
    parts = staticmethod(_pairs_of)
