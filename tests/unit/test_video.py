"""Video frames: decoding (sizes, times, damaged input), shots, pair sampling.

Every video is synthetic, written here with PyAV's mpeg4 encoder: three shots of a moving
pattern, each in its own colours and layout, at 10 fps.
"""
from __future__ import annotations

import fractions
import io
import itertools
import logging
import pathlib
import pickle

import av
import numpy as np
import pytest
from apache_beam.pvalue import TaggedOutput
from av.stream import Disposition
from PIL import Image
from scipy import stats

from schemas import Reason, Rejection
from tests.clips import bundled_clip, remux
from transforms.frame_pairs import (
    COUNTS_TAG,
    UNPAIRED_TAG,
    FramePairSettings,
    InputPairs,
    PairRules,
    VideoPairs,
    duplicate_videos,
)
from transforms.video import (
    CutConfig,
    Frame,
    PairSamplingConfig,
    VideoDecodeConfig,
    VideoError,
    VideoSignature,
    cut_scores,
    read_frames,
    read_video,
    sample_pairs,
    shot_boundaries,
    video_seed,
    video_signature,
)

pytestmark = pytest.mark.skipif("mpeg4" not in av.codecs_available, reason="PyAV's FFmpeg has no mpeg4 encoder")

HEIGHT, WIDTH = 96, 128
FPS = 10
SHOT_FRAMES = 20
_YY, _XX = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
# Per shot: base colour, stripe direction (dy, dx), stripe frequency.
_SCENES = (((200, 60, 40), (0.0, 1.0), 0.25), ((40, 170, 70), (1.0, 0.0), 0.35), ((50, 80, 210), (0.7, 0.7), 0.2))


def scene(shot: int, t: int) -> np.ndarray:
    """Frame ``t`` of shot ``shot``: drifting stripes and a disc moving on a circle."""
    colour, (dy, dx), frequency = _SCENES[shot]
    stripes = 0.5 + 0.5 * np.sin(frequency * (_XX * dx + _YY * dy) - 0.3 * t)
    base = np.array(colour, dtype=np.float64)
    image = base * (0.4 + 0.6 * stripes[..., None])
    cy, cx = HEIGHT / 2 + 20 * np.sin(0.2 * t + shot), WIDTH / 2 + 30 * np.cos(0.2 * t + 2 * shot)
    image[(_YY - cy) ** 2 + (_XX - cx) ** 2 < 15 ** 2] = 255 - base
    return np.clip(image, 0, 255).astype(np.uint8)


def three_shots() -> list[np.ndarray]:
    return [scene(shot, t) for shot in range(3) for t in range(SHOT_FRAMES)]


def write_video(path, frames, *, codec="mpeg4", fmt=None, packet_pts=None, time_base=None, rotation=None, sar=None,
                gop_size=None):
    """Encode RGB ``frames``; ``packet_pts`` (with ``time_base``) replace the packets' timestamps."""
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        stream.bit_rate = 4_000_000
        if gop_size is not None:
            stream.codec_context.gop_size = gop_size
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        if rotation is not None:
            stream.set_display_rotation(rotation)
        pictures = [av.VideoFrame.from_ndarray(rgb, format="rgb24") for rgb in frames]
        packets = [packet for picture in pictures for packet in stream.encode(picture)]
        packets += stream.encode()
        for number, packet in enumerate(packets):
            if packet_pts is not None:
                packet.pts, packet.dts, packet.time_base = packet_pts[number], number, time_base
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def shots_path(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "shots.mkv", three_shots())


@pytest.fixture(scope="module")
def shots_frames(shots_path):
    return read_frames(str(shots_path), VideoDecodeConfig())


def assert_same_frames(actual, expected):
    assert [(f.index, f.time_s) for f in actual] == [(f.index, f.time_s) for f in expected]
    for a, b in zip(actual, expected):
        np.testing.assert_array_equal(a.rgb, b.rgb)


