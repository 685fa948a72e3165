"""Which removal candidate of an object becomes its training pair: thresholds, ranking, review.

Bootstrap mining keeps every candidate with its scores; this module decides, per object,
from those scores alone (no image is read), so changing a threshold is cheap:

1. a reviewer's decision on the object or a candidate comes first (schemas/decisions.py);
2. a candidate *passes* when every configured threshold holds for it (each score has a
   fixed good direction, so a threshold is one number: a minimum or a maximum);
3. of the passing candidates, the one with the highest **combined score** wins
   (Blended Diffusion's lesson: rank several attempts rather than trust one);
4. an object with no passing candidate is rejected with the reason of the candidate
   that came closest (fewest failed thresholds, then highest combined score).

The combined score is the weighted mean, over the scores a candidate has, of each
score's *goodness* in [0, 1] (table in docs/FORMAT.md):

    ssim_outside      clip(ssim_outside, 0, 1)
    change_inside     min(change_inside / 0.2, 1)   more change is no better past 0.2
    redetect_score    1 - redetect_score
    clip_object_gone  clip(0.5 + 5 * clip_object_gone, 0, 1)
    seam              1 - seam
    hole_fraction     1 - min(hole_fraction / 0.25, 1)
    hole_depth        1 - min(hole_depth / 0.1, 1)
    surround_texture  1 / (1 + surround_texture / 8)
    surround_contrast 1 / (1 + surround_contrast / 32)
    agreement         clip(agreement, 0, 1)
    texture_gap       1 - min(texture_gap / 2, 1)
    colour_gap        1 - min(colour_gap / 2, 1)
    quality           clip(quality, 0, 1)
"""
from __future__ import annotations

import dataclasses
import difflib
import enum
import math
from typing import Callable, Mapping, Optional, Sequence

from schemas import Reason
from schemas.decisions import NO_DECISIONS, Decision, Decisions, Verdict
from schemas.keys import candidate_key
from schemas.sample import SCORE_NAMES
from transforms.checks import is_number


class Better(str, enum.Enum):
    """Which side of a threshold passes."""

    HIGHER = "higher"
    LOWER = "lower"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
    """What a score means for selection: its good direction, the reason a failure gives, its goodness, its range."""

    name: str
    better: Better
    reason: Reason
    goodness: Callable[[float], float]
    #: The values the score can take (docs/FORMAT.md): a bound outside it keeps nothing or checks nothing.
    domain: tuple[float, float] = (0.0, 1.0)

    def passes(self, value: float, threshold: float) -> bool:
        return value >= threshold if self.better is Better.HIGHER else value <= threshold

    def describe_failure(self, value: float, threshold: float) -> str:
        return f"{self.name} {value:.4g} {'<' if self.better is Better.HIGHER else '>'} {threshold:.4g}"


def _clip01(value: float) -> float:
    return min(max(value, 0.0), 1.0)


#: Every score of a candidate, in ``SCORE_NAMES`` order.
SCORES: Mapping[str, ScoreSpec] = {
    spec.name: spec
    for spec in (
        ScoreSpec("ssim_outside", Better.HIGHER, Reason.BACKGROUND_CHANGED, _clip01, (-1.0, 1.0)),
        ScoreSpec("change_inside", Better.HIGHER, Reason.NOTHING_REMOVED, lambda v: min(max(v, 0.0) / 0.2, 1.0)),
        ScoreSpec("redetect_score", Better.LOWER, Reason.OBJECT_STILL_DETECTED, lambda v: 1.0 - _clip01(v)),
        ScoreSpec("clip_object_gone", Better.HIGHER, Reason.OBJECT_NOT_GONE, lambda v: _clip01(0.5 + 5.0 * v),
                  (-2.0, 2.0)),
        ScoreSpec("seam", Better.LOWER, Reason.VISIBLE_SEAM, lambda v: 1.0 - _clip01(v)),
        ScoreSpec("hole_fraction", Better.LOWER, Reason.HOLE_TOO_LARGE, lambda v: 1.0 - _clip01(v / 0.25)),
        ScoreSpec("hole_depth", Better.LOWER, Reason.HOLE_TOO_DEEP, lambda v: 1.0 - _clip01(v / 0.1), (0.0, 0.5)),
        ScoreSpec("surround_texture", Better.LOWER, Reason.TEXTURED_SURROUND, lambda v: 1.0 / (1.0 + max(v, 0.0) / 8.0),
                  (0.0, math.inf)),
        ScoreSpec("surround_contrast", Better.LOWER, Reason.CONTRASTED_SURROUND,
                  lambda v: 1.0 / (1.0 + max(v, 0.0) / 32.0), (0.0, math.inf)),
        ScoreSpec("agreement", Better.HIGHER, Reason.CANDIDATES_DISAGREE, _clip01),
        ScoreSpec("texture_gap", Better.LOWER, Reason.TEXTURE_MISMATCH, lambda v: 1.0 - _clip01(v / 2.0),
                  (0.0, math.inf)),
        ScoreSpec("colour_gap", Better.LOWER, Reason.COLOUR_MISMATCH, lambda v: 1.0 - _clip01(v / 2.0),
                  (0.0, math.inf)),
        ScoreSpec("quality", Better.HIGHER, Reason.LOW_QUALITY, _clip01),
    )
}
if tuple(SCORES) != SCORE_NAMES:  # a new score needs its selection meaning here
    raise ImportError(f"selection specs {tuple(SCORES)} do not match candidate scores {SCORE_NAMES}")

