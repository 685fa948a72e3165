"""The audit figures of the review dashboard: a proportion's Wilson interval, and Cohen's kappa.

Wilson rather than the normal approximation because audit samples are small and the
precision of a good filter is near 1, where the normal interval leaves [0, 1].
"""
from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Hashable, Optional, Sequence

Z_95 = 1.959963984540054


@dataclasses.dataclass(frozen=True)
class Proportion:
    """``successes`` of ``n`` with its Wilson interval (``low``, ``high``); all ``None`` when ``n`` is 0."""

    successes: int
    n: int
    estimate: Optional[float]
    low: Optional[float]
    high: Optional[float]


def wilson(successes: int, n: int, z: float = Z_95) -> Proportion:
    """The Wilson score interval of ``successes / n`` (95 % by default)."""
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Proportion(0, 0, None, None, None)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Proportion(successes, n, p, max(0.0, centre - half), min(1.0, centre + half))


@dataclasses.dataclass(frozen=True)
class Agreement:
    """Two reviewers on the samples both judged: how many, how often they agree, and kappa.

    ``kappa`` is ``None`` when chance agreement is 1 (both always gave the same single
    answer): agreement beyond chance is then undefined, not perfect.
    """

    first: str
    second: str
    n: int
    observed: float
    kappa: Optional[float]


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> Optional[float]:
    """Cohen's kappa of two raters' labels of the same items, in the same order."""
    if len(first) != len(second) or not first:
        raise ValueError(f"need two equally long, non-empty label lists, got {len(first)} and {len(second)}")
    n = len(first)
    observed = sum(a == b for a, b in zip(first, second)) / n
    counts_a, counts_b = Counter(first), Counter(second)
    expected = sum(counts_a[label] * counts_b[label] for label in counts_a) / (n * n)
    if expected == 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def agreement(first: str, second: str, labels_a: Sequence[Hashable], labels_b: Sequence[Hashable]) -> Agreement:
    observed = sum(a == b for a, b in zip(labels_a, labels_b)) / len(labels_a)
    return Agreement(first, second, len(labels_a), observed, cohen_kappa(labels_a, labels_b))
