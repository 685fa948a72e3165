"""The quality model: fitting, calibration, persistence, and the signals it is built from."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from schemas import CandidateScores
from schemas.sample import SCORE_NAMES
from transforms.evaluation import by_object, judge_selection, roc_auc, spearman, truth_metrics
from transforms.quality import QualityConfig, agreement, fill_match, hole_stats, score_candidates
from transforms.quality_model import FEATURES, QualityModel, fit, load_model, with_quality
from transforms.thresholds import SCORES


def _rows(n: int, seed: int = 0) -> tuple[list[dict], list[float]]:
    """Synthetic candidates whose PSNR falls with the surround's contrast and rises with agreement."""
    rng = np.random.default_rng(seed)
    rows, psnr = [], []
    for _ in range(n):
        contrast, agree = rng.uniform(2, 60), rng.uniform(0.3, 1.0)
        rows.append({"surround_contrast": contrast, "agreement": agree, "hole_fraction": rng.uniform(0.01, 0.1),
                     "seam": rng.uniform(0.3, 0.6)})
        psnr.append(28 - 16 * math.log1p(contrast) / math.log1p(60) + 8 * (agree - 0.65) + rng.normal(0, 1))
    return rows, psnr


def test_fit_ranks_held_out_candidates_like_their_truth_and_calibrates_to_good():
    rows, psnr = _rows(300)
    model = fit(rows, psnr, features=("log_surround_contrast", "agreement", "log_hole_fraction", "seam"))
    test_rows, test_psnr = _rows(200, seed=1)
    quality = [model.quality(row) for row in test_rows]
    assert spearman(quality, test_psnr) > 0.8
    assert roc_auc(quality, [p >= 20 for p in test_psnr]) > 0.9
    # Calibrated: among candidates rated ~0.5 about half are good; the rating is monotone in predicted dB.
    predicted = [model.predicted_db(row) for row in test_rows]
    assert spearman(quality, predicted) == pytest.approx(1.0)
    assert abs(model.pivot_db - 20.0) < 1.5
    coef = dict(zip(model.features, model.coef))
    assert coef["log_surround_contrast"] < 0 < coef["agreement"]


def test_a_missing_score_counts_as_the_training_mean():
    rows, psnr = _rows(100)
    model = fit(rows, psnr, features=("log_surround_contrast", "agreement"))
    partial = {"surround_contrast": 10.0}
    with_mean = {"surround_contrast": 10.0, "agreement": model.mean[1]}
    assert model.quality(partial) == pytest.approx(model.quality(with_mean))


def test_fit_refuses_data_it_cannot_calibrate():
    rows, psnr = _rows(50)
    with pytest.raises(ValueError, match="one side"):
        fit(rows, [30.0] * 50)
    with pytest.raises(ValueError, match="more candidates"):
        fit(rows[:3], psnr[:3])


def test_a_model_survives_json_and_rejects_unknown_features():
    rows, psnr = _rows(80)
    model = fit(rows, psnr, fitted_on={"candidates": 80})
    again = QualityModel.from_json(json.loads(json.dumps(model.to_json())))
    assert again == model
    with pytest.raises(ValueError, match="unknown quality features"):
        dataclasses.replace(model, features=("shoe_size", *model.features[1:]))


def test_the_packaged_model_loads_uses_recorded_scores_and_fills_quality():
    model = load_model()
    assert set(model.features) <= set(FEATURES) and model.fitted_on["candidates"] >= 100
    assert {FEATURES[name][0] for name in model.features} <= set(SCORE_NAMES) - {"quality"}
    scores = CandidateScores(surround_contrast=3.0, surround_texture=0.5, agreement=0.95, seam=0.4)
    busy = CandidateScores(surround_contrast=60.0, surround_texture=12.0, agreement=0.4, seam=0.6)
    assert with_quality(scores, model).quality > with_quality(busy, model).quality
    assert with_quality(scores, None).quality is None


