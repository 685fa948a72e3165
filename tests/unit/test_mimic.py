"""MimicBrush frame pairs: SSIM band, SIFT + RANSAC matches, grid masks and the static branch."""
from __future__ import annotations

import json
import math
import pickle
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from schemas import Reason, Rejection, SourceImage
from transforms.frame_pairs import (
    UNPAIRED_TAG,
    CapImagePairs,
    FramePairSettings,
    ImagePairs,
    InputPairs,
    PairRules,
    SplitPairs,
)
from transforms.io.decode import encode_jpeg
from transforms.io.shards import EncodedSample
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

SAMPLES = Path(__file__).resolve().parents[2] / "jobs" / "samples" / "images"


def texture(height: int, width: int, seed: int) -> np.ndarray:
    """Smooth colour noise strewn with discs and boxes: corners and blobs for SIFT."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    for _ in range(height * width // 800):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x, y, size = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(3, 20))
        if rng.random() < 0.5:
            cv2.circle(image, (x, y), size, colour, -1)
        else:
            cv2.rectangle(image, (x, y), (x + size, y + int(rng.integers(3, 20))), colour, -1)
    return image


def sample(name: str) -> np.ndarray:
    """A bundled frame, RGB, resized to 512 px on the shorter side as the job does."""
    bgr = cv2.imread(str(SAMPLES / name))
    height, width = bgr.shape[:2]
    scale = 512 / min(height, width)
    size = (round(width * scale), round(height * scale))
    return cv2.cvtColor(cv2.resize(bgr, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR),
                        cv2.COLOR_BGR2RGB)


BIG = texture(480, 480, seed=0)
SOURCE = BIG[80:400, 80:400]
#: The big texture turned 12 degrees about its centre and moved (9, -6) px: the same scene, another view.
ROTATION = cv2.getRotationMatrix2D((240, 240), 12, 1.0) + np.array([[0, 0, 9], [0, 0, -6]])
ROTATED = cv2.warpAffine(BIG, ROTATION, (480, 480))[80:400, 80:400]


def shifted_and_brighter(shift: int, gain: int = 25) -> np.ndarray:
    return np.clip(BIG[80 + shift:400 + shift, 80 + shift:400 + shift].astype(int) + gain, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- SSIM band


def test_ssim_of_identical_frames_is_one():
    assert pair_ssim(SOURCE, SOURCE.copy(), 128) == pytest.approx(1.0)


def test_ssim_of_unrelated_frames_is_low():
    assert pair_ssim(SOURCE, texture(320, 320, seed=7), 128) < 0.15


def test_ssim_falls_as_the_view_moves():
    values = [pair_ssim(SOURCE, shifted_and_brighter(shift), 128) for shift in (1, 3, 10)]
    assert values == sorted(values, reverse=True)


def test_band_rejects_duplicates_and_unrelated_frames_and_keeps_a_moved_relit_view():
    config = SsimBandConfig()
    assert check_ssim_band(pair_ssim(SOURCE, SOURCE.copy(), config.side), config)[0] is Reason.FRAMES_TOO_SIMILAR
    unrelated = pair_ssim(SOURCE, texture(320, 320, seed=7), config.side)
    assert check_ssim_band(unrelated, config)[0] is Reason.FRAMES_UNRELATED
    moved = pair_ssim(SOURCE, shifted_and_brighter(3), config.side)  # 3 px and 25 grey levels: about 0.67
    assert config.min_ssim < moved < config.max_ssim
    assert check_ssim_band(moved, config) is None


def test_band_on_the_bundled_frames():
    """The pairs the defaults were set on: people walking (kept), a car hiding the street (unrelated)."""
    config = SsimBandConfig()
    walking = pair_ssim(sample("vtest_f0198.jpg"), sample("vtest_f0397.jpg"), config.side)
    hidden = pair_ssim(sample("bikes_f0083.jpg"), sample("bikes_f0166.jpg"), config.side)
    assert walking == pytest.approx(0.898, abs=0.01)
    assert check_ssim_band(walking, config) is None
    assert check_ssim_band(hidden, config)[0] is Reason.FRAMES_UNRELATED


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.981, (Reason.FRAMES_TOO_SIMILAR, "ssim 0.981 > 0.95")),
        (0.9501, (Reason.FRAMES_TOO_SIMILAR, "ssim 0.9501 > 0.95")),
        (0.95, None),  # bounds are inclusive
        (0.3, None),
        (0.2999, (Reason.FRAMES_UNRELATED, "ssim 0.2999 < 0.3")),
        (-0.2, (Reason.FRAMES_UNRELATED, "ssim -0.2 < 0.3")),
        (np.float32(0.5), None),
    ],
)
def test_band_edges_and_details(value, expected):
    assert check_ssim_band(value, SsimBandConfig()) == expected


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "0.5", None])
def test_band_rejects_non_numbers(value):
    with pytest.raises(ValueError):
        check_ssim_band(value, SsimBandConfig())


def test_ssim_needs_two_rgb_frames_of_one_size():
    with pytest.raises(ValueError, match="differ in size"):
        pair_ssim(SOURCE, SOURCE[:-1], 128)
    with pytest.raises(ValueError, match="RGB uint8"):
        pair_ssim(SOURCE.astype(np.float32), SOURCE, 128)
    with pytest.raises(ValueError, match="side"):
        pair_ssim(SOURCE, SOURCE, 6)


# --------------------------------------------------------------------------- matches


def test_matches_of_a_rotated_view_follow_the_rotation():
    matches = match_frames(SOURCE, ROTATED, MatchConfig())
    assert matches.inliers >= 100
    assert matches.candidates >= matches.inliers
    assert matches.source_points.dtype == np.float32 and matches.source_points.shape == (matches.inliers, 2)
    # Where the known warp sends each source inlier (crops start at (80, 80) in BIG).
    expected = (matches.source_points + 80) @ ROTATION[:, :2].T + ROTATION[:, 2] - 80
    error = np.linalg.norm(expected - matches.reference_points, axis=1)
    assert np.median(error) < 1.0
    assert np.mean(error < 3.0) > 0.95  # the epipolar test lets a match slide along its line


def test_matches_of_a_shifted_crop():
    matches = match_frames(BIG[0:300, 0:300], BIG[40:340, 25:325], MatchConfig())
    assert matches.inliers >= 100
    np.testing.assert_allclose(matches.source_points - matches.reference_points, [[25, 40]] * matches.inliers,
                               atol=3.0)


def test_unrelated_frames_have_too_few_matches():
    config = MatchConfig()
    for seed in (1, 2, 3):
        matches = match_frames(SOURCE, texture(320, 320, seed=100 + seed), config)
        assert matches.inliers < config.min_matches
        assert check_matches(matches, config)[0] is Reason.TOO_FEW_MATCHES


def test_bundled_frames_match_or_not():
    config = MatchConfig()
    walking = match_frames(sample("vtest_f0198.jpg"), sample("vtest_f0397.jpg"), config)
    hidden = match_frames(sample("bikes_f0083.jpg"), sample("bikes_f0166.jpg"), config)
    assert walking.inliers > 500 and check_matches(walking, config) is None
    assert hidden.inliers == 0


@pytest.mark.parametrize(
    ("source", "reference"),
    [
        (np.zeros((240, 320, 3), np.uint8), np.zeros((240, 320, 3), np.uint8)),
        (np.full((240, 320, 3), 128, np.uint8), SOURCE),
        (SOURCE, np.zeros((240, 320, 3), np.uint8)),
        (np.zeros((4, 4, 3), np.uint8), np.zeros((1, 1, 3), np.uint8)),
        (SOURCE[:40, :40], SOURCE[:40, :40]),  # a few keypoints: under 8 candidates, no RANSAC
    ],
)
def test_frames_without_texture_give_no_inliers_and_do_not_raise(source, reference):
    matches = match_frames(source, reference, MatchConfig())
    assert matches.inliers == 0
    assert matches.source_points.shape == matches.reference_points.shape == (0, 2)


def test_repeated_content_matches_one_to_one():
    """Sixteen copies of a tile against one: each reference keypoint takes at most one source
    keypoint (mutual nearest neighbours). Without that, all 16 copies' keypoints passed the
    ratio test (256 candidates) and RANSAC took 53 of them, an F whose epipole sits on the tile."""
    tile = np.full((80, 80, 3), 128, np.uint8)
    tile[16:64, 16:64] = texture(64, 64, seed=11)[8:56, 8:56]
    reference = texture(320, 320, seed=12)
    reference[120:200, 120:200] = tile
    matches = match_frames(np.tile(tile, (4, 4, 1)), reference, MatchConfig())
    assert matches.candidates <= 32  # about one tile's keypoints


def test_matching_is_deterministic_across_threads():
    config = MatchConfig()
    first = match_frames(SOURCE, ROTATED, config)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: match_frames(SOURCE, ROTATED, config), range(16)))
    for result in results:
        np.testing.assert_array_equal(result.source_points, first.source_points)
        np.testing.assert_array_equal(result.reference_points, first.reference_points)
        assert result.candidates == first.candidates


def test_check_matches_counts_inliers_against_the_minimum():
    points = np.zeros((16, 2), np.float32)
    config = MatchConfig(min_matches=16)
    assert check_matches(Matches(points, points.copy(), candidates=20), config) is None
    reason, detail = check_matches(Matches(points[:15], points[:15].copy(), candidates=20), config)
    assert reason is Reason.TOO_FEW_MATCHES and detail == "15 inliers < 16 (20 candidates)"
    assert check_matches(Matches(points[:8], points[:8].copy(), candidates=8), MatchConfig()) is None


def test_matches_validate():
    points = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="reference points"):
        Matches(points, points[:2], candidates=3)
    with pytest.raises(ValueError, match="float32"):
        Matches(points.astype(np.float64), points, candidates=3)
    with pytest.raises(ValueError, match="candidates"):
        Matches(points, points, candidates=2)


# --------------------------------------------------------------------------- grid masks


def cell_edges(length: int, cells: int) -> np.ndarray:
    """The documented boundaries: np.linspace rounded."""
    return np.rint(np.linspace(0, length, cells + 1)).astype(int)


def cell_centres(cells: list[tuple[int, int]], height: int, width: int, n: int) -> np.ndarray:
    rows, cols = cell_edges(height, n), cell_edges(width, n)
    return np.array([[(cols[c] + cols[c + 1]) / 2, (rows[r] + rows[r + 1]) / 2] for r, c in cells], np.float32)


def test_grid_mask_follows_the_probabilities():
    """N fixed at 10, so the correction (P < 1e-12 per draw) does not bias the rates.

    50 matched cells x 5000 draws = 250 000 coin flips per group: the standard error of
    the masked share is sqrt(p (1 - p) / 250 000) <= 0.001, and 0.005 is five of them.
    """
    config = GridMaskConfig(min_cells=10, max_cells=10)
    matched_cells = [(r, c) for r in range(10) for c in range(5)]
    points = cell_centres(matched_cells, 100, 100, 10)
    rng = np.random.default_rng(0)
    hits = np.zeros((10, 10))
    for _ in range(5000):
        _, record = grid_mask(100, 100, points, config, rng)
        assert record["matched_cells"] == [list(cell) for cell in matched_cells]
        for r, c in record["masked"]:
            hits[r, c] += 1
    assert hits[:, :5].mean() / 5000 == pytest.approx(0.75, abs=0.005)
    assert hits[:, 5:].mean() / 5000 == pytest.approx(0.5, abs=0.005)


def test_grid_correction_shifts_rates_at_small_n_as_documented():
    """At N = 3 with every cell matched, "all masked" (0.75^9 = 0.075) unmasks one cell:
    the share drops from 0.75 to 0.75 - 0.75^9 / 9 = 0.7417. 20 000 draws x 9 cells: the
    standard error is 0.001, so 0.004 tells 0.7417 from 0.75."""
    config = GridMaskConfig(min_cells=3, max_cells=3)
    points = cell_centres([(r, c) for r in range(3) for c in range(3)], 90, 90, 3)
    rng = np.random.default_rng(1)
    shares = [len(grid_mask(90, 90, points, config, rng)[1]["masked"]) / 9 for _ in range(20000)]
    assert max(shares) < 1
    assert np.mean(shares) == pytest.approx(0.75 - 0.75**9 / 9, abs=0.004)


def test_grid_n_is_uniform_over_its_range_and_masks_are_never_empty_or_full():
    """5000 draws over 8 values: 625 expected each, standard deviation 23; 120 is five of them."""
    rng = np.random.default_rng(2)
    points = np.array([[10.0, 10.0], [150.0, 90.0]], np.float32)
    counts = {n: 0 for n in range(3, 11)}
    for _ in range(5000):
        mask, record = grid_mask(120, 160, points, GridMaskConfig(), rng)
        counts[record["cells"]] += 1
        assert 0 < mask.sum() < mask.size
    assert all(abs(count - 625) < 120 for count in counts.values()), counts


def test_grid_mask_is_the_union_of_whole_cells_that_tile_the_image():
    for height, width in ((100, 100), (97, 131), (10, 10), (11, 517)):
        for seed in range(20):
            mask, record = grid_mask(height, width, np.zeros((0, 2)), GridMaskConfig(), np.random.default_rng(seed))
            n = record["cells"]
            rows, cols = cell_edges(height, n), cell_edges(width, n)
            assert (np.diff(rows) > 0).all() and (np.diff(cols) > 0).all()
            assert rows[0] == cols[0] == 0 and rows[-1] == height and cols[-1] == width
            expected = np.zeros((height, width), bool)
            for r, c in record["masked"]:
                expected[rows[r]:rows[r + 1], cols[c]:cols[c + 1]] = True
            np.testing.assert_array_equal(mask, expected)
            assert mask.dtype == bool and record["matched_cells"] == []
            json.dumps(record)


def test_grid_correction_masks_a_matched_cell_when_nothing_was_masked():
    config = GridMaskConfig(min_cells=3, max_cells=3, p_matched=0.0, p_other=0.0)
    points = cell_centres([(1, 2)], 90, 90, 3)
    for seed in range(20):
        mask, record = grid_mask(90, 90, points, config, np.random.default_rng(seed))
        assert record["masked"] == [[1, 2]]
        assert mask.sum() == 30 * 30
    chosen = {tuple(grid_mask(90, 90, np.zeros((0, 2)), config, np.random.default_rng(seed))[1]["masked"][0])
              for seed in range(200)}
    assert len(chosen) == 9  # without matches, any cell


def test_grid_correction_unmasks_an_unmatched_cell_when_everything_was_masked():
    config = GridMaskConfig(min_cells=3, max_cells=3, p_matched=1.0, p_other=1.0)
    every_cell = [(r, c) for r in range(3) for c in range(3)]
    points = cell_centres(every_cell[1:], 90, 90, 3)  # all but (0, 0)
    for seed in range(20):
        _, record = grid_mask(90, 90, points, config, np.random.default_rng(seed))
        assert [0, 0] not in record["masked"] and len(record["masked"]) == 8
    unmasked = set()
    for seed in range(200):  # every cell matched: still one is unmasked, any of them
        _, record = grid_mask(90, 90, cell_centres(every_cell, 90, 90, 3), config, np.random.default_rng(seed))
        assert len(record["masked"]) == 8
        unmasked |= {cell for cell in every_cell if list(cell) not in record["masked"]}
    assert len(unmasked) == 9


def test_grid_points_on_the_far_edges_belong_to_the_last_cells():
    config = GridMaskConfig(min_cells=4, max_cells=4)
    _, record = grid_mask(80, 100, np.array([[100.0, 80.0], [0.0, 0.0]]), config, np.random.default_rng(0))
    assert record["matched_cells"] == [[0, 0], [3, 3]]


@pytest.mark.parametrize(
    ("height", "width", "points", "match"),
    [
        (100, 100, np.array([[101.0, 5.0]]), "outside"),
        (100, 100, np.array([[-0.5, 5.0]]), "outside"),
        (100, 100, np.array([[np.nan, 5.0]]), "finite"),
        (100, 100, np.zeros((3, 3)), "Kx2"),
        (9, 100, np.zeros((0, 2)), "height"),
        (100, 9.5, np.zeros((0, 2)), "width"),
    ],
)
def test_grid_mask_validates(height, width, points, match):
    with pytest.raises(ValueError, match=match):
        grid_mask(height, width, points, GridMaskConfig(), np.random.default_rng(0))


# --------------------------------------------------------------------------- static branch


def test_static_reference_is_deterministic_per_seed_and_differs_between_seeds():
    config = StaticAugmentConfig()
    first, record = static_reference(SOURCE, config, seed=5)
    again, record_again = static_reference(SOURCE, config, seed=5)
    other, _ = static_reference(SOURCE, config, seed=6)
    np.testing.assert_array_equal(first, again)
    assert record == record_again
    assert not np.array_equal(first, other)
    assert first.shape == SOURCE.shape and first.dtype == np.uint8
    assert json.loads(json.dumps(record))["seed"] == 5


def test_static_reference_keeps_odd_sizes():
    image = texture(203, 317, seed=3)
    assert static_reference(image, StaticAugmentConfig(), seed=0)[0].shape == (203, 317, 3)


def test_static_record_holds_each_applied_transform_and_its_params():
    names = set()
    flips = 0
    for seed in range(40):
        _, record = static_reference(SOURCE, StaticAugmentConfig(), seed)
        applied = {entry["name"]: entry["params"] for entry in record["applied"]}
        names |= set(applied)
        flips += "HorizontalFlip" in applied
        assert -30 <= applied["Affine"]["rotate"] <= 30
        assert 0.7 <= applied["Affine"]["scale"]["x"] <= 1.3
        assert np.array(applied["Affine"]["matrix"]).shape == (3, 3)
    assert names == {"HorizontalFlip", "Affine", "Perspective", "ColorJitter"}
    assert 8 <= flips <= 32  # p = 0.5 over 40 seeds: outside this 1 time in 10 000


def test_static_coin_flips_are_independent():
    """Seeded alike, flip and perspective (both p = 0.5) would fire on the same seeds."""
    fired = {"HorizontalFlip": set(), "Perspective": set()}
    for seed in range(40):
        for entry in static_reference(SOURCE, StaticAugmentConfig(), seed)[1]["applied"]:
            fired.get(entry["name"], set()).add(seed)
    assert fired["HorizontalFlip"] != fired["Perspective"]


def test_static_transforms_draw_independently():
    """Turning colour jitter off leaves the geometry of each seed as it was."""
    def geometry(config: StaticAugmentConfig, seed: int) -> dict:
        _, record = static_reference(SOURCE, config, seed)
        return {entry["name"]: entry["params"] for entry in record["applied"] if entry["name"] != "ColorJitter"}

    for seed in range(5):
        assert geometry(StaticAugmentConfig(), seed) == geometry(StaticAugmentConfig(color_jitter_p=0.0), seed)


def test_static_reference_without_augmentation_is_the_image():
    config = StaticAugmentConfig(color_jitter_p=0.0, rotate_limit_deg=0, scale_range=(1, 1), flip_p=0.0,
                                 perspective_p=0.0)
    np.testing.assert_array_equal(static_reference(SOURCE, config, seed=0)[0], SOURCE)


def test_static_borders_are_black_not_mirrored():
    config = StaticAugmentConfig(color_jitter_p=0.0, rotate_limit_deg=0, scale_range=(0.7, 0.7), flip_p=0.0,
                                 perspective_p=0.0)
    reference, _ = static_reference(SOURCE, config, seed=0)  # zoomed out: a 15% frame around the image
    assert not reference[:40].any() and not reference[:, :40].any()
    assert reference[60:260, 60:260].any()


def test_static_reference_still_matches_when_not_flipped():
    config = StaticAugmentConfig(flip_p=0.0)
    for seed in range(3):
        reference, _ = static_reference(SOURCE, config, seed)
        assert match_frames(SOURCE, reference, MatchConfig()).inliers >= 50


def test_static_reference_validates_input():
    with pytest.raises(ValueError, match="seed"):
        static_reference(SOURCE, StaticAugmentConfig(), seed=-1)
    with pytest.raises(ValueError, match="seed"):
        static_reference(SOURCE, StaticAugmentConfig(), seed=1.5)
    with pytest.raises(ValueError, match="RGB uint8"):
        static_reference(SOURCE[..., 0], StaticAugmentConfig(), seed=0)


# --------------------------------------------------------------------------- configs


def test_configs_take_lists_from_yaml():
    config = StaticAugmentConfig(scale_range=[0.8, 1.2], perspective_scale=[0.0, 0.05])
    assert config.scale_range == (0.8, 1.2) and config.perspective_scale == (0.0, 0.05)


@pytest.mark.parametrize(
    ("kind", "kwargs"),
    [
        (SsimBandConfig, {"min_ssim": 0.96}),
        (SsimBandConfig, {"min_ssim": -0.1}),
        (SsimBandConfig, {"max_ssim": 1.5}),
        (SsimBandConfig, {"max_ssim": True}),
        (SsimBandConfig, {"side": 6}),
        (SsimBandConfig, {"side": 128.0}),
        (MatchConfig, {"max_features": 0}),
        (MatchConfig, {"ratio": 0.0}),
        (MatchConfig, {"ratio": 1.2}),
        (MatchConfig, {"ransac_threshold_px": 0}),
        (MatchConfig, {"ransac_threshold_px": math.nan}),
        (MatchConfig, {"min_matches": -1}),
        (MatchConfig, {"min_matches": 8.0}),
        (GridMaskConfig, {"min_cells": 1}),
        (GridMaskConfig, {"min_cells": 11}),
        (GridMaskConfig, {"max_cells": 2, "min_cells": 3}),
        (GridMaskConfig, {"p_matched": 1.1}),
        (GridMaskConfig, {"p_other": -0.1}),
        (GridMaskConfig, {"p_other": "0.5"}),
        (StaticAugmentConfig, {"color_jitter_p": 2}),
        (StaticAugmentConfig, {"flip_p": -1}),
        (StaticAugmentConfig, {"perspective_p": None}),
        (StaticAugmentConfig, {"rotate_limit_deg": 181}),
        (StaticAugmentConfig, {"scale_range": (0.0, 1.3)}),
        (StaticAugmentConfig, {"scale_range": (1.3, 0.7)}),
        (StaticAugmentConfig, {"scale_range": (0.7,)}),
        (StaticAugmentConfig, {"perspective_scale": (0.1, 0.05)}),
        (StaticAugmentConfig, {"perspective_scale": (0.05, 1.5)}),
    ],
)
def test_configs_reject_bad_values(kind, kwargs):
    with pytest.raises(ValueError):
        kind(**kwargs)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"seed": -1}, "seed"), ({"seed": 1.5}, "seed"), ({"seed": True}, "seed"),
    ({"jpeg_quality": 49}, "jpeg_quality"), ({"jpeg_quality": 101}, "jpeg_quality"),
    ({"jpeg_quality": 95.0}, "jpeg_quality"),
    ({"video_share": 1.0}, "video_share"), ({"video_share": -0.1}, "video_share"),
])
def test_frame_pair_settings_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FramePairSettings(**kwargs)


def test_the_image_share_is_capped_by_the_video_pairs():
    assert FramePairSettings(video_share=0.7).static_cap(7) == 3
    assert FramePairSettings(video_share=0).static_cap(7) is None


# --------------------------------------------------------------------------- the image branch's stages


def test_an_image_is_one_record_holding_its_pair_with_the_flip_undone_for_matching():
    source = SourceImage(key="0123456789abcdef01234567", sha256="0" * 64, uri="/images/texture.jpg",
                         width=SOURCE.shape[1], height=SOURCE.shape[0], jpeg=encode_jpeg(SOURCE, 95))
    stage = ImagePairs(512, StaticAugmentConfig(flip_p=1.0), PairRules(), FramePairSettings())
    outputs = list(pickle.loads(pickle.dumps(stage.record_fn()))(source))
    (record,) = [o for o in outputs if isinstance(o, InputPairs)]
    (sample,) = record.pairs
    assert (record.uri, record.key, sample.key) == (source.uri, source.key, f"{source.key}_aug")
    assert sample.metadata["branch"] == "image" and sample.metadata["inliers"] >= MatchConfig().min_matches


def test_the_mix_cap_rejects_an_image_and_its_pair_over_the_threshold():
    cap = pickle.loads(pickle.dumps(CapImagePairs(FramePairSettings(), None).record_fn()))
    record = InputPairs("/images/a.jpg", "0123456789abcdef01234567",
                        (EncodedSample("0123456789abcdef01234567_aug", {}, {}),))
    assert list(cap((record, None))) == [record]
    tagged, image_rejection = cap((record, -1))
    assert tagged.tag == UNPAIRED_TAG and image_rejection.key == record.key
    (pair_rejection,) = tagged.value.pairs
    assert isinstance(pair_rejection, Rejection) and pair_rejection.key == f"{record.key}_aug"
    assert {image_rejection.reason, pair_rejection.reason} == {Reason.OVER_MIX_RATIO}
    assert {image_rejection.stage, pair_rejection.stage} == {"mix"}


def test_the_pair_ledger_opens_with_the_pairs_a_record_names():
    record = InputPairs("/v.mp4", "abc", (EncodedSample("abc_f000001_000009", {}, {}),
                                          Rejection("/v.mp4", "video_pairs", Reason.FRAMES_UNRELATED, "", "abc_f2_3")))
    split = SplitPairs()
    assert tuple(split.input_keys()(record)) == ("abc_f000001_000009", "abc_f2_3") and record.kept == 1
    assert [list(split.record_fn()(pair)) for pair in record.pairs] == [[pair] for pair in record.pairs]

