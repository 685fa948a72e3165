"""Threshold what-if: how many candidates and objects one threshold would keep, at many values at once.

The sweep answers "what if ``seam`` were 0.4 instead of 0.45?" from the per-object
Parquet of the candidate shards, without reading an image or writing a shard. It
applies the same rules as ``build`` (:meth:`SelectionRules.choose`): the other
thresholds and the review decisions stay as configured, only the swept one moves.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import re
from typing import Iterable, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.decisions import Verdict
from schemas.keys import candidate_key
from schemas.sample import SCORE_NAMES
from transforms.io.files import read_bytes
from transforms.thresholds import SCORES, Better, CandidateView, SelectionRules, Thresholds

LOG = logging.getLogger(__name__)

_SWEEP = re.compile(r"^(?P<name>\w+)=(?P<lo>[-+0-9.eE]+):(?P<hi>[-+0-9.eE]+):(?P<step>[-+0-9.eE]+)$")
MAX_SWEEP_VALUES = 10_000


@dataclasses.dataclass(frozen=True)
class ObjectScores:
    """One candidate object as selection sees it: its key and its candidates' scores."""

    key: str
    candidates: tuple[CandidateView, ...]


@dataclasses.dataclass(frozen=True)
class SweepRow:
    """At threshold ``value``: the share of candidates (that have the score) passing it alone,
    and the objects the build would keep with every other rule unchanged."""

    value: float
    candidate_pass_rate: float
    objects_kept: int
    object_pass_rate: float


def parse_sweep(text: str) -> tuple[str, np.ndarray]:
    """``NAME=lo:hi:step`` -> (score name, values from lo to hi inclusive)."""
    match = _SWEEP.match(text.strip())
    if not match:
        raise ValueError(f"--sweep must look like NAME=lo:hi:step (e.g. seam=0.3:0.6:0.05), got {text!r}")
    name = match["name"]
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; known: {', '.join(SCORES)}")
    lo, hi, step = (float(match[part]) for part in ("lo", "hi", "step"))
    if not all(math.isfinite(v) for v in (lo, hi, step)) or step <= 0 or hi < lo:
        raise ValueError(f"--sweep needs finite lo <= hi and step > 0, got {text!r}")
    count = int(math.floor((hi - lo) / step + 1e-9)) + 1
    if count > MAX_SWEEP_VALUES:
        raise ValueError(f"--sweep {text!r} has {count} values; at most {MAX_SWEEP_VALUES}")
    return name, np.round(lo + step * np.arange(count), 12)


def read_object_scores(parquet_paths: Iterable[str]) -> list[ObjectScores]:
    """Every object of candidate shards, from their Parquet metadata (list columns, one entry per candidate)."""
    objects = []
    for path in parquet_paths:
        if not FileSystems.exists(path):
            LOG.warning("%s is missing: its shard's objects are left out of the sweep", path)
            continue
        table = pq.read_table(pa.BufferReader(read_bytes(path)), columns=["key", *SCORE_NAMES]).to_pydict()
        for row, key in enumerate(table["key"]):
            per_score = [table[name][row] or [] for name in SCORE_NAMES]
            count = max(len(values) for values in per_score)
            candidates = tuple(
                CandidateView(index, {name: (values[index] if index < len(values) else None)
                                      for name, values in zip(SCORE_NAMES, per_score)})
                for index in range(count)
            )
            objects.append(ObjectScores(key, candidates))
    return objects


def _passes(values: np.ndarray, better: Better, bound: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return values >= bound if better is Better.HIGHER else values <= bound


def sweep(objects: Sequence[ObjectScores], rules: SelectionRules, name: str, values: Sequence[float]) -> list[SweepRow]:
    """Pass rates of score ``name`` at each of ``values``; everything else as ``rules`` says.

    Vectorised over candidates: per candidate, whether it fails another threshold or was
    rejected by review is computed once; per value only the swept comparison is redone.
    Equivalent to counting ``rules.choose(...).kept`` for each value (tested).
    """
    spec = SCORES[name]
    others = Thresholds({other: bound for other, bound in rules.thresholds.bounds.items() if other != name})
    decisions = rules.decisions
    score, usable, owner = [], [], []
    forced_keep = np.zeros(len(objects), bool)
    forced_drop = np.zeros(len(objects), bool)
    for number, obj in enumerate(objects):
        on_object = decisions.get(obj.key)
        verdicts = [decisions.get(candidate_key(obj.key, c.index)) for c in obj.candidates]
        eligible = [v is None or v.verdict is not Verdict.REJECT for v in verdicts]
        accepted = any(v is not None and v.verdict is Verdict.ACCEPT for v in verdicts)
        object_rejected = on_object is not None and on_object.verdict is Verdict.REJECT
        forced_drop[number] = object_rejected or not any(eligible)
        forced_keep[number] = not object_rejected and (accepted or (on_object is not None and any(eligible)))
        for candidate, is_eligible in zip(obj.candidates, eligible):
            value = candidate.scores.get(name)
            score.append(np.nan if value is None else value)
            usable.append(is_eligible and not others.failures(candidate.scores))
            owner.append(number)
    score_array, usable_array, owner_array = np.array(score, float), np.array(usable, bool), np.array(owner, int)
    has_score = ~np.isnan(score_array)
    rows = []
    for value in values:
        passing = _passes(score_array, spec.better, float(value))
        kept_by_rules = np.bincount(owner_array, weights=passing & usable_array, minlength=len(objects)) > 0
        kept = forced_keep | (~forced_drop & kept_by_rules)
        rows.append(SweepRow(
            value=float(value),
            candidate_pass_rate=float(passing[has_score].mean()) if has_score.any() else 0.0,
            objects_kept=int(kept.sum()),
            object_pass_rate=float(kept.mean()) if len(objects) else 0.0,
        ))
    return rows


def sweep_table(name: str, rows: Sequence[SweepRow], current: Optional[float], total_objects: int,
                precisions: Optional[Sequence[Optional[float]]] = None) -> str:
    """The sweep as a fixed-width text table; the row of the current threshold is marked.

    ``precisions`` (a candidate set with a known truth: ``evaluate``'s output) adds the
    share of kept objects whose chosen removal is good.
    """
    better = SCORES[name].better
    header = f"{name} ({'min' if better is Better.HIGHER else 'max'})  candidates passing  objects kept (of {total_objects})"
    if precisions is not None:
        header += "  precision (truth)"
    lines = [header, "-" * len(header)]
    for number, row in enumerate(rows):
        mark = "  <- current" if current is not None and math.isclose(row.value, current, abs_tol=1e-12) else ""
        precision = ""
        if precisions is not None:
            value = precisions[number]
            precision = f"  {'-' if value is None else f'{value:.1%}':>17}"
        lines.append(f"{row.value:>14.4g}  {row.candidate_pass_rate:>17.1%}  {row.objects_kept:>8d} "
                     f"({row.object_pass_rate:.1%}){precision}{mark}")
    return "\n".join(lines)
