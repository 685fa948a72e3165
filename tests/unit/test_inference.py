"""Model stages: a failed batch is retried record by record, on the model already loaded."""
import threading

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline.runners import new_pipeline
from transforms.ledger import RunAccounts
from transforms.models.run_model import RunModel

#: load_model calls, process-wide: the multi_threading runner's workers are threads of this process.
_LOADS: list[str] = []
_LOADS_LOCK = threading.Lock()


class _Model:
    """What the handler loads (Beam keeps a weak reference to a loaded model)."""


class _OnlyOneAtATime(ModelHandler[int, PredictionResult, _Model]):
    """Fails every batch of more than one record, and every record that is 13."""

    def __init__(self) -> None:
        super().__init__(min_batch_size=2, max_batch_size=4)

    def load_model(self) -> _Model:
        with _LOADS_LOCK:
            _LOADS.append(threading.current_thread().name)
        return _Model()

    def run_inference(self, batch, model, inference_args=None):
        if len(batch) > 1 or 13 in batch:
            raise RuntimeError(f"a batch of {len(batch)}")
        return [PredictionResult(value, value * 10) for value in batch]


def test_failed_batches_are_retried_one_by_one_on_the_loaded_model():
    _LOADS.clear()
    options = PipelineOptions(["--runner=FnApiRunner", "--direct_num_workers=4",
                               "--direct_running_mode=multi_threading"])
    with new_pipeline(options) as p:
        predictions = p | beam.Create(range(64)) | beam.Reshuffle() | RunModel(_OnlyOneAtATime(), "toy")
        [dead_letters] = RunAccounts.of(p).dead_letters("")
        assert_that(predictions | beam.Map(lambda result: result.inference),
                    equal_to([v * 10 for v in range(64) if v != 13]), label="kept")
        assert_that(dead_letters | beam.Map(lambda dead: (dead.stage, dead.error)),
                    equal_to([("toy", "RuntimeError('a batch of 1')")]), label="dead")
    # RunInference's one model, shared by the workers' threads: the retries load nothing more.
    assert len(_LOADS) == 1
