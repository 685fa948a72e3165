"""Model stages: Beam's ``RunInference`` with a dead-letter queue that blames one record, not a batch.

``RunInference(...).with_exception_handling()`` reports a failing *batch*: one poisoned
image would take its 15 neighbours down with it. :class:`RunModel` re-runs every record
of a failed batch on its own, with the same handler, so the good records still come out
and only the record that fails alone becomes a dead letter of the stage.

The retry path loads its own copy of the model, lazily (a run in which no batch fails
never pays for it), and once per worker process: every thread's retry acquires the
same copy through Beam's ``Shared``, so a failing batch on a GPU worker with 8 threads
loads and compiles one more model, not 8.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.utils.shared import Shared

from transforms.ledger import MAIN_LEDGER, RunAccounts
from transforms.stage import apply_record_function, track_progress

LOG = logging.getLogger(__name__)


class _OneByOne:
    """Runs the records of a failed batch one at a time; each failure is that record's alone."""

    def __init__(self, handler: ModelHandler, stage: str, retry_model: Shared) -> None:
        self._handler = handler
        self._stage = stage
        self._retry_model = retry_model
        self._model: Any = None

    def _load(self) -> Any:
        LOG.warning("%s: a batch failed; loading a model to retry its records one by one", self._stage)
        return self._handler.load_model()

    def __call__(self, element: Any) -> Iterator[PredictionResult]:
        if self._model is None:
            self._model = self._retry_model.acquire(self._load)
        Metrics.counter(f"counterfactory.{self._stage}", "records_retried_count").inc()
        yield from self._handler.run_inference([element], self._model)


def _records_of_failed_batch(failed: tuple) -> list:
    batch, (_, error, _) = failed
    LOG.warning("a batch of %d records failed (%s); retrying them one by one", len(batch), error)
    return list(batch)


class RunModel(beam.PTransform):
    """``RunInference(handler)`` whose failures end as per-record dead letters of ``stage``.

    One prediction per record: the stage's flow (records in = predictions + dead letters)
    is registered with ``unit`` 's ledger, and its progress told, like any other stage's.
    """

    def __init__(self, handler: ModelHandler, stage: str, unit: str = MAIN_LEDGER) -> None:
        super().__init__()
        self._handler = handler
        self._stage = stage
        self._unit = unit

    def expand(self, records: beam.PCollection) -> beam.PCollection:
        predictions, failures = records | "Infer" >> RunInference(self._handler).with_exception_handling()
        retried = apply_record_function(
            failures.failed_inferences | "SplitFailedBatches" >> beam.FlatMap(_records_of_failed_batch),
            "RetryOneByOne", self._stage, _OneByOne(self._handler, self._stage, Shared()), progress=False)
        main = track_progress(records, (predictions, retried.main) | "Predictions" >> beam.Flatten(),
                              retried.dead_letters, "Infer", self._stage)
        RunAccounts.of(records.pipeline).add_stage(self._stage, self._unit, records, main=main,
                                                   dead_letters=retried.dead_letters)
        return main