# --- read_frames ---------------------------------------------------------------------------------------------


def test_reads_every_frame_at_native_size_in_time_order(shots_frames):
    assert len(shots_frames) == 3 * SHOT_FRAMES
    assert [f.index for f in shots_frames] == list(range(3 * SHOT_FRAMES))
    np.testing.assert_allclose([f.time_s for f in shots_frames], np.arange(3 * SHOT_FRAMES) / FPS, atol=1e-9)
    for frame, source in zip(shots_frames, three_shots()):
        assert frame.rgb.shape == (HEIGHT, WIDTH, 3) and frame.rgb.dtype == np.uint8
        assert frame.rgb.flags.c_contiguous
        assert np.abs(frame.rgb.astype(int) - source).mean() < 8  # the codec's loss only


def test_reduces_the_short_side_and_never_upscales(shots_path):
    small = read_frames(str(shots_path), VideoDecodeConfig(short_side=48, max_frames=3))
    assert {f.rgb.shape for f in small} == {(48, 64, 3)}
    native = read_frames(str(shots_path), VideoDecodeConfig(short_side=512, max_frames=3))
    assert {f.rgb.shape for f in native} == {(HEIGHT, WIDTH, 3)}


def test_a_file_object_reads_like_a_path(shots_path, shots_frames):
    with open(shots_path, "rb") as stream:
        assert_same_frames(read_frames(stream, VideoDecodeConfig()), shots_frames)
    assert_same_frames(read_frames(io.BytesIO(shots_path.read_bytes()), VideoDecodeConfig()), shots_frames)


@pytest.mark.parametrize("frame_step, max_frames, indices", [
    (3, 2000, list(range(0, 60, 3))),
    (1, 10, list(range(10))),
    (3, 10, [0, 3, 6, 9]),
    (7, 1, [0]),
])
def test_frame_step_and_max_frames(shots_path, shots_frames, frame_step, max_frames, indices):
    frames = read_frames(str(shots_path), VideoDecodeConfig(frame_step=frame_step, max_frames=max_frames))
    assert_same_frames(frames, [shots_frames[i] for i in indices])


def test_variable_frame_rate_times_come_from_the_timestamps(tmp_path):
    pts_ms = [0, 100, 150, 400, 410, 1000, 1500, 1600]
    path = write_video(tmp_path / "vfr.mkv", [scene(0, t) for t in range(8)], packet_pts=pts_ms,
                       time_base=fractions.Fraction(1, 1000), gop_size=1)
    frames = read_frames(str(path), VideoDecodeConfig())
    np.testing.assert_allclose([f.time_s for f in frames], np.array(pts_ms) / 1000, atol=1e-9)


def test_timestamps_attached_in_decode_order_are_reassigned_in_order(tmp_path):
    # As in AVI files with packed B-frames: frames come out in order, their timestamps permuted.
    permuted = [1, 2, 3, 5, 4, 6, 8, 7, 9, 11, 10, 12]
    brightness = [np.full((HEIGHT, WIDTH, 3), 20 * i, np.uint8) for i in range(12)]
    path = write_video(tmp_path / "permuted.mkv", brightness, packet_pts=permuted,
                       time_base=fractions.Fraction(1, FPS), gop_size=1)
    frames = read_frames(str(path), VideoDecodeConfig())
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(1, 13) / FPS, atol=1e-9)
    assert np.all(np.diff([f.rgb.mean() for f in frames]) > 0)


@pytest.mark.skipif("libx264" not in av.codecs_available, reason="no libx264 encoder")
def test_a_raw_stream_without_timestamps_is_timed_at_its_frame_rate(tmp_path):
    path = write_video(tmp_path / "raw.h264", [scene(0, t) for t in range(12)], codec="libx264", fmt="h264")
    frames = read_frames(str(path), VideoDecodeConfig())
    np.testing.assert_allclose([f.time_s for f in frames], np.arange(12) / FPS, atol=1e-9)


