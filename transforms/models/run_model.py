"""Model stages: Beam's ``RunInference`` with a dead-letter queue that blames one record, not a batch.

``RunInference(...).with_exception_handling()`` reports a failing *batch*: one poisoned
image would take its 15 neighbours down with it. :class:`RunModel` runs the handler
through :class:`RetryOneByOne`, which re-runs every record of a failed batch on its own,
on the same loaded model, so the good records still come out and only the record that
fails alone becomes a dead letter of the stage.

The retry lives inside the handler, not on a second path merged back with a ``Flatten``:
Beam's local runner materialises every multi-input Flatten, so each model stage used to
end one of the job's phases (every image detected before any was segmented, every object
segmented before any was removed) and the GPU models never ran while the CPU stages did.
Now the model stages and the record stages between them fuse into one stage, which each
worker runs record by record.
"""
from __future__ import annotations

import logging
import traceback
from typing import Any, Iterable, NamedTuple, Optional, Sequence

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.pvalue import TaggedOutput

from transforms.ledger import MAIN_LEDGER, RunAccounts
from transforms.stage import DEAD_LETTERS, to_dead_letter, track_progress

LOG = logging.getLogger(__name__)


class ModelFailure(NamedTuple):
    """The inference of a record that failed on its own: the error, as Beam's exception handling gives it."""

    error_type: str
    error: str
    traceback_lines: tuple[str, ...]

    @classmethod
    def of(cls, error: BaseException) -> "ModelFailure":
        return cls(type(error).__name__, repr(error), tuple(traceback.format_exception(error)))


class RetryOneByOne(ModelHandler):
    """``handler`` whose failing batch is re-run one record at a time on the same model.

    A record that fails alone gets a :class:`ModelFailure` as its inference; every other
    method is the wrapped handler's (Beam's own handler wrappers delegate the same way).
    """

    def __init__(self, handler: ModelHandler, stage: str) -> None:
        self._handler = handler
        self._stage = stage
        self._env_vars = getattr(handler, "_env_vars", {})

    def load_model(self) -> Any:
        return self._handler.load_model()

    def run_inference(self, batch: Sequence[Any], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        try:
            return list(self._handler.run_inference(batch, model, inference_args))
        except Exception as error:  # noqa: BLE001 - any failure: find the record that causes it
            if len(batch) == 1:
                return [PredictionResult(batch[0], ModelFailure.of(error))]
            LOG.warning("%s: a batch of %d records failed (%r); retrying them one by one",
                        self._stage, len(batch), error)
            results = []
            for record in batch:
                Metrics.counter(f"counterfactory.{self._stage}", "records_retried_count").inc()
                try:
                    results.extend(self._handler.run_inference([record], model, inference_args))
                except Exception as alone:  # noqa: BLE001 - this record's own failure: its dead letter
                    results.append(PredictionResult(record, ModelFailure.of(alone)))
            return results

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return self._handler.get_num_bytes(batch)

    def get_metrics_namespace(self) -> str:
        return self._handler.get_metrics_namespace()

    def get_resource_hints(self) -> dict:
        return self._handler.get_resource_hints()

    def batch_elements_kwargs(self):
        return self._handler.batch_elements_kwargs()

    def validate_inference_args(self, inference_args: Optional[dict[str, Any]]) -> None:
        return self._handler.validate_inference_args(inference_args)

    def update_model_path(self, model_path: Optional[str] = None) -> None:
        return self._handler.update_model_path(model_path=model_path)

    def get_preprocess_fns(self):
        return self._handler.get_preprocess_fns()

    def get_postprocess_fns(self):
        return self._handler.get_postprocess_fns()

    def should_skip_batching(self) -> bool:
        return self._handler.should_skip_batching()

    def share_model_across_processes(self) -> bool:
        return self._handler.share_model_across_processes()

    def model_copies(self) -> int:
        return self._handler.model_copies()

    def override_metrics(self, metrics_namespace: str = "") -> bool:
        return self._handler.override_metrics(metrics_namespace)

    def should_garbage_collect_on_timeout(self) -> bool:
        return self._handler.should_garbage_collect_on_timeout()


class _SplitFailures(beam.DoFn):
    """Predictions on, records that failed alone to the stage's dead letters."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self._stage = stage

    def process(self, prediction):
        failure = prediction.inference
        if isinstance(failure, ModelFailure):
            bad = (prediction.example, (failure.error_type, failure.error, failure.traceback_lines))
            yield TaggedOutput(DEAD_LETTERS, to_dead_letter(bad, self._stage))
        else:
            yield prediction


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
        results = (records
                   | "Infer" >> RunInference(RetryOneByOne(self._handler, self._stage))
                   | "SplitFailures" >> beam.ParDo(_SplitFailures(self._stage)).with_outputs(DEAD_LETTERS, main="main"))
        dead_letters = results[DEAD_LETTERS]
        main = track_progress(records, results.main, dead_letters, "Infer", self._stage)
        RunAccounts.of(records.pipeline).add_stage(self._stage, self._unit, records, main=main,
                                                   dead_letters=dead_letters)
        return main