def test_every_score_has_a_selection_meaning():
    assert tuple(SCORES) == SCORE_NAMES


# --------------------------------------------------------------------------- the signals


def _scene(flat: bool, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    rgb = np.full((size, size, 3), 120, np.uint8) if flat else rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), bool)
    mask[30:60, 30:60] = True
    return rgb, mask


def test_hole_stats_see_busy_surroundings_and_a_deeper_hole():
    flat, mask = _scene(flat=True)
    busy, _ = _scene(flat=False)
    assert hole_stats(busy, mask).surround_texture > 10 * (hole_stats(flat, mask).surround_texture + 0.1)
    assert hole_stats(busy, mask).surround_contrast > 50 > hole_stats(flat, mask).surround_contrast
    deep = np.zeros_like(mask)
    deep[10:90, 10:90] = True
    assert hole_stats(flat, deep).depth > hole_stats(flat, mask).depth
    assert hole_stats(flat, mask).fraction == pytest.approx(mask.mean())


def test_agreement_is_lowest_for_the_candidate_unlike_the_others():
    src, mask = _scene(flat=True)
    similar = [src.copy(), src.copy(), src.copy()]
    similar[1][mask] = 125
    outlier = src.copy()
    outlier[mask] = 250
    scores = score_candidates(src, mask, [*similar, outlier], QualityConfig(quality_model=""))
    agreements = [s.agreement for s in scores]
    assert agreements[3] == min(agreements) < 0.2 and min(agreements[:3]) > 0.7
    assert agreement(src, src.astype(np.float32), mask) == 1.0


def test_fill_match_tells_a_smear_on_texture_from_a_textured_fill():
    busy, mask = _scene(flat=False)
    smear = busy.copy()
    smear[mask] = busy[~mask].mean(axis=0).astype(np.uint8)
    textured = busy.copy()
    textured[mask] = np.random.default_rng(1).integers(0, 255, (int(mask.sum()), 3), dtype=np.uint8)
    smear_gap, _ = fill_match(busy, smear, mask, mask)
    textured_gap, _ = fill_match(busy, textured, mask, mask)
    assert smear_gap > 1.0 > textured_gap
    wrong_colour = busy.copy()
    wrong_colour[mask] = (255, 0, 0)
    assert fill_match(busy, wrong_colour, mask, mask)[1] > fill_match(busy, textured, mask, mask)[1]


# --------------------------------------------------------------------------- truth and selection statistics


def test_truth_metrics_are_exact_where_the_fill_is_and_blind_elsewhere():
    truth, hole = _scene(flat=False)
    assert truth_metrics(truth, truth, hole) == (100.0, pytest.approx(1.0))
    off = truth.astype(np.int16)
    off[hole] += 10
    psnr, ssim = truth_metrics(np.clip(off, 0, 255).astype(np.uint8), truth, hole)
    assert 27 < psnr < 29 and ssim < 1.0
    damaged_outside = truth.copy()
    damaged_outside[~hole] = 0
    assert truth_metrics(damaged_outside, truth, hole)[0] == 100.0


def test_selection_precision_counts_the_chosen_candidate_against_the_truth():
    rows = [{"object_key": "a", "candidate_index": 0, "psnr_db": 25.0}, {"object_key": "a", "candidate_index": 1,
            "psnr_db": 12.0}, {"object_key": "b", "candidate_index": 0, "psnr_db": 15.0}]
    objects = by_object(rows)
    assert judge_selection(objects, lambda c: 0).to_json() == {"objects": 2, "kept": 2, "good_kept": 1,
                                                                "yield": 1.0, "precision": 0.5}
    first_only = judge_selection(objects, lambda c: 1 if c[0]["object_key"] == "a" else None)
    assert (first_only.kept, first_only.good_kept, first_only.precision) == (1, 0, 0.0)
    assert roc_auc([3, 2, 1], [True, False, False]) == 1.0 and roc_auc([1, 1], [True, False]) == 0.5
