"""Video frames for MimicBrush pairs: decode at reduced size, split into shots, sample frame pairs.

One video per call, no Beam here: the ``video_pairs`` stage
(:class:`transforms.frame_pairs.VideoPairs`) calls :func:`read_video`,
:func:`shot_boundaries` and :func:`sample_pairs` in turn, and :func:`video_signature` for
finding copies of one clip. Two frames of a pair always come
from the same shot, so that the reference frame shows the same scene as the source frame.

Input the container cannot hold (not a video, no video stream, nothing decodable) raises
:class:`VideoError` with a stable :class:`~schemas.Reason`; the caller turns it into a
rejection. Errors about where the file is (missing, unreadable, network) are not the
video's fault and propagate, so that Beam retries or dead-letters the input.

Memory: :func:`read_video` holds every kept frame; at the defaults a 16:9 video may keep
2000 frames of 910x512 RGB, about 2.8 GB. Long videos want a ``frame_step`` or a lower
``max_frames``.
"""
from __future__ import annotations

import dataclasses
import errno
import io
import logging
import math
from fractions import Fraction
from typing import BinaryIO, Optional, Sequence, Union

import av
import cv2
import numpy as np
from av.stream import Disposition

from schemas import Reason
from schemas.keys import derived_seed
from transforms.checks import check_seed, is_int, is_integral, is_number

logger = logging.getLogger(__name__)

#: Smallest ``short_side``: smaller frames are too small to score or match as a pair.
MIN_SHORT_SIDE = 16

#: Width of the thumbnails that :func:`cut_scores` compares; fine detail only adds motion noise.
THUMB_WIDTH = 64

#: Levels per channel of the joint RGB histograms in :func:`cut_scores` (``RGB_LEVELS ** 3`` bins).
RGB_LEVELS = 6

#: Gaussian blur (thumbnail pixels) before the structure term, so that one-pixel shifts stay correlated.
STRUCTURE_BLUR_SIGMA = 1.0

#: Regulariser of the structure term in grey levels squared: SSIM's ``C2 = (0.03 * 255) ** 2``.
#: Keeps flat frames (black, fades) from turning noise into "no correlation".
STRUCTURE_C = (0.03 * 255) ** 2

#: Tolerance on pair gaps: timestamps are rationals rounded to floats.
GAP_TOLERANCE_S = 1e-6

# Demuxers of still images: a photo in a video folder is not a one-frame video.
_IMAGE_FORMATS = frozenset({"image2", "image2pipe"})


