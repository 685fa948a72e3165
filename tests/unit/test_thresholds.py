"""Candidate selection: thresholds with their reasons, the combined score, and review decisions."""
from __future__ import annotations

import pytest

from schemas import Reason
from schemas.decisions import Decision, Decisions, Verdict, latest
from transforms.thresholds import SCORES, CandidateView, Ranking, SelectedBy, SelectionRules, Thresholds

OBJECT = "a" * 24 + "_o000"


def good(**overrides):
    return {"ssim_outside": 0.99, "change_inside": 0.3, "redetect_score": 0.0, "clip_object_gone": None, "seam": 0.3,
            "quality": 0.9, **overrides}


def views(*scores):
    return [CandidateView(index, s) for index, s in enumerate(scores)]


def decisions(*items):
    made = [Decision(key, Verdict(verdict), "qa", f"2026-11-21T10:00:0{i}+00:00") for i, (key, verdict) in enumerate(items)]
    return Decisions(by_key=latest(made), sha256="x")


def test_each_score_fails_with_its_own_reason_in_score_order():
    thresholds = Thresholds({"seam": 0.4, "ssim_outside": 0.95, "redetect_score": 0.3, "change_inside": 0.05})
    failures = thresholds.failures(good(ssim_outside=0.9, change_inside=0.01, redetect_score=0.5, seam=0.5))
    assert [reason for reason, _ in failures] == [Reason.BACKGROUND_CHANGED, Reason.NOTHING_REMOVED,
                                                   Reason.OBJECT_STILL_DETECTED, Reason.VISIBLE_SEAM]
    assert failures[0][1] == "ssim_outside 0.9 < 0.95" and failures[3][1] == "seam 0.5 > 0.4"
    assert thresholds.failures(good()) == []
    assert thresholds.failures(good(seam=0.4)) == []  # a bound itself passes


def test_a_threshold_on_a_score_that_was_not_computed_fails():
    assert Thresholds({"clip_object_gone": 0.0}).failures(good()) == [(Reason.SCORE_MISSING,
                                                                        "clip_object_gone was not computed")]


@pytest.mark.parametrize("bounds", [{"nope": 1.0}, {"seam": float("nan")}, {"seam": "high"}])
def test_bad_thresholds_are_refused(bounds):
    with pytest.raises(ValueError):
        Thresholds(bounds)


def test_combined_score_is_the_weighted_mean_goodness_of_the_scores_present():
    scores = good(ssim_outside=0.98, change_inside=0.1, redetect_score=0.2, seam=0.4)
    expected = (0.98 + 0.5 + 0.8 + 0.6 + 0.9) / 5  # clip_object_gone and the hole scores are absent: not counted
    assert Ranking().combined(scores) == pytest.approx(expected)
    assert Ranking({"seam": 1.0}).combined(scores) == pytest.approx(0.6)
    assert Ranking({"seam": 0.0, "change_inside": 2.0}).combined(scores) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        Ranking({"seam": 0.0})
    assert set(SCORES) == {"ssim_outside", "change_inside", "redetect_score", "clip_object_gone", "seam",
                           "hole_fraction", "hole_depth", "surround_texture", "surround_contrast", "agreement",
                           "texture_gap", "colour_gap", "quality"}


def test_the_best_passing_candidate_wins_not_the_best_overall():
    rules = SelectionRules(Thresholds({"redetect_score": 0.3}))
    best_overall_but_detected = good(redetect_score=0.35, seam=0.05)
    passing_weaker = good(seam=0.5)
    passing_better = good(seam=0.35)
    choice = rules.choose(OBJECT, views(best_overall_but_detected, passing_weaker, passing_better))
    assert (choice.candidate_index, choice.selected_by, choice.passed_thresholds) == (2, SelectedBy.THRESHOLDS, True)
    assert choice.combined_score == pytest.approx(Ranking().combined(passing_better))


def test_ties_go_to_the_lower_candidate_index():
    assert SelectionRules().choose(OBJECT, views(good(), good(), good())).candidate_index == 0


def test_an_object_without_a_passing_candidate_gets_the_reason_of_the_closest_one():
    rules = SelectionRules(Thresholds({"ssim_outside": 0.95, "seam": 0.4}))
    two_failures = good(ssim_outside=0.9, seam=0.5)
    one_failure = good(seam=0.45)
    choice = rules.choose(OBJECT, views(two_failures, one_failure))
    assert not choice.kept and choice.reason is Reason.VISIBLE_SEAM
    assert choice.detail == "closest candidate 01: seam 0.45 > 0.4"


def test_review_rejecting_the_object_overrides_passing_scores():
    rules = SelectionRules(decisions=decisions((OBJECT, "reject")))
    choice = rules.choose(OBJECT, views(good()))
    assert not choice.kept and choice.reason is Reason.REVIEW_REJECTED and choice.review.reviewer == "qa"


def test_review_accepting_the_object_overrides_failing_scores():
    rules = SelectionRules(Thresholds({"seam": 0.1}), decisions=decisions((OBJECT, "accept")))
    choice = rules.choose(OBJECT, views(good(seam=0.5), good(seam=0.3)))
    assert (choice.candidate_index, choice.selected_by, choice.passed_thresholds) == (1, SelectedBy.REVIEW, False)


def test_review_of_candidates_picks_or_excludes_them():
    accept_worst = SelectionRules(decisions=decisions((f"{OBJECT}_c02", "accept")))
    assert accept_worst.choose(OBJECT, views(good(), good(), good(seam=0.9))).candidate_index == 2
    reject_best = SelectionRules(decisions=decisions((f"{OBJECT}_c00", "reject")))
    assert reject_best.choose(OBJECT, views(good(seam=0.1), good(seam=0.4))).candidate_index == 1
    reject_all = SelectionRules(decisions=decisions((f"{OBJECT}_c00", "reject"), (f"{OBJECT}_c01", "reject")))
    assert reject_all.choose(OBJECT, views(good(), good())).reason is Reason.REVIEW_REJECTED


def test_an_object_with_no_passing_candidate_is_rejected_for_its_closest_candidate():
    rules = SelectionRules(Thresholds({"redetect_score": 0.3, "seam": 0.4}))
    # Candidate 0 fails two thresholds; 1 and 2 fail one each, 2 with the better combined score: 2 is closest.
    choice = rules.choose(OBJECT, views(good(redetect_score=0.9, seam=0.9), good(seam=0.95), good(seam=0.5)))
    assert not choice.kept and choice.reason is Reason.VISIBLE_SEAM
    assert choice.detail == "closest candidate 02: seam 0.5 > 0.4"
    # A tie on failures and combined score goes to the lower index.
    tied = rules.choose(OBJECT, views(good(redetect_score=0.9, seam=0.9), good(seam=0.5), good(seam=0.5)))
    assert tied.detail.startswith("closest candidate 01:")
