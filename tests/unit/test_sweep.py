"""The threshold sweep agrees with the build's own selection at every value."""
from __future__ import annotations

import numpy as np
import pytest

from schemas.decisions import Decision, Decisions, Verdict, latest
from schemas.keys import candidate_key
from transforms.sweep import ObjectScores, parse_sweep, sweep, sweep_table
from transforms.thresholds import CandidateView, SelectionRules, Thresholds


def random_objects(count: int, seed: int = 0) -> list[ObjectScores]:
    rng = np.random.default_rng(seed)
    objects = []
    for number in range(count):
        candidates = tuple(
            CandidateView(index, {"ssim_outside": float(rng.uniform(0.9, 1)), "change_inside": float(rng.uniform(0, 0.3)),
                                  "redetect_score": float(rng.choice([0.0, rng.uniform(0, 0.8)])),
                                  "clip_object_gone": None if rng.random() < 0.3 else float(rng.normal(0, 0.05)),
                                  "seam": float(rng.uniform(0.2, 0.6))})
            for index in range(int(rng.integers(1, 5))))
        objects.append(ObjectScores(f"{number:024x}_o000", candidates))
    return objects


def test_sweep_counts_equal_choose_at_every_value_with_decisions():
    objects = random_objects(300)
    made = []
    for i, obj in enumerate(objects[:60]):
        key = obj.key if i % 2 else candidate_key(obj.key, 0)
        made.append(Decision(key, Verdict.ACCEPT if i % 3 else Verdict.REJECT, "qa", "2026-11-21T10:00:00+00:00"))
    rules = SelectionRules(Thresholds({"ssim_outside": 0.92, "seam": 0.45, "clip_object_gone": -0.02}),
                           decisions=Decisions(latest(made)))
    for name in ("seam", "redetect_score", "clip_object_gone"):
        values = np.linspace(0.0, 0.7, 8)  # inside every swept score's range
        rows = sweep(objects, rules, name, values)
        for row in rows:
            with_value = SelectionRules(rules.thresholds.with_bound(name, row.value), rules.ranking, rules.decisions)
            expected = sum(with_value.choose(o.key, o.candidates).kept for o in objects)
            assert row.objects_kept == expected, (name, row.value)
        assert rows[0].objects_kept != rows[-1].objects_kept  # the sweep moves something


def test_candidate_pass_rate_counts_only_candidates_that_have_the_score():
    objects = [ObjectScores("a_o000", (CandidateView(0, {"clip_object_gone": 0.1}), CandidateView(1, {"clip_object_gone": None}),
                                       CandidateView(2, {"clip_object_gone": -0.1})))]
    row, = sweep(objects, SelectionRules(Thresholds({})), "clip_object_gone", [0.0])
    assert row.candidate_pass_rate == 0.5 and row.objects_kept == 1


def test_parse_sweep_is_inclusive_and_strict():
    name, values = parse_sweep("seam=0.3:0.6:0.1")
    assert name == "seam" and values.tolist() == [0.3, 0.4, 0.5, 0.6]
    for bad in ("seam=0.6:0.3:0.1", "seam=0:1:0", "nope=0:1:0.1", "seam:0:1", "seam=0:1e9:1e-9"):
        with pytest.raises(ValueError):
            parse_sweep(bad)


def test_the_table_marks_the_current_threshold():
    rows = sweep(random_objects(20), SelectionRules(), "seam", [0.4, 0.45])
    table = sweep_table("seam", rows, 0.45, 20)
    assert table.splitlines()[-1].endswith("<- current") and "max" in table.splitlines()[0]
