"""Model-free candidate scores: what each one rewards and punishes, on a real photo."""
import json

import cv2
import numpy as np
import pytest

from schemas import Box, RawInput
from transforms.io.decode import DecodeConfig, decode_rgb, decode_source
from transforms.quality import QualityConfig, change_inside, edit_region, score_candidate, seam, ssim_outside


@pytest.fixture
def coffee(samples_dir):
    """(rgb, mask): the coffee photo and its cup box from the COCO sample, filled as an ellipse."""
    path = samples_dir / "images" / "coffee.jpg"
    source = decode_source(RawInput(str(path), path.read_bytes()), DecodeConfig())
    rgb = decode_rgb(source.jpeg)
    coco = json.loads((samples_dir / "annotations" / "coco.json").read_text())
    box = Box.from_xywh(*next(a["bbox"] for a in coco["annotations"] if a["image_id"] == 2))
    mask = np.zeros(rgb.shape[:2], np.uint8)
    center = (round((box.x0 + box.x1) / 2), round((box.y0 + box.y1) / 2))
    cv2.ellipse(mask, center, (round(box.width / 2), round(box.height / 2)), 0, 0, 360, 1, -1)
    return rgb, mask > 0


def _grey_block(rgb, mask):
    pasted = rgb.copy()
    pasted[mask] = 128
    return pasted


def _telea(rgb, mask, dilation_px=7):
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilation_px + 1,) * 2)
    return cv2.inpaint(rgb, cv2.dilate(mask.astype(np.uint8), kernel), 5, cv2.INPAINT_TELEA)


def _in_range(scores):
    assert -1.0 <= scores.ssim_outside <= 1.0
    assert 0.0 <= scores.change_inside <= 1.0
    assert 0.0 <= scores.seam < 1.0


def test_an_untouched_image_scores_perfect_and_model_scores_stay_uncomputed(coffee):
    rgb, mask = coffee
    scores = score_candidate(rgb, mask, rgb.copy(), QualityConfig())
    assert scores.ssim_outside == pytest.approx(1.0, abs=1e-6)
    assert scores.change_inside == 0.0
    assert scores.redetect_score is None and scores.clip_object_gone is None
    _in_range(scores)


def test_background_damage_lowers_ssim_outside_and_more_damage_lowers_it_more(coffee):
    rgb, mask = coffee
    rng = np.random.default_rng(0)
    scores = []
    for sigma in (5, 20, 60):
        damaged = rgb.copy()
        corner = damaged[250:, :150].astype(float) + rng.normal(0, sigma, damaged[250:, :150].shape)
        damaged[250:, :150] = np.clip(corner, 0, 255).astype(np.uint8)
        assert not mask[250:, :150].any()
        scores.append(score_candidate(rgb, mask, damaged, QualityConfig()))
    ssims = [s.ssim_outside for s in scores]
    assert 1.0 > ssims[0] > ssims[1] > ssims[2]
    assert ssims[2] < 0.95
    assert all(s.change_inside == 0.0 for s in scores)


def test_changes_inside_the_mask_do_not_leak_into_ssim_outside_through_the_window(coffee):
    rgb, mask = coffee
    pasted = _grey_block(rgb, mask)
    assert ssim_outside(rgb, pasted, mask, margin_px=16) == pytest.approx(1.0, abs=1e-6)
    # Without the margin, windows that straddle the mask see the change: the reason it exists.
    assert ssim_outside(rgb, pasted, mask, margin_px=0) < 0.999


def test_change_inside_is_the_mean_absolute_change_as_a_fraction(coffee):
    rgb, mask = coffee
    black, white = np.zeros_like(rgb), np.full_like(rgb, 255)
    assert change_inside(black, white, mask) == 1.0
    assert change_inside(black, np.full_like(rgb, 51), mask) == pytest.approx(0.2)
    assert change_inside(rgb, _grey_block(rgb, mask), mask) == pytest.approx(np.abs(rgb[mask].astype(int) - 128).mean() / 255)
    assert change_inside(rgb, rgb, np.zeros_like(mask)) is None


def test_a_pasted_block_has_a_worse_seam_than_a_smooth_fill(coffee):
    rgb, mask = coffee
    block = _grey_block(rgb, mask)
    filled = _telea(rgb, mask)
    config = QualityConfig()
    block_scores = score_candidate(rgb, mask, block, config)
    fill_scores = score_candidate(rgb, mask, filled, config)
    assert block_scores.seam > 0.6 > 0.5 > fill_scores.seam
    # The fill repainted a dilated band: the seam is looked for where it ends, not at the mask.
    region = edit_region(rgb, filled, mask, margin_px=16, tolerance=8)
    assert region.sum() > mask.sum() and not region[:, :100].any()
    _in_range(block_scores)
    _in_range(fill_scores)


def test_seam_on_synthetic_images():
    flat = np.full((100, 100, 3), 90, np.uint8)
    square = np.zeros((100, 100), bool)
    square[30:70, 30:70] = True
    pasted = flat.copy()
    pasted[square] = 200
    assert seam(flat, square) == 0.0
    assert seam(pasted, square) > 0.9
    # A border as busy as its surroundings sits near the middle of the scale.
    noise = np.random.default_rng(1).integers(0, 256, (100, 100, 3), dtype=np.uint8)
    assert 0.4 < seam(noise, square) < 0.6
    assert seam(noise, np.ones_like(square)) is None
    assert ssim_outside(noise, noise, np.ones_like(square)) is None


def test_large_images_are_scored_at_max_side(coffee):
    rgb, mask = coffee
    filled = _telea(rgb, mask)
    config = QualityConfig(max_side=512)
    small = score_candidate(rgb, mask, filled, config)
    big = score_candidate(
        cv2.resize(rgb, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC),
        cv2.resize(mask.astype(np.uint8), None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST) > 0,
        cv2.resize(filled, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC),
        config,
    )
    assert big.ssim_outside == pytest.approx(small.ssim_outside, abs=0.02)
    assert big.change_inside == pytest.approx(small.change_inside, abs=0.02)
    assert big.seam == pytest.approx(small.seam, abs=0.1)


def test_inputs_must_agree(coffee):
    rgb, mask = coffee
    with pytest.raises(ValueError, match="candidate is"):
        score_candidate(rgb, mask, rgb[:-1], QualityConfig())
    with pytest.raises(ValueError, match="bool mask"):
        score_candidate(rgb, mask.astype(np.uint8), rgb, QualityConfig())
    with pytest.raises(ValueError, match="uint8 source"):
        score_candidate(rgb.astype(np.float32), mask, rgb, QualityConfig())


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_side": 8}, "max_side"),
        ({"outside_margin_px": 2}, "SSIM window radius"),
        ({"seam_band_px": 0}, "seam_band_px"),
        ({"seam_ring_px": 0}, "seam_ring_px"),
        ({"change_tolerance": 255}, "change_tolerance"),
        ({"max_side": 512.0}, "max_side"),
    ],
)
def test_config_is_validated(options, message):
    with pytest.raises(ValueError, match=message):
        QualityConfig(**options)
