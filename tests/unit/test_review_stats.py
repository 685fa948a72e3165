"""The dashboard's audit figures against values worked out by hand (Wilson 1927; Cohen 1960)."""
import pytest

from review.stats import cohen_kappa, wilson


def test_wilson_interval_matches_the_closed_form():
    # 8 of 10: centre (0.8 + 1.92/10) / 1.384, half 1.96 * sqrt(0.016 + 0.0096) / 1.384.
    interval = wilson(8, 10)
    assert interval.estimate == pytest.approx(0.8)
    assert (interval.low, interval.high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))


def test_wilson_stays_inside_zero_one_where_the_normal_interval_would_not():
    perfect = wilson(20, 20)
    assert perfect.high == 1.0 and 0.83 < perfect.low < 0.84
    assert wilson(0, 5).low == 0.0


def test_wilson_of_nothing_is_unknown_and_bad_counts_fail():
    assert wilson(0, 0).estimate is None
    with pytest.raises(ValueError, match="successes"):
        wilson(3, 2)


def test_cohen_kappa_of_a_textbook_table():
    # 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no: p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.4.
    first = ["yes"] * 25 + ["no"] * 25
    second = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(first, second) == pytest.approx(0.4)


def test_cohen_kappa_is_one_for_agreement_and_undefined_for_one_answer():
    assert cohen_kappa(["keep", "reject", "keep"], ["keep", "reject", "keep"]) == pytest.approx(1.0)
    assert cohen_kappa(["keep", "keep"], ["keep", "keep"]) is None
    with pytest.raises(ValueError):
        cohen_kappa(["keep"], [])