class VideoError(Exception):
    """A video that cannot be used, with its stable reason code (the caller turns it into a rejection)."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class VideoDecodeConfig:
    """How a video is decoded.

    ``short_side``: frames are resized (area interpolation) so that their shorter side is
    this; smaller frames are kept as they are, never upscaled. ``max_frames``: decoding
    stops after this many frames, so a long video costs a bounded time. ``frame_step``:
    every k-th decoded frame is kept (the others are decoded, as later frames need them,
    but not converted). The default bounds a worker's memory: at most 600 frames, about
    0.85 GB for a 16:9 video at 512 (24 s at 25 fps; ``frame_step: 2`` covers twice that).
    """

    short_side: int = 512
    max_frames: int = 600
    frame_step: int = 1

    def __post_init__(self) -> None:
        if not is_integral(self.short_side) or self.short_side < MIN_SHORT_SIDE:
            raise ValueError(f"short_side must be an integer >= {MIN_SHORT_SIDE}, got {self.short_side!r}")
        for name in ("max_frames", "frame_step"):
            value = getattr(self, name)
            if not is_integral(value) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Frame:
    """One decoded frame.

    ``index`` counts the frames the decoder produced (0-based, before ``frame_step``), so it
    names the same frame whatever the step. ``time_s`` is the presentation time in seconds
    (``pts * time_base``; see :func:`read_frames`). ``rgb`` is ``HxWx3`` uint8, upright, at
    the reduced size.
    """

    index: int
    time_s: float
    rgb: np.ndarray


@dataclasses.dataclass(frozen=True)
class CutConfig:
    """How shots are found. ``threshold``: :func:`cut_scores` value above which two consecutive
    frames are a cut. ``min_shot_frames``: a cut fewer frames than this after the previous
    one (or the first frame) is ignored, so a flash or a glitch does not make a shot."""

    threshold: float = 0.35
    min_shot_frames: int = 5

    def __post_init__(self) -> None:
        if not is_number(self.threshold) or not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be a number in (0, 1], got {self.threshold!r}")
        if not is_integral(self.min_shot_frames) or self.min_shot_frames < 1:
            raise ValueError(f"min_shot_frames must be an integer >= 1, got {self.min_shot_frames!r}")


@dataclasses.dataclass(frozen=True)
class PairSamplingConfig:
    """Which frame pairs are drawn: frames of one shot, ``min_gap_s`` to ``max_gap_s`` seconds
    apart (far enough for the scene to change, near enough for it to be the same scene), at
    most ``max_pairs`` per video."""

    min_gap_s: float = 0.5
    max_gap_s: float = 5.0
    max_pairs: int = 10

    def __post_init__(self) -> None:
        for name in ("min_gap_s", "max_gap_s"):
            value = getattr(self, name)
            if not is_number(value) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.max_gap_s <= 0 or self.min_gap_s > self.max_gap_s:
            raise ValueError(f"need 0 <= min_gap_s <= max_gap_s and max_gap_s > 0, "
                             f"got {self.min_gap_s!r} and {self.max_gap_s!r}")
        if not is_integral(self.max_pairs) or self.max_pairs < 1:
            raise ValueError(f"max_pairs must be an integer >= 1, got {self.max_pairs!r}")


@dataclasses.dataclass(frozen=True)
class DecodedVideo:
    """A video's frames, and why they may be fewer than it should hold.

    ``truncated`` (``None`` when whole) says how decoding ended short of what the container
    declares: a decoding error or a corrupt frame after some frames (a damaged tail), or a
    clean end well before the declared frame count or duration (a file cut between packets).
    Stopping at ``max_frames`` is not truncation.
    """

    frames: list[Frame]
    truncated: Optional[str] = None


def read_frames(source: Union[str, BinaryIO], config: VideoDecodeConfig, name: Optional[str] = None) -> list[Frame]:
    """The frames of ``source``, as :func:`read_video` reads them."""
    return read_video(source, config, name).frames


def read_video(source: Union[str, BinaryIO], config: VideoDecodeConfig, name: Optional[str] = None) -> DecodedVideo:
    """The frames of ``source`` (a path or a seekable binary file object), in presentation order.

    ``name`` is what warnings call the video (default: the path, or the file object's name).

    The first video stream is decoded (cover art is not a video stream). Frames are made
    upright (the display rotation), their pixels square (the sample aspect ratio, by
    shrinking one side), then reduced to ``config.short_side``.

    ``time_s`` comes from each frame's pts (else dts; else, in raw streams that carry no
    timestamps, the previous time plus one frame at the frame rate FFmpeg guesses). The
    decoder returns frames in presentation order, but some files (AVI with packed B-frames)
    attach the timestamps in decode order; so the decoded frames' times are sorted before
    they are assigned, which leaves correct timestamps, variable frame rates included, as
    they are. A frame whose time does not advance (a muxer's duplicate) is dropped, so
    times strictly increase.

    A decoding error, or a frame the decoder flags as corrupt, ends decoding: after some
    frames it keeps those (a damaged tail loses only the tail), logs a warning and says so in
    ``truncated``; before any frame it raises ``CORRUPT_VIDEO``.
    """
    try:
        container = av.open(source if isinstance(source, str) else _SeekGuard(source), metadata_errors="replace")
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise  # where the file is, not what it holds: not a rejection
    except av.error.FFmpegError as error:
        raise VideoError(Reason.NOT_A_VIDEO, f"cannot open as a media container: {error}") from error
    with container:
        formats = set(container.format.name.split(","))
        if formats & _IMAGE_FORMATS or any(name.endswith("_pipe") for name in formats):
            raise VideoError(Reason.NOT_A_VIDEO, f"a still image ({container.format.name})")
        stream = _video_stream(container)
        if name is None:
            name = source if isinstance(source, str) else str(getattr(source, "name", "?"))
        return _decode(container, stream, config, name)


class _SeekGuard:
    """A file object as PyAV reads it, where a seek to an impossible position fails as in FFmpeg's own file reader.

    FFmpeg probes by seeking relative to the end; in a file shorter than the probe the
    position is negative and a local file object raises ``OSError`` (``EINVAL``), which PyAV
    would pass on as if the storage had failed. Returned as an error code instead, FFmpeg
    handles it: the input is then not a video. Read errors still propagate.
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file

    def read(self, size: int) -> bytes:
        return self._file.read(size)

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        try:
            return self._file.seek(offset, whence)
        except OSError as error:
            if error.errno != errno.EINVAL:
                raise
        except ValueError:  # in-memory files: "negative seek value"
            pass
        return -errno.EINVAL  # AVERROR(EINVAL)


def _video_stream(container: av.container.InputContainer) -> av.VideoStream:
    for stream in container.streams.video:
        if stream.codec_context is not None and not stream.disposition & Disposition.attached_pic:
            return stream
    kinds = ", ".join(stream.type for stream in container.streams) or "none"
    raise VideoError(Reason.NO_VIDEO_STREAM, f"no decodable video stream (streams: {kinds})")


def _decode(container: av.container.InputContainer, stream: av.VideoStream, config: VideoDecodeConfig,
            name: str) -> DecodedVideo:
    stream.thread_type = "AUTO"  # frame and slice threads, as the codec allows
    sar = stream.sample_aspect_ratio
    sar = float(sar) if sar and sar > 0 else 1.0
    rate = stream.guessed_rate or stream.average_rate  # FFmpeg's guess reads the codec's timing too
    stamps: list[Optional[float]] = []  # every decoded frame's timestamp, seconds
    kept: list[tuple[int, np.ndarray]] = []
    failure: Optional[str] = None
    try:
        for frame in container.decode(stream):
            if frame.is_corrupt:  # concealed damage, e.g. the half-decoded last frame of a truncated file
                failure = "the decoder flagged a frame as corrupt"
                break
            index = len(stamps)
            stamps.append(_stamp(frame, stream.time_base))
            if index % config.frame_step == 0:
                kept.append((index, _to_rgb(frame, sar, config.short_side)))
            if len(stamps) == config.max_frames:
                break
    except av.error.FFmpegError as error:
        failure = str(error)
    if failure is not None:
        if not stamps:
            raise VideoError(Reason.CORRUPT_VIDEO, f"decoding failed before any frame: {failure}")
        logger.warning("%s: video decoding stopped after %d frames: %s", name, len(stamps), failure)
    if not stamps:
        raise VideoError(Reason.EMPTY_VIDEO, "the video stream holds no decodable frame")
    times = _times(stamps, rate)
    truncated = f"decoding stopped after {len(stamps)} frames: {failure}" if failure is not None else None
    if truncated is None and len(stamps) < config.max_frames:
        truncated = _short_of_declared(container, stream, len(stamps), float(times[-1] - times[0]), rate)
    frames: list[Frame] = []
    for index, rgb in kept:
        time_s = float(times[index])
        if frames and time_s <= frames[-1].time_s:
            logger.debug("%s: frame %d dropped, its time %.6f s does not advance", name, index, time_s)
            continue
        frames.append(Frame(index=index, time_s=time_s, rgb=rgb))
    return DecodedVideo(frames, truncated)


#: How far short of its declared length a video may end and still be whole: this share of the
#: declared frames or duration, at least :data:`_SHORT_FRAMES` frames (rounding, a muxer's duplicates).
_SHORT_SHARE = 0.02
_SHORT_FRAMES = 2


def _short_of_declared(container: av.container.InputContainer, stream: av.VideoStream, decoded: int,
                       span_s: float, rate: Optional[Fraction]) -> Optional[str]:
    """Why a video that decoded to its end without an error is shorter than its container says, or ``None``.

    The stream's frame count (MP4, AVI) is compared first; else the stream's duration, else
    the container's (Matroska records only that; it may include a longer audio track, hence
    the tolerance).
    """
    if stream.frames and decoded + max(_SHORT_FRAMES, _SHORT_SHARE * stream.frames) < stream.frames:
        return f"{decoded} of {stream.frames} declared frames"
    if not rate:
        return None
    if stream.duration and stream.time_base:
        declared = float(stream.duration * stream.time_base)
    elif container.duration:
        declared = container.duration / av.time_base
    else:
        return None
    interval = 1.0 / float(rate)
    if span_s + interval + max(_SHORT_FRAMES * interval, _SHORT_SHARE * declared) < declared:
        return f"{span_s + interval:.2f} s of {declared:.2f} s declared"
    return None


def _stamp(frame: av.VideoFrame, time_base: Optional[Fraction]) -> Optional[float]:
    value = frame.pts if frame.pts is not None else frame.dts
    return None if value is None or time_base is None else float(value * time_base)


def _times(stamps: Sequence[Optional[float]], rate: Optional[Fraction]) -> np.ndarray:
    """Seconds per decoded frame: the stamps, gaps filled at ``rate``, sorted (see :func:`read_frames`)."""
    filled: list[float] = []
    for stamp in stamps:
        if stamp is None:
            if not rate:
                raise VideoError(Reason.CORRUPT_VIDEO, "frames without timestamps and no frame rate")
            stamp = filled[-1] + 1.0 / float(rate) if filled else 0.0
        filled.append(stamp)
    return np.sort(np.asarray(filled, dtype=np.float64))


def _target_size(width: int, height: int, sar: float, short_side: int) -> tuple[int, int]:
    """``(width, height)`` of a frame once its pixels are square and its shorter side at most ``short_side``.

    Square pixels come from shrinking the side the sample aspect ratio stretches, so no
    side ever grows.
    """
    display_width = width * min(sar, 1.0)
    display_height = height / max(sar, 1.0)
    scale = min(1.0, short_side / min(display_width, display_height))
    return max(1, round(display_width * scale)), max(1, round(display_height * scale))


def _to_rgb(frame: av.VideoFrame, sar: float, short_side: int) -> np.ndarray:
    width, height = _target_size(frame.width, frame.height, sar, short_side)
    # One swscale thread: parallelism comes from the workers; per-frame threads cost more than they give.
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA", threads=1).to_ndarray()
    quarter_turns = round(frame.rotation / 90) % 4  # counter-clockwise, as the display matrix says
    if quarter_turns:
        rgb = np.rot90(rgb, quarter_turns)
    return np.ascontiguousarray(rgb)


def cut_scores(frames: Sequence[Frame], step: int = 1) -> np.ndarray:
    """How much the content changes between frames ``step`` apart: ``scores[i]`` compares positions ``i``, ``i + step``.

    Each frame is reduced to a ``THUMB_WIDTH``-pixel-wide thumbnail (all to the first
    frame's shape). The score, in [0, 1], is the mean of two terms:

    * colour: the Hellinger (Bhattacharyya) distance between the thumbnails' soft-binned
      joint RGB histograms (``RGB_LEVELS`` per channel), in [0, 1]; blind to where things
      are, so motion barely moves it;
    * structure: ``1 - NCC`` of the blurred grey thumbnails, clipped to [0, 1], with the
      correlation regularised like SSIM's contrast-structure term (``STRUCTURE_C``); blind
      to brightness and contrast, so fades and flicker barely move it.

    A hard cut changes both (each typically 0.3 to 1); motion, pans, fades and dissolves
    move one term, a little per frame. On the sample videos measured, consecutive frames
    across a cut scored 0.46 to 0.96 and within a shot at most 0.26 (a car crossing the
    whole frame), hence the default threshold of 0.35. This holds for frames at a steady
    rate: a large ``frame_step`` turns fast motion into apparent cuts.
    """
    if not is_int(step) or step < 1:
        raise ValueError(f"step must be an integer >= 1, got {step!r}")
    if len(frames) <= step:
        return np.zeros(0)
    return _scores(_features(frames), step)


def _scores(features: tuple[np.ndarray, np.ndarray, np.ndarray], step: int) -> np.ndarray:
    histograms, greys, variances = features
    overlap = np.sum(np.sqrt(histograms[step:] * histograms[:-step]), axis=1)
    colour = np.sqrt(np.clip(1.0 - overlap, 0.0, 1.0))
    covariance = np.mean(greys[step:] * greys[:-step], axis=1)
    spread = np.sqrt((variances[step:] + STRUCTURE_C) * (variances[:-step] + STRUCTURE_C))
    correlation = (covariance + STRUCTURE_C) / spread
    structure = np.clip(1.0 - correlation, 0.0, 1.0)
    return (colour + structure) / 2.0


def _features(frames: Sequence[Frame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: the RGB histogram, the centred blurred grey thumbnail (flattened), its variance."""
    first = frames[0].rgb
    size = (THUMB_WIDTH, max(1, round(THUMB_WIDTH * first.shape[0] / first.shape[1])))
    histograms = np.empty((len(frames), RGB_LEVELS ** 3))
    greys = np.empty((len(frames), size[0] * size[1]))
    for position, frame in enumerate(frames):
        thumb = _thumbnail(frame.rgb, size)
        histograms[position] = _rgb_histogram(thumb)
        grey = cv2.cvtColor(thumb, cv2.COLOR_RGB2GRAY).astype(np.float64)
        grey = cv2.GaussianBlur(grey, (0, 0), STRUCTURE_BLUR_SIGMA)
        greys[position] = grey.ravel() - grey.mean()
    return histograms, greys, np.mean(greys * greys, axis=1)


def _thumbnail(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``rgb`` area-reduced to ``size``, from its centre crop at a whole multiple of ``size``.

    Whole-number area reduction is several times faster than fractional; the crop loses
    less than one reduction factor of pixels on each axis, nothing a cut detector misses.
    """
    width, height = size
    factor = min(rgb.shape[1] // width, rgb.shape[0] // height)
    if factor >= 1:
        top, left = (rgb.shape[0] - height * factor) // 2, (rgb.shape[1] - width * factor) // 2
        rgb = rgb[top:top + height * factor, left:left + width * factor]
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _rgb_histogram(thumb: np.ndarray) -> np.ndarray:
    """The joint RGB histogram of a thumbnail, summing to 1, with trilinear soft binning.

    Each pixel is shared between the two nearest levels of each channel, so a colour
    drifting across a bin edge (a fade, a dissolve) moves the histogram smoothly.
    """
    position = thumb.reshape(-1, 3).astype(np.float64) * (RGB_LEVELS / 256.0) - 0.5
    low = np.floor(position)
    upper = position - low
    levels = np.clip(low.astype(np.int64)[:, :, None] + [0, 1], 0, RGB_LEVELS - 1)  # pixel, channel, lower/upper
    weights = np.stack([1.0 - upper, upper], axis=2)
    red, green, blue = (levels[:, channel, :] for channel in range(3))
    index = (red[:, :, None, None] * RGB_LEVELS + green[:, None, :, None]) * RGB_LEVELS + blue[:, None, None, :]
    weight = weights[:, 0, :, None, None] * weights[:, 1, None, :, None] * weights[:, 2, None, None, :]
    return np.bincount(index.ravel(), weights=weight.ravel(), minlength=RGB_LEVELS ** 3) / len(position)


def shot_boundaries(frames: Sequence[Frame], config: CutConfig) -> list[tuple[int, int]]:
    """The shots of ``frames`` as ``[start, end)`` ranges of list positions (not ``Frame.index``), in order.

    A cut is declared before position ``i`` when the change lasts: the :func:`cut_scores`
    of ``(i - 1, i)``, ``(i - 1, i + 1)`` and ``(i - 2, i)`` are all above
    ``config.threshold`` (the last two where those frames exist). So one odd frame, a
    flash or a damaged frame, whose change reverts on the next frame, makes no cut on
    either side. A cut that would leave the shot it ends shorter than
    ``config.min_shot_frames`` is ignored. No frames, no shots.
    """
    if len(frames) < 2:
        return [(0, len(frames))] if frames else []
    features = _features(frames)
    adjacent = _scores(features, 1) > config.threshold
    skipping = _scores(features, 2) > config.threshold  # empty for two frames
    lasting = adjacent & np.append(skipping, True) & np.insert(skipping, 0, True)
    starts = [0]
    for position in np.flatnonzero(lasting) + 1:
        if position - starts[-1] >= config.min_shot_frames:
            starts.append(int(position))
    return list(zip(starts, starts[1:] + [len(frames)]))


def sample_pairs(frames: Sequence[Frame], shots: Sequence[tuple[int, int]], config: PairSamplingConfig,
                 seed: int) -> list[tuple[int, int]]:
    """Up to ``config.max_pairs`` distinct pairs of list positions ``(a, b)``, ``a < b``, sorted.

    A valid pair lies inside one shot with ``min_gap_s <= time_s[b] - time_s[a] <= max_gap_s``
    (within ``GAP_TOLERANCE_S``). The pairs are drawn uniformly without replacement among
    all valid pairs, without listing them: each first frame's partners are a contiguous run
    of positions (times increase), so the pairs are numbered run by run and the draw picks
    numbers. ``O(n log n)`` for ``n`` frames; the same input and seed give the same pairs.
    """
    check_seed(seed)
    times = np.asarray([frame.time_s for frame in frames], dtype=np.float64)
    if np.any(np.diff(times) <= 0):
        raise ValueError("frame times must strictly increase")
    rows, firsts, counts = [], [], []  # per candidate first frame: its position, first partner, partners
    previous_end = 0
    for start, end in shots:
        if not (is_int(start) and is_int(end) and previous_end <= start < end <= len(frames)):
            raise ValueError(f"shots must be ordered, disjoint [start, end) ranges within {len(frames)} frames, "
                             f"got {list(shots)!r}")
        previous_end = end
        shot = times[start:end]
        low = np.searchsorted(shot, shot + config.min_gap_s - GAP_TOLERANCE_S, side="left")
        low = np.maximum(low, np.arange(1, end - start + 1))  # b > a
        high = np.searchsorted(shot, shot + config.max_gap_s + GAP_TOLERANCE_S, side="right")
        rows.append(np.arange(start, end))
        firsts.append(start + low)
        counts.append(np.maximum(high - low, 0))
    if not counts:
        return []
    first_frame, first_partner, partners = np.concatenate(rows), np.concatenate(firsts), np.concatenate(counts)
    total = int(partners.sum())
    if total == 0:
        return []
    drawn = np.sort(np.random.default_rng(seed).choice(total, size=min(config.max_pairs, total), replace=False))
    ends = np.cumsum(partners)
    row = np.searchsorted(ends, drawn, side="right")
    partner = first_partner[row] + drawn - (ends[row] - partners[row])
    return [(int(a), int(b)) for a, b in zip(first_frame[row], partner)]


#: Seconds after a video's first frame at which :func:`video_signature` hashes the nearest frame.
SIGNATURE_TIMES_S = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0)
#: Bits of one frame's difference hash: 8 rows of 8 left-right comparisons.
HASH_BITS = 64


@dataclasses.dataclass(frozen=True)
class VideoSignature:
    """What tells two copies of one clip apart from two clips, and which copy to keep.

    ``hashes``: a difference hash (:func:`frame_hash`) of the frame nearest each of
    :data:`SIGNATURE_TIMES_S` that the video reaches. Fixed times, not shares of the length,
    so a truncated copy hashes the same frames as the whole. ``frames`` and ``size_bytes``
    rank copies: the longer, then the larger (less compressed) is kept.
    """

    hashes: tuple[int, ...]
    frames: int
    size_bytes: int

    def distance(self, other: "VideoSignature") -> float:
        """Mean Hamming distance of the hashes at the times both videos reach, in bits of :data:`HASH_BITS`."""
        common = min(len(self.hashes), len(other.hashes))
        return sum(bin(a ^ b).count("1") for a, b in zip(self.hashes[:common], other.hashes[:common])) / common


def frame_hash(rgb: np.ndarray) -> int:
    """A 64-bit difference hash: is each cell of an 9x8 grey thumbnail darker than its right neighbour.

    Blind to scale, compression and mild colour changes; two different scenes differ in
    about half the bits (on the sample clips: 21-41 of 64 apart, a re-encode of one 7-9).
    """
    grey = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (grey[:, 1:] > grey[:, :-1]).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def video_signature(frames: Sequence[Frame], size_bytes: int) -> VideoSignature:
    """The :class:`VideoSignature` of a decoded video (at least one frame)."""
    times = np.asarray([frame.time_s for frame in frames]) - frames[0].time_s
    reached = [t for t in SIGNATURE_TIMES_S if t <= times[-1] + GAP_TOLERANCE_S]
    nearest = [int(np.argmin(np.abs(times - t))) for t in reached]
    return VideoSignature(tuple(frame_hash(frames[i].rgb) for i in nearest), len(frames), size_bytes)


def video_seed(base_seed: int, video_key: str) -> int:
    """The pair-sampling seed of one video: the same for the same key and base seed on any machine."""
    return derived_seed(base_seed, "video", video_key)
