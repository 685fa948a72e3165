"""What a build's report shows of the scores: every candidate's values, and pictures of those nearest each threshold.

Both are computed while the build runs, from the :class:`~transforms.pairs.ScorePoint` s
its selection emits, so the report never reads the candidate shards again except for the
few near-threshold thumbnails (only their members are read).
"""
from __future__ import annotations

import array
import heapq
import logging
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

import apache_beam as beam
import numpy as np

from review.contact_sheet import candidate_thumbnail
from review.report import Thumbnail
from schemas.keys import object_of
from schemas.sample import SCORE_NAMES, Field, removed_field
from transforms.io.readers import read_members
from transforms.pairs import ScorePoint
from transforms.thresholds import SCORES

LOG = logging.getLogger(__name__)


class ScoreValuesFn(beam.CombineFn):
    """Every candidate's value of every score, and the chosen ones': ``{name: (all, chosen)}`` arrays."""

    def create_accumulator(self) -> dict[str, tuple[array.array, array.array]]:
        return {name: (array.array("d"), array.array("d")) for name in SCORE_NAMES}

    def add_input(self, accumulator, point: ScorePoint):
        for name, value in zip(SCORE_NAMES, point.scores):
            if value is not None:
                accumulator[name][0].append(value)
                if point.chosen:
                    accumulator[name][1].append(value)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for accumulator in accumulators:
            for name, (values, chosen) in accumulator.items():
                merged[name][0].extend(values)
                merged[name][1].extend(chosen)
        return merged

    def extract_output(self, accumulator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return {name: (np.sort(np.frombuffer(values, np.float64)), np.sort(np.frombuffer(chosen, np.float64)))
                for name, (values, chosen) in accumulator.items()}


class NearThreshold(NamedTuple):
    score: str
    side: str  # "pass" or "fail"
    distance: float
    point: ScorePoint


class NearThresholdFn(beam.CombineFn):
    """Per thresholded score, the ``per_side`` candidates closest to the threshold on each side.

    A candidate's side is judged on that one score, whatever the others say: the report
    shows what the threshold itself separates. Ties go to the smaller key (deterministic).
    """

    def __init__(self, bounds: Mapping[str, float], per_side: int) -> None:
        super().__init__()
        self._bounds = dict(bounds)
        self._per_side = per_side

    def create_accumulator(self) -> list[tuple[float, str, str, ScorePoint]]:
        return []

    def add_input(self, accumulator, point: ScorePoint):
        for name, bound in self._bounds.items():
            value = point.scores[SCORE_NAMES.index(name)]
            if value is not None:
                side = "pass" if SCORES[name].passes(value, bound) else "fail"
                accumulator.append((abs(value - bound), point.key, f"{name}/{side}", point))
        return self._trim(accumulator) if len(accumulator) > 4 * self._per_side * max(1, len(self._bounds)) else accumulator

    def _trim(self, entries: Iterable[tuple[float, str, str, ScorePoint]]) -> list:
        groups: dict[str, list] = {}
        for entry in entries:
            groups.setdefault(entry[2], []).append(entry)
        return [entry for group in groups.values() for entry in heapq.nsmallest(self._per_side, group, key=lambda e: e[:2])]

    def merge_accumulators(self, accumulators):
        return self._trim(entry for accumulator in accumulators for entry in accumulator)

    def extract_output(self, accumulator) -> list[NearThreshold]:
        kept = sorted(self._trim(accumulator), key=lambda e: (e[2], e[0], e[1]))
        return [NearThreshold(*group.split("/"), distance, point) for distance, _, group, point in kept]


def near_threshold_thumbnails(shard_and_points: tuple[str, Iterable[NearThreshold]]) -> Iterator[Thumbnail]:
    """Pictures of the near-threshold candidates of one shard, reading only their members."""
    shard, near = shard_and_points
    near = list(near)
    object_keys = {object_of(point.key) for *_, point in near}
    wanted = [f"{key}.{field}" for key in object_keys for field in (Field.SRC, Field.MASK, Field.JSON)]
    wanted += [f"{object_of(point.key)}.{removed_field(point.candidate_index)}" for *_, point in near]
    members = read_members(shard, wanted)
    for score, side, _, point in near:
        object_key = object_of(point.key)
        sample = {name.partition(".")[2]: data for name, data in members.items() if name.partition(".")[0] == object_key}
        try:
            jpeg = candidate_thumbnail(sample, point.candidate_index)
        except (KeyError, OSError, ValueError) as error:  # a picture is not worth failing a finished build
            LOG.warning("no thumbnail for %s: %s", point.key, error)
            continue
        yield Thumbnail(score=score, side=side, key=point.key, value=point.scores[SCORE_NAMES.index(score)], jpeg=jpeg)


class ReportInputs(NamedTuple):
    values: Mapping[str, tuple[np.ndarray, np.ndarray]]
    thumbnails: Sequence[Thumbnail]