def test_the_display_rotation_makes_frames_upright(tmp_path):
    marked = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    marked[:16, :16] = 255  # top left, as stored
    path = write_video(tmp_path / "rotated.mp4", [marked] * 3, rotation=90)  # to be turned 90 degrees anticlockwise
    frame = read_frames(str(path), VideoDecodeConfig())[0]
    assert frame.rgb.shape == (WIDTH, HEIGHT, 3)
    assert frame.rgb[-8:, :8].mean() > 200 and frame.rgb[:8, :8].mean() < 50  # now bottom left


def test_non_square_pixels_are_made_square_by_shrinking(tmp_path):
    path = write_video(tmp_path / "sar.mp4", [scene(0, t) for t in range(3)], sar=fractions.Fraction(2, 1))
    frames = read_frames(str(path), VideoDecodeConfig())
    assert frames[0].rgb.shape == (HEIGHT // 2, WIDTH, 3)  # pixels twice as wide as tall: a 256x96 picture


def test_a_video_stream_without_frames_is_empty(tmp_path):
    path = tmp_path / "empty.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        container.start_encoding()
    with pytest.raises(VideoError) as caught:
        read_frames(str(path), VideoDecodeConfig())
    assert caught.value.reason is Reason.EMPTY_VIDEO


def _audio_file(path, cover=False):
    with av.open(str(path), "w") as container:
        audio = container.add_stream("aac", rate=8000)
        if cover:
            art = container.add_stream("png")
            art.width, art.height, art.pix_fmt = 32, 32, "rgb24"
            art.disposition = Disposition.attached_pic
            picture = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            for packet in art.encode(picture) + art.encode():
                container.mux(packet)
        samples = av.AudioFrame.from_ndarray(np.zeros((1, 8000), np.float32), format="fltp", layout="mono")
        samples.sample_rate, samples.pts = 8000, 0
        for packet in audio.encode(samples) + audio.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("cover", [False, True], ids=["audio", "audio_with_cover_art"])
def test_no_video_stream(tmp_path, cover):
    path = _audio_file(tmp_path / "song.mp4", cover=cover)
    with pytest.raises(VideoError) as caught:
        read_frames(str(path), VideoDecodeConfig())
    assert caught.value.reason is Reason.NO_VIDEO_STREAM


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(scene(0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("data", [
    b"",
    np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
    b"just some text\n" * 100,
    _png(),
], ids=["empty", "random", "text", "still_image"])
def test_not_a_video(tmp_path, data):
    path = tmp_path / "input.mp4"
    path.write_bytes(data)
    with open(path, "rb") as local_file:  # a local file raises OSError on FFmpeg's probe seeks before its start
        for source in (str(path), local_file, io.BytesIO(data)):
            with pytest.raises(VideoError) as caught:
                read_frames(source, VideoDecodeConfig())
            assert caught.value.reason is Reason.NOT_A_VIDEO


def test_a_missing_file_is_an_error_not_a_rejection(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        read_frames(str(tmp_path / "missing.mp4"), VideoDecodeConfig())
    assert not isinstance(caught.value, VideoError)


class _FailingStorage(io.BytesIO):
    """A remote file whose connection drops after a few reads."""

    def __init__(self, data):
        super().__init__(data)
        self.reads = 0

    def read(self, size=-1):
        self.reads += 1
        if self.reads > 3:
            raise ConnectionResetError("connection reset by peer")
        return super().read(size)


def test_a_storage_error_is_an_error_not_a_rejection(shots_path):
    with pytest.raises(ConnectionResetError):
        read_frames(_FailingStorage(shots_path.read_bytes()), VideoDecodeConfig())


@pytest.mark.parametrize("suffix", [".mkv", ".mp4", ".avi"])
@pytest.mark.parametrize("kept_fraction", [0.05, 0.3, 0.6, 0.9])
def test_a_truncated_file_gives_the_frames_before_the_damage_or_a_video_error(tmp_path, suffix, kept_fraction):
    path = write_video(tmp_path / f"whole{suffix}", three_shots())
    whole = read_frames(str(path), VideoDecodeConfig())
    data = path.read_bytes()
    try:
        frames = read_frames(io.BytesIO(data[:int(len(data) * kept_fraction)]), VideoDecodeConfig())
    except VideoError as error:
        assert error.reason in {Reason.NOT_A_VIDEO, Reason.EMPTY_VIDEO, Reason.CORRUPT_VIDEO}
        return
    assert 0 < len(frames) < len(whole)
    assert_same_frames(frames, whole[:len(frames)])


def _packets(path):
    with av.open(str(path)) as container:
        return [(packet.pos, packet.size) for packet in container.demux(video=0) if packet.size]


def test_damage_mid_stream_keeps_the_frames_before_it(tmp_path, caplog):
    path = write_video(tmp_path / "whole.mp4", three_shots())
    whole = read_frames(str(path), VideoDecodeConfig())
    position, size = _packets(path)[30]
    data = bytearray(path.read_bytes())
    data[position:position + size] = np.random.default_rng(1).integers(0, 256, size, dtype=np.uint8).tobytes()
    with caplog.at_level(logging.WARNING, logger="transforms.video"):
        frames = read_frames(io.BytesIO(bytes(data)), VideoDecodeConfig(), name="gs://bucket/whole.mp4")
    assert 0 < len(frames) <= 30
    assert_same_frames(frames, whole[:len(frames)])
    assert "gs://bucket/whole.mp4: video decoding stopped" in caplog.text  # the video's name, not a temp file's


def test_damage_before_any_frame_is_a_corrupt_video(tmp_path):
    path = write_video(tmp_path / "whole.mp4", three_shots())
    position, size = _packets(path)[0]
    data = bytearray(path.read_bytes())
    data[position:position + size] = bytes(size)
    with pytest.raises(VideoError) as caught:
        read_frames(io.BytesIO(bytes(data)), VideoDecodeConfig())
    assert caught.value.reason is Reason.CORRUPT_VIDEO


def test_a_video_error_keeps_its_reason_through_pickling():
    error = pickle.loads(pickle.dumps(VideoError(Reason.CORRUPT_VIDEO, "bad packet")))
    assert (error.reason, error.detail, str(error)) == (Reason.CORRUPT_VIDEO, "bad packet", "corrupt_video: bad packet")


# --- shot_boundaries -----------------------------------------------------------------------------------------


def in_memory(images, fps=FPS):
    return [Frame(index=i, time_s=i / fps, rgb=rgb) for i, rgb in enumerate(images)]


def assert_cuts_near(shots, expected_cuts, n):
    starts = [start for start, _ in shots]
    assert len(starts) == len(expected_cuts) + 1 and starts[0] == 0
    assert all(abs(found - expected) <= 1 for found, expected in zip(starts[1:], expected_cuts))
    assert [end for _, end in shots] == starts[1:] + [n]


def test_finds_the_hard_cuts(shots_frames):
    shots = shot_boundaries(shots_frames, CutConfig())
    assert_cuts_near(shots, [SHOT_FRAMES, 2 * SHOT_FRAMES], len(shots_frames))


def test_finds_the_cuts_with_a_frame_step(shots_path):
    frames = read_frames(str(shots_path), VideoDecodeConfig(frame_step=2))
    assert_cuts_near(shot_boundaries(frames, CutConfig()), [SHOT_FRAMES // 2, SHOT_FRAMES], len(frames))


def gradual_changes(tmp_path):
    """A slow pan over a smooth texture, a fade to black, a fade in, a cross-dissolve: one shot."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (HEIGHT + 20, WIDTH + 60, 3)).astype(np.float64)
    for _ in range(3):  # smooth it
        texture = (texture + np.roll(texture, 1, 0) + np.roll(texture, 1, 1) + np.roll(texture, (1, 1), (0, 1))) / 4
    texture = (texture - texture.min()) / np.ptp(texture) * 255
    pan = [texture[10:10 + HEIGHT, 2 * t:2 * t + WIDTH] for t in range(20)]
    first, second = scene(0, 0).astype(np.float64), scene(1, 0).astype(np.float64)
    steps = [t / 15 for t in range(1, 16)]
    fade_out = [pan[-1] * (1 - s) for s in steps]
    fade_in = [first * s for s in steps]
    dissolve = [first * (1 - s) + second * s for s in steps]
    images = [image.astype(np.uint8) for image in pan + fade_out + fade_in + dissolve]
    return read_frames(str(write_video(tmp_path / "gradual.mkv", images)), VideoDecodeConfig())


def test_no_cut_in_a_pan_a_fade_or_a_dissolve(tmp_path):
    frames = gradual_changes(tmp_path)
    assert shot_boundaries(frames, CutConfig()) == [(0, len(frames))]
    assert cut_scores(frames).max() < CutConfig().threshold - 0.1  # with a margin


def test_one_odd_frame_is_not_a_cut():
    images = [scene(0, t) for t in range(20)]
    images[10] = scene(2, 0)  # a flash of another picture, or one damaged frame
    assert shot_boundaries(in_memory(images), CutConfig()) == [(0, 20)]


def test_cuts_closer_than_min_shot_frames_are_ignored():
    images = [scene(shot % 3, t) for shot in range(6) for t in range(3)]  # a cut every 3 frames
    assert shot_boundaries(in_memory(images), CutConfig(min_shot_frames=5)) == [(0, 6), (6, 12), (12, 18)]
    assert_cuts_near(shot_boundaries(in_memory(images), CutConfig(min_shot_frames=1)), [3, 6, 9, 12, 15], 18)


def test_shots_of_few_frames():
    assert shot_boundaries([], CutConfig()) == []
    assert shot_boundaries(in_memory([scene(0, 0)]), CutConfig()) == [(0, 1)]
    two = in_memory([scene(0, 0), scene(1, 0)])
    assert shot_boundaries(two, CutConfig(min_shot_frames=1)) == [(0, 1), (1, 2)]
    assert shot_boundaries(two, CutConfig()) == [(0, 2)]


def test_cut_scores_are_in_the_unit_interval(shots_frames):
    scores = cut_scores(shots_frames)
    assert scores.shape == (len(shots_frames) - 1,) and 0 <= scores.min() and scores.max() <= 1
    assert cut_scores(shots_frames, step=2).shape == (len(shots_frames) - 2,)
    same = in_memory([scene(1, 0)] * 3)
    np.testing.assert_allclose(cut_scores(same), 0.0, atol=1e-6)
    assert cut_scores(same[:1]).shape == (0,)


# --- sample_pairs --------------------------------------------------------------------------------------------


def timed(times):
    return [Frame(index=i, time_s=float(t), rgb=np.zeros((2, 2, 3), np.uint8)) for i, t in enumerate(times)]


def valid_pairs(frames, shots, config):
    return {(a, b) for start, end in shots for a, b in itertools.combinations(range(start, end), 2)
            if config.min_gap_s - 1e-6 <= frames[b].time_s - frames[a].time_s <= config.max_gap_s + 1e-6}


SHOTS = [(0, 20), (20, 40), (40, 60)]


def test_pairs_stay_in_one_shot_within_the_gaps():
    frames = timed(np.arange(60) / FPS)
    config = PairSamplingConfig(min_gap_s=0.5, max_gap_s=1.2, max_pairs=10)
    allowed = valid_pairs(frames, SHOTS, config)
    for seed in range(300):
        pairs = sample_pairs(frames, SHOTS, config, seed)
        assert len(pairs) == 10 and len(set(pairs)) == 10 and pairs == sorted(pairs)
        assert set(pairs) <= allowed  # a < b, same shot, gap within limits


def test_pairs_are_deterministic_per_seed():
    frames = timed(np.arange(60) / FPS)
    config = PairSamplingConfig()
    assert sample_pairs(frames, SHOTS, config, 7) == sample_pairs(frames, SHOTS, config, 7)
    assert len({tuple(sample_pairs(frames, SHOTS, config, seed)) for seed in range(20)}) > 15


def test_every_valid_pair_when_there_are_fewer_than_the_cap():
    frames = timed(np.arange(60) / FPS)
    config = PairSamplingConfig(min_gap_s=1.5, max_gap_s=1.8, max_pairs=1000)
    assert set(sample_pairs(frames, SHOTS, config, 0)) == valid_pairs(frames, SHOTS, config)


def test_pairs_are_drawn_uniformly_among_valid_pairs():
    # The last frames of a shot have few partners: sampling a first frame, then a partner,
    # would favour their pairs. Each valid pair must come up equally often.
    frames = timed(np.arange(16) / FPS)
    shots = [(0, 10), (10, 16)]
    config = PairSamplingConfig(min_gap_s=0.2, max_gap_s=0.5, max_pairs=1)
    allowed = sorted(valid_pairs(frames, shots, config))
    counts = dict.fromkeys(allowed, 0)
    for seed in range(6000):
        (pair,) = sample_pairs(frames, shots, config, seed)
        counts[pair] += 1
    assert stats.chisquare(list(counts.values())).pvalue > 1e-4


def test_variable_frame_rate_gaps_are_in_seconds():
    times = np.cumsum(np.random.default_rng(3).uniform(0.01, 0.3, 80))
    frames, shots = timed(times), [(0, 30), (30, 80)]
    config = PairSamplingConfig(min_gap_s=0.4, max_gap_s=1.0, max_pairs=25)
    allowed = valid_pairs(frames, shots, config)
    for seed in range(50):
        assert set(sample_pairs(frames, shots, config, seed)) <= allowed


def test_frames_outside_the_shots_are_not_sampled():
    frames = timed(np.arange(30) / FPS)
    pairs = sample_pairs(frames, [(5, 15)], PairSamplingConfig(max_pairs=100), 0)
    assert pairs and all(5 <= a < b < 15 for a, b in pairs)


def test_no_pair_when_no_shot_is_long_enough():
    frames = timed(np.arange(30) / FPS)
    assert sample_pairs(frames, [(0, 4), (4, 30)], PairSamplingConfig(min_gap_s=2.9), 0) == []
    assert sample_pairs([], [], PairSamplingConfig(), 0) == []


@pytest.mark.parametrize("shots", [
    [(0, 31)], [(5, 5)], [(10, 20), (0, 10)], [(0, 10), (5, 15)], [(0.0, 10)], [(-1, 3)],
])
def test_bad_shots_are_refused(shots):
    with pytest.raises(ValueError, match="shots"):
        sample_pairs(timed(np.arange(30) / FPS), shots, PairSamplingConfig(), 0)


def test_bad_seeds_and_unordered_times_are_refused():
    frames = timed(np.arange(10) / FPS)
    for seed in (-1, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            sample_pairs(frames, [(0, 10)], PairSamplingConfig(), seed)
    with pytest.raises(ValueError, match="increase"):
        sample_pairs(timed([0.0, 0.2, 0.2, 0.3]), [(0, 4)], PairSamplingConfig(), 0)


def test_video_seed_is_stable_and_distinct():
    assert video_seed(0, "abc") == video_seed(0, "abc") == 6552953894559565310
    seeds = {video_seed(base, key) for base in (0, 1) for key in ("abc", "abd")}
    assert len(seeds) == 4 and all(0 <= seed < 2 ** 63 for seed in seeds)


# --- configs -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda: VideoDecodeConfig(short_side=8),
    lambda: VideoDecodeConfig(short_side=512.0),
    lambda: VideoDecodeConfig(max_frames=0),
    lambda: VideoDecodeConfig(frame_step=True),
    lambda: CutConfig(threshold=0),
    lambda: CutConfig(threshold=1.5),
    lambda: CutConfig(threshold="0.3"),
    lambda: CutConfig(min_shot_frames=0),
    lambda: PairSamplingConfig(min_gap_s=-0.1),
    lambda: PairSamplingConfig(max_gap_s=0),
    lambda: PairSamplingConfig(min_gap_s=3, max_gap_s=2),
    lambda: PairSamplingConfig(max_gap_s=float("nan")),
    lambda: PairSamplingConfig(max_gap_s=float("inf")),
    lambda: PairSamplingConfig(max_pairs=0),
    lambda: PairSamplingConfig(max_pairs=2.0),
    lambda: FramePairSettings(near_duplicate_bits=-1),
    lambda: FramePairSettings(near_duplicate_bits=32),  # half the bits: unrelated clips
    lambda: FramePairSettings(near_duplicate_bits="12"),
])
def test_configs_refuse_bad_values(make):
    with pytest.raises(ValueError):
        make()


def test_default_configs_are_valid():
    VideoDecodeConfig(), CutConfig(), PairSamplingConfig()
    assert CutConfig(threshold=1).threshold == 1 and PairSamplingConfig(min_gap_s=0).min_gap_s == 0


# --- the video_pairs stage -----------------------------------------------------------------------------------


def video_stage(**sampling) -> VideoPairs:
    return VideoPairs(VideoDecodeConfig(), CutConfig(), PairSamplingConfig(**sampling), PairRules(),
                      FramePairSettings())


def run_stage(stage: VideoPairs, path) -> list:
    """The stage's outputs for one path, from its record function as a worker gets it (pickled)."""
    return list(pickle.loads(pickle.dumps(stage.record_fn()))(str(path)))


def test_a_video_is_one_record_naming_every_sampled_pair(shots_path):
    outputs = run_stage(video_stage(min_gap_s=0.3, max_gap_s=1.5, max_pairs=6), shots_path)
    records = [o for o in outputs if isinstance(o, InputPairs)]
    unpaired = [o.value for o in outputs if isinstance(o, TaggedOutput) and o.tag == UNPAIRED_TAG]
    rejections = [o for o in outputs if isinstance(o, Rejection)]
    (record,) = records + unpaired
    assert record.uri == str(shots_path) and len(record.pairs) == 6
    assert len({pair.key for pair in record.pairs}) == 6 and all(pair.key.startswith(f"{record.key}_f")
                                                                  for pair in record.pairs)
    assert all(pair.stage == "video_pairs" for pair in record.pairs if isinstance(pair, Rejection))
    # Kept: a record of the main output; else rejected as a whole, its pairs' record beside the rejection.
    if record.kept:
        assert records == [record] and not rejections
    else:
        assert unpaired == [record] and [r.reason for r in rejections] == [Reason.NO_FRAME_PAIR]
    histogram = [o.value for o in outputs if isinstance(o, TaggedOutput) and o.tag == COUNTS_TAG]
    assert sum(n for (counter, _), n in histogram if counter == "ssim_histogram") == 6


def test_the_video_stage_rejects_an_empty_file_and_a_video_too_short_for_any_pair(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    ((reason, key),) = [(o.reason, o.key) for o in run_stage(video_stage(), empty)]
    assert (reason, key) == (Reason.EMPTY_FILE, "")
    short = write_video(tmp_path / "short.mkv", [scene(0, t) for t in range(3)])  # 0.2 s: under min_gap_s
    (rejection,) = run_stage(video_stage(), short)
    assert rejection.reason is Reason.VIDEO_TOO_SHORT and rejection.uri == str(short) and rejection.key


# --- truncated files, copies of one clip ---------------------------------------------------------------------


@pytest.mark.parametrize("make", [
    lambda folder: remux(bundled_clip("carphone_pristine.mp4"), folder / "carphone.mkv"),
    lambda folder: remux(bundled_clip("carphone_pristine.mp4"), folder / "carphone.mp4", movflags="faststart"),
    lambda folder: write_video(folder / "shots.avi", three_shots()),  # AVI holds no H.264 with B-frames
], ids=["mkv", "mp4-faststart", "avi"])
def test_a_video_cut_in_half_says_it_is_truncated_and_a_whole_one_does_not(tmp_path, make):
    whole = make(tmp_path)
    complete = read_video(str(whole), VideoDecodeConfig())
    assert complete.truncated is None and len(complete.frames) >= 60
    data = whole.read_bytes()
    half = read_video(io.BytesIO(data[:len(data) // 2]), VideoDecodeConfig())
    assert 0 < len(half.frames) < len(complete.frames) and half.truncated
    assert read_video(str(whole), VideoDecodeConfig(max_frames=30)).truncated is None  # stopping early is not damage


def test_the_bundled_clips_whole_are_not_truncated():
    for name in ("bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4"):
        assert read_video(str(bundled_clip(name)), VideoDecodeConfig(short_side=64)).truncated is None, name


def signature(name: str) -> VideoSignature:
    path = str(bundled_clip(name))
    return video_signature(read_frames(path, VideoDecodeConfig(short_side=128)), pathlib.Path(path).stat().st_size)


def test_two_encodes_of_one_clip_are_near_duplicates_and_other_clips_are_not():
    pristine, distorted, bikes, bunny = map(signature, ("carphone_pristine.mp4", "carphone_distorted.mp4",
                                                        "bikes.mp4", "bigbuckbunny.mp4"))
    assert len(pristine.hashes) == 4 and len(bikes.hashes) == 8  # 0..3 s of a 4 s clip, 0..7 s of a 10 s one
    assert pristine.distance(distorted) <= 10
    assert min(a.distance(b) for a, b in itertools.combinations((pristine, bikes, bunny), 2)) >= 20
    videos = [("b/distorted.mp4", "k1", distorted), ("a/pristine.mp4", "k2", pristine), ("c/bikes.mp4", "k3", bikes),
              ("d/bikes_again.mp4", "k3", bikes), ("0/bikes_copy.mp4", "k3", bikes)]
    decisions = duplicate_videos(videos, FramePairSettings().near_duplicate_bits)
    assert set(decisions) == {"b/distorted.mp4", "c/bikes.mp4", "d/bikes_again.mp4"}
    assert decisions["b/distorted.mp4"][0] is Reason.NEAR_DUPLICATE_VIDEO  # the larger file is kept
    assert "a/pristine.mp4" in decisions["b/distorted.mp4"][1]
    assert decisions["c/bikes.mp4"] == (Reason.DUPLICATE_CONTENT, "same bytes as 0/bikes_copy.mp4")  # smallest URI
    assert decisions == duplicate_videos(videos[::-1], FramePairSettings().near_duplicate_bits)


def test_a_truncated_copy_gives_way_to_the_whole_clip(tmp_path):
    whole = remux(bundled_clip("carphone_pristine.mp4"), tmp_path / "whole.mkv")
    data = whole.read_bytes()
    frames = read_frames(io.BytesIO(data[:len(data) // 2]), VideoDecodeConfig())
    half = video_signature(frames, len(data) // 2)
    full = video_signature(read_frames(str(whole), VideoDecodeConfig()), len(data))
    decisions = duplicate_videos([("a_half.mkv", "k1", half), ("b_whole.mkv", "k2", full)], 12.0)
    assert list(decisions) == ["a_half.mkv"] and decisions["a_half.mkv"][0] is Reason.NEAR_DUPLICATE_VIDEO
