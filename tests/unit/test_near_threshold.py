"""The report's combiners: the candidates nearest each threshold, and every score value, across merges."""
from __future__ import annotations

import numpy as np

from review.report_inputs import NearThresholdFn, ScoreValuesFn
from transforms.pairs import ScorePoint
from schemas.sample import SCORE_NAMES

SEAM = SCORE_NAMES.index("seam")


def points(count: int, seed: int = 0) -> list[ScorePoint]:
    rng = np.random.default_rng(seed)
    made = []
    for i in range(count):
        scores = [None] * len(SCORE_NAMES)
        scores[SEAM] = float(np.round(rng.uniform(0, 1), 2))  # rounded: many ties
        made.append(ScorePoint(f"{i:06d}_o000_c00", "shard.tar", 0, tuple(scores), bool(i % 3 == 0)))
    return made


def combine(fn, elements, parts=4):
    accumulators = []
    for part in range(parts):
        accumulator = fn.create_accumulator()
        for element in elements[part::parts]:
            accumulator = fn.add_input(accumulator, element)
        accumulators.append(accumulator)
    return fn.extract_output(fn.merge_accumulators(accumulators))


def test_nearest_on_each_side_match_a_brute_force_search_whatever_the_split():
    data = points(500)
    fn = NearThresholdFn({"seam": 0.45}, per_side=3)
    near = combine(fn, data)
    for side, passes in (("pass", lambda v: v <= 0.45), ("fail", lambda v: v > 0.45)):
        expected = sorted((abs(p.scores[SEAM] - 0.45), p.key) for p in data if passes(p.scores[SEAM]))[:3]
        got = [(entry.distance, entry.point.key) for entry in near if entry.side == side]
        assert got == expected
    assert combine(fn, data, parts=1) == near


def test_score_values_keep_every_value_and_the_chosen_ones():
    data = points(100)
    values = combine(ScoreValuesFn(), data)
    all_seam, chosen_seam = values["seam"]
    assert sorted(p.scores[SEAM] for p in data) == all_seam.tolist()
    assert sorted(p.scores[SEAM] for p in data if p.chosen) == chosen_seam.tolist()
    assert values["ssim_outside"][0].size == 0  # never computed: absent, not zero
