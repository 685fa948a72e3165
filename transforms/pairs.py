"""The stages of a build: candidate shards -> one chosen candidate per object -> removal and insertion pairs.

    ReadCandidates (a source: a shard -> its samples) -> SelectCandidates (review decisions,
      thresholds, ranking) -> RepastePairs (the object re-pasted on the chosen removal)

No model runs and no image is decoded to decide: selection reads the scores that
bootstrap mining stored. Every stage counts in the build's ledger of candidate objects.
"""
from __future__ import annotations

import functools
import io
from typing import Any, Iterator, Mapping, NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam.pvalue import TaggedOutput
from PIL import Image

from schemas import Rejection
from schemas.reasons import Reason
from schemas.sample import (
    SCORE_NAMES,
    CandidateSample,
    Field,
    PairChoice,
    candidate_from_sample,
    pair_fields,
    pair_metadata_row,
)
from transforms.io.decode import decode_rgb
from transforms.io.readers import read_tar_samples
from transforms.io.shards import EncodedSample
from transforms.ledger import FUNNEL, RunAccounts
from transforms.masks import changed_pixels, check_covers, decode_mask_png, encode_mask_png
from transforms.models.removal import encode_png
from transforms.repaste import RepasteConfig, repaste
from transforms.stage import RecordFunction, Stage
from transforms.thresholds import CandidateView, SelectionRules

#: The extra outputs of :class:`SelectCandidates`: every candidate's scores (for the report) and counts.
SCORES_TAG = "scores"
COUNTS_TAG = "counts"


def _candidate_samples(path: str) -> Iterator[CandidateSample | Rejection]:
    for sample in read_tar_samples(path, ReadCandidates.stage):
        if isinstance(sample, Rejection):
            yield sample
            continue
        key, fields = sample
        uri = f"{path}#{key}"
        try:
            yield candidate_from_sample(key, fields, uri)
        except ValueError as error:
            yield Rejection(uri, ReadCandidates.stage, Reason.NOT_A_CANDIDATE_SAMPLE, str(error), key)


class ReadCandidates(Stage):
    """Candidate shard paths -> their samples: the build's inputs are the samples it finds (and each corrupt tail)."""

    stage = "read_candidates"
    source = True
    input_label = "candidate_samples"

    def record_fn(self) -> RecordFunction:
        return _candidate_samples


class ScorePoint(NamedTuple):
    """One candidate's scores (``SCORE_NAMES`` order) for the report; ``chosen``: it became a pair."""

    key: str
    shard: str
    candidate_index: int
    scores: tuple[Optional[float], ...]
    chosen: bool


def _select(rules: SelectionRules, sample: CandidateSample) -> Iterator[Any]:
    candidates = sample.candidates
    choice = rules.choose(sample.key, [CandidateView(c["index"], c["scores"]) for c in candidates])
    shard = sample.uri.rpartition("#")[0]
    for c in candidates:
        scores = tuple(c["scores"].get(name) for name in SCORE_NAMES)
        yield TaggedOutput(SCORES_TAG, ScorePoint(c["key"], shard, c["index"], scores,
                                                  c["index"] == choice.candidate_index))
    matched = sum(rules.decisions.get(key) is not None for key in (sample.key, *(c["key"] for c in candidates)))
    counts = [(("candidates", "total"), len(candidates)), (("decisions", "matched"), matched)]
    if choice.passed_thresholds:
        counts.append(((FUNNEL, "passed_thresholds"), 1))
    if choice.kept:
        counts += [((FUNNEL, "kept"), 1), (("selected_by", str(choice.selected_by)), 1)]
    for count in counts:
        yield TaggedOutput(COUNTS_TAG, count)
    if not choice.kept:
        yield Rejection(sample.uri, SelectCandidates.stage, choice.reason, choice.detail, sample.key)
        return
    review = None if choice.review is None else choice.review.to_json()
    pair = PairChoice(choice.candidate_index, choice.combined_score, str(choice.selected_by), review)
    yield sample.keeping_only(choice.candidate_index), pair


class SelectedCandidates(NamedTuple):
    """Each kept object with its choice, and every candidate's scores for the report."""

    chosen: beam.PCollection
    scores: beam.PCollection


class SelectCandidates(Stage):
    """Candidate samples -> (sample, choice) for each object kept; the others rejected with the reason.

    Review decisions come first, then thresholds, then the ranking (transforms/thresholds.py).
    Its counts (funnel steps, decisions matched, how each pair was chosen) go to the run's tally.
    """

    stage = "select"
    extra_tags = (SCORES_TAG, COUNTS_TAG)

    def __init__(self, rules: SelectionRules) -> None:
        super().__init__()
        self._rules = rules

    def record_fn(self) -> RecordFunction:
        return functools.partial(_select, self._rules)

    def expand(self, samples: beam.PCollection) -> SelectedCandidates:
        outputs = self.apply_stage(samples)
        RunAccounts.of(samples).add_counts(outputs.extra[COUNTS_TAG])
        return SelectedCandidates(outputs.main, outputs.extra[SCORES_TAG])


def _decode_rgba(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.array(image.convert("RGBA"))


class PairEncoder:
    """(candidate sample, choice) -> the pair sample: removal image as stored, object re-pasted on it.

    Both pairs' mask is the region the chosen candidate repainted (for candidate shards
    written before regions were recorded, the pixels it changed); each pair is checked to
    differ from its target nowhere outside it, so a pair that does not is a dead letter.
    The pasted image is a PNG: a JPEG would differ from the source everywhere.
    """

    def __init__(self, config: RepasteConfig, selection: Mapping[str, Any], provenance: Mapping[str, Any]) -> None:
        self._config = config
        self._selection = dict(selection)
        self._provenance = dict(provenance)

    def __call__(self, element: tuple[CandidateSample, PairChoice]) -> EncodedSample:
        sample, choice = element
        src = decode_rgb(sample.fields[Field.SRC])
        removed = decode_rgb(sample.removed_png(choice.candidate_index))
        region_png = sample.region_png(choice.candidate_index)
        if region_png is None:
            region_png = encode_mask_png(changed_pixels(src, removed))
        region = decode_mask_png(region_png, src.shape[1], src.shape[0])
        box = tuple(int(v) for v in sample.meta["object"]["box"])
        pasted = repaste(removed, _decode_rgba(sample.fields[Field.OBJECT]), box, self._config.feather_px)
        check_covers(region, src, removed, f"{sample.key} removal pair")
        check_covers(region, src, pasted, f"{sample.key} insertion pair")
        fields = pair_fields(sample, choice, encode_png(pasted), region_png, self._selection, self._provenance)
        return EncodedSample(key=sample.key, fields=fields, metadata=pair_metadata_row(sample, choice))


def _encode_pair(encoder: PairEncoder, element: tuple[CandidateSample, PairChoice]) -> Iterator[EncodedSample]:
    yield encoder(element)


class RepastePairs(Stage):
    """(sample, choice) -> the pair sample: removal image as stored, object re-pasted on it."""

    stage = "repaste"

    def __init__(self, encoder: PairEncoder) -> None:
        super().__init__()
        self._encoder = encoder

    def record_fn(self) -> RecordFunction:
        return functools.partial(_encode_pair, self._encoder)