#: Thresholds of the embedded default, on the scores the default bootstrap run computes.
#: ``quality`` >= 0.5: the fitted estimate says the removal is more likely within 20 dB of the
#: truth than not (precision-yield curve and the figures behind it: docs/benchmarks.md).
DEFAULT_THRESHOLDS: Mapping[str, float] = {
    "ssim_outside": 0.95, "change_inside": 0.05, "redetect_score": 0.3, "seam": 0.45, "quality": 0.5,
}

Scores = Mapping[str, Optional[float]]


def _check_known(names: Sequence[str], what: str) -> None:
    unknown = sorted(set(names) - set(SCORES), key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), list(SCORES), n=1)
        hint = f" (did you mean {close[0]}?)" if close else f"; known: {', '.join(SCORES)}"
        raise ValueError(f"unknown score {unknown[0]!r} in {what}{hint}")


def check_bound(name: str, value: object) -> None:
    """A threshold on a known score is a finite number inside the score's range (``ValueError`` naming it if not)."""
    _check_known([name], "thresholds")
    if not is_number(value) or not math.isfinite(value):
        raise ValueError(f"threshold {name} must be a finite number, got {value!r}")
    low, high = SCORES[name].domain
    if not low <= value <= high:
        minimum = SCORES[name].better is Better.HIGHER
        keeps = "nothing" if (value > high) == minimum else "everything (null drops a threshold)"
        raise ValueError(f"threshold {name} {value:g} is outside the score's range [{low:g}, {high:g}]: "
                         f"as a {'minimum' if minimum else 'maximum'} it keeps {keeps}")


@dataclasses.dataclass(frozen=True)
class Thresholds:
    """One bound per score (a minimum or a maximum, by the score's direction); a score without one is not checked.

    A threshold on a score a candidate does not have (``null``: its model did not run)
    fails with ``score_missing``, so a forgotten scorer never passes everything silently.
    """

    bounds: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

    def __post_init__(self) -> None:
        for name, value in self.bounds.items():
            check_bound(name, value)
        # Score order, so failures are reported in the same order everywhere.
        object.__setattr__(self, "bounds", {name: float(self.bounds[name]) for name in SCORES if name in self.bounds})

    def with_bound(self, name: str, value: float) -> "Thresholds":
        return Thresholds({**self.bounds, name: value})

    def failures(self, scores: Scores) -> list[tuple[Reason, str]]:
        """Every threshold a candidate fails, as (reason, detail), in score order."""
        failed = []
        for name, bound in self.bounds.items():
            value = scores.get(name)
            spec = SCORES[name]
            if value is None:
                failed.append((Reason.SCORE_MISSING, f"{name} was not computed"))
            elif not spec.passes(value, bound):
                failed.append((spec.reason, spec.describe_failure(value, bound)))
        return failed

    def to_json(self) -> dict[str, dict[str, float]]:
        """``{score: {"min"|"max": bound}}``: the direction spelled out for lineage and reports."""
        return {name: {"min" if SCORES[name].better is Better.HIGHER else "max": bound}
                for name, bound in self.bounds.items()}


