"""Stage progress lines: a total where this process sees every record, an honest 'not known' elsewhere."""
import logging
import re
import threading

import apache_beam as beam
import pytest
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from schemas import Reason, Rejection
from transforms import stage as stage_module
from transforms.models.run_model import RunModel
from transforms.stage import PROGRESS, ProgressKey, Stage


def _keep_even(number):
    if number % 2:
        yield Rejection(f"n{number}", "keep", Reason.NOT_AN_IMAGE, "odd")
    else:
        yield number


def _pass(number):
    yield number


class KeepEven(Stage):
    stage = "keep_even"

    def record_fn(self):
        return _keep_even


class PassOn(Stage):
    stage = "pass_on"

    def record_fn(self):
        return _pass


@pytest.fixture
def every_record_logged(monkeypatch, caplog):
    monkeypatch.setattr(stage_module, "PROGRESS_INTERVAL_S", 0.0)
    caplog.set_level(logging.INFO, logger="transforms.stage")
    return caplog


def _lines(caplog, stage):
    return [record.getMessage() for record in caplog.records if record.getMessage().startswith(f"{stage}:")]


def test_a_stage_fed_by_a_shuffle_counts_against_its_inputs_and_the_next_against_a_bound(every_record_logged):
    with beam.Pipeline() as p:
        (p | beam.Create(list(range(7))) | "Spread" >> beam.Reshuffle() | KeepEven() | PassOn())
    kept = _lines(every_record_logged, "keep_even")
    assert len(kept) == 7
    assert all(re.fullmatch(r"keep_even: \d/7 records \(\d+\.\d/s, ETA \d+\.\d s\)", line) for line in kept[:-1]), kept
    assert re.fullmatch(r"keep_even: 7/7 records \(\d+\.\d/s, done\)", kept[-1]), kept
    passed = _lines(every_record_logged, "pass_on")
    assert len(passed) == 4
    # While keep_even runs, what it kept plus what it has still to see bounds pass_on's total; then it is exact.
    bounds = [int(re.fullmatch(r"pass_on: \d/<=(\d) records \(\d+\.\d/s, ETA <=\d+\.\d s\)", line).group(1))
              for line in passed[:-1]]
    assert bounds == sorted(bounds, reverse=True) and all(4 <= bound <= 7 for bound in bounds), passed
    assert re.fullmatch(r"pass_on: 4/4 records \(\d+\.\d/s, done\)", passed[-1]), passed


def test_without_a_known_total_the_line_says_so(every_record_logged):
    """A worker that did not build the graph (a cluster's, a local subprocess') sees a share: no total."""
    PROGRESS.tick(ProgressKey("built-elsewhere", "select", counted=True), 1)
    lines = _lines(every_record_logged, "select")
    assert len(lines) == 1 and re.fullmatch(r"select: 1 records \(\d+\.\d/s, total not known\)", lines[0]), lines


def test_ticks_from_many_threads_are_counted_once_each(every_record_logged):
    key = ProgressKey("threads-run", "decode", counted=True)
    PROGRESS.register(key)
    for _ in range(8 * 250):
        PROGRESS.add_counted(key.run, key.stage)

    def work():
        for _ in range(250):
            PROGRESS.tick(key, 1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = _lines(every_record_logged, "decode")
    assert sorted(int(line.split()[1].split("/")[0]) for line in lines) == list(range(1, 2001))
    assert [line for line in lines if line.endswith("done)")] == [
        next(line for line in lines if line.startswith("decode: 2000/2000 records"))]


def test_a_stage_done_within_one_interval_logs_nothing(every_record_logged, monkeypatch):
    monkeypatch.setattr(stage_module, "PROGRESS_INTERVAL_S", 3600.0)
    key = ProgressKey("quick-run", "encode", counted=True)
    PROGRESS.register(key)
    for _ in range(3):
        PROGRESS.add_counted(key.run, key.stage)
    for _ in range(3):
        PROGRESS.tick(key, 1)
    assert _lines(every_record_logged, "encode") == []


class _Model:
    """What the toy handler loads (Beam keeps a weak reference to a loaded model)."""


class _TimesTen(ModelHandler[int, PredictionResult, _Model]):
    """Fails every batch holding a 3 (so 3 ends as a dead letter, the rest of its batch retried one by one)."""

    def load_model(self) -> _Model:
        return _Model()

    def run_inference(self, batch, model, inference_args=None):
        if 3 in batch:
            raise RuntimeError("three")
        return [PredictionResult(value, value * 10) for value in batch]


def test_a_model_stage_tells_its_progress_like_any_stage(every_record_logged):
    """Before: RunInference stages (detect, segment, remove) logged no progress line at all."""
    with beam.Pipeline() as p:
        (p | beam.Create(list(range(7))) | "Spread" >> beam.Reshuffle() | RunModel(_TimesTen(), "toy")
         | beam.Map(lambda prediction: prediction.inference) | PassOn())
    lines = [line for line in _lines(every_record_logged, "toy") if " records (" in line]  # not the retry's warnings
    assert len(lines) == 7, lines  # the dead letter is a record done too
    assert all(re.fullmatch(r"toy: \d/7 records \(\d+\.\d/s, ETA \d+\.\d s\)", line) for line in lines[:-1]), lines
    assert re.fullmatch(r"toy: 7/7 records \(\d+\.\d/s, done\)", lines[-1]), lines
    assert _lines(every_record_logged, "pass_on"), "the next stage has progress lines too"