@dataclasses.dataclass(frozen=True)
class Ranking:
    """Weights of the combined score; a score with weight 0 does not rank."""

    weights: Mapping[str, float] = dataclasses.field(default_factory=lambda: dict.fromkeys(SCORES, 1.0))

    def __post_init__(self) -> None:
        _check_known(list(self.weights), "ranking weights")
        for name, weight in self.weights.items():
            if not is_number(weight) or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"ranking weight {name} must be a finite number >= 0, got {weight!r}")
        if not any(self.weights.values()):
            raise ValueError("at least one ranking weight must be positive")

    def combined(self, scores: Scores) -> float:
        """The weighted mean goodness over the scores the candidate has; 0 when it has none."""
        total = weight_sum = 0.0
        for name, weight in self.weights.items():
            value = scores.get(name)
            if value is not None and weight:
                total += weight * SCORES[name].goodness(value)
                weight_sum += weight
        return total / weight_sum if weight_sum else 0.0


@dataclasses.dataclass(frozen=True)
class CandidateView:
    """What selection reads of one candidate."""

    index: int
    scores: Scores


class SelectedBy(str, enum.Enum):
    THRESHOLDS = "thresholds"
    REVIEW = "review"

    def __str__(self) -> str:
        return self.value


@dataclasses.dataclass(frozen=True)
class Choice:
    """The outcome for one object: a chosen candidate, or the reason there is none."""

    candidate_index: Optional[int]
    combined_score: Optional[float]
    selected_by: Optional[SelectedBy] = None
    review: Optional[Decision] = None
    reason: Optional[Reason] = None
    detail: str = ""
    #: Whether some candidate passed every threshold (before review decisions applied).
    passed_thresholds: bool = False

    @property
    def kept(self) -> bool:
        return self.candidate_index is not None


@dataclasses.dataclass(frozen=True)
class SelectionRules:
    """Thresholds, ranking weights and review decisions: everything :func:`choose` applies."""

    thresholds: Thresholds = dataclasses.field(default_factory=Thresholds)
    ranking: Ranking = dataclasses.field(default_factory=Ranking)
    decisions: Decisions = NO_DECISIONS

    def choose(self, object_key: str, candidates: Sequence[CandidateView]) -> Choice:
        """Pick the object's candidate (module docstring); pure, so build and the sweep agree."""
        if not candidates:
            raise ValueError(f"{object_key} has no candidates")
        combined = {c.index: self.ranking.combined(c.scores) for c in candidates}
        failures = {c.index: self.thresholds.failures(c.scores) for c in candidates}
        passing = [c.index for c in candidates if not failures[c.index]]

        def best(indices: Sequence[int]) -> int:
            return max(indices, key=lambda index: (combined[index], -index))

        def pick(index: int, selected_by: SelectedBy, review: Optional[Decision] = None) -> Choice:
            return Choice(index, combined[index], selected_by, review, passed_thresholds=bool(passing))

        def reject(reason: Reason, detail: str, review: Optional[Decision] = None) -> Choice:
            return Choice(None, None, review=review, reason=reason, detail=detail, passed_thresholds=bool(passing))

        on_object = self.decisions.get(object_key)
        if on_object is not None and on_object.verdict is Verdict.REJECT:
            return reject(Reason.REVIEW_REJECTED, f"rejected by {on_object.reviewer}: {on_object.note}".rstrip(": "),
                          on_object)
        on_candidates = {c.index: self.decisions.get(candidate_key(object_key, c.index)) for c in candidates}
        accepted = [i for i, d in on_candidates.items() if d is not None and d.verdict is Verdict.ACCEPT]
        if accepted:
            chosen = best(accepted)
            return pick(chosen, SelectedBy.REVIEW, on_candidates[chosen])
        eligible = [c.index for c in candidates
                    if on_candidates[c.index] is None or on_candidates[c.index].verdict is not Verdict.REJECT]
        if not eligible:
            return reject(Reason.REVIEW_REJECTED, "every candidate rejected by review")
        if on_object is not None:  # accepted: thresholds do not apply
            return pick(best(eligible), SelectedBy.REVIEW, on_object)
        eligible_passing = [index for index in passing if index in eligible]
        if eligible_passing:
            return pick(best(eligible_passing), SelectedBy.THRESHOLDS)
        closest = min(eligible, key=lambda index: (len(failures[index]), -combined[index], index))
        reason = failures[closest][0][0]
        detail = f"closest candidate {closest:02d}: " + "; ".join(text for _, text in failures[closest])
        return reject(reason, detail)
