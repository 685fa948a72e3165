"""Local worker threads lose no record: Beam's timed output flush races with bundle threads.

In ``multi_threading`` mode Beam's in-process workers also flush output streams on a timer
thread that clears what a bundle thread wrote meanwhile (pipeline/runners.py). Its period
is a second there; these tests set it to a millisecond, so that a loss that takes minutes
of a real run to show (issue 14: 136 of 972 objects) shows in every run of a few seconds.
"""
from __future__ import annotations

import pathlib

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers

from pipeline.runners import ThreadSafeFnApiRunner, new_pipeline, uses_worker_threads

THREADS = 4
INPUTS, PER_INPUT = 8, 6000
#: Plain Beam loses records in about 5 runs of 6 at these sizes; this many runs make a clean streak unlikely.
PLAIN_RUNS = 5


@pytest.fixture
def millisecond_timed_flush(monkeypatch):
    """Beam's in-process workers flush on a timer every millisecond instead of every second."""
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1)


def _threaded_options() -> PipelineOptions:
    return PipelineOptions(["--runner=FnApiRunner", f"--direct_num_workers={THREADS}",
                            "--direct_running_mode=multi_threading"])


def _count_through_a_shuffle(pipeline: beam.Pipeline, tmp_path: pathlib.Path) -> int:
    """Bundles that keep writing 1 KB records for longer than a flush period, counted after a shuffle."""
    counted = tmp_path / "count.txt"

    def emit(seed: int):
        for index in range(PER_INPUT):
            yield seed * PER_INPUT + index, b"x" * 1000

    _ = (pipeline
         | beam.Create(range(INPUTS)) | beam.Reshuffle() | beam.FlatMap(emit)
         | "ByBucket" >> beam.Map(lambda record: (record[0] % 7, record)) | "Shuffle" >> beam.GroupByKey()
         | "Sizes" >> beam.Map(lambda bucket: (0, len(bucket[1]))) | "All" >> beam.GroupByKey()
         | beam.Map(lambda total: counted.write_text(str(sum(total[1])))))
    pipeline.run().wait_until_finish()
    return int(counted.read_text())


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="Beam's timed flush loses records; when this passes, Beam is fixed "
                                       "and ThreadSafeFnApiRunner can go")
def test_beams_own_threaded_runner_keeps_every_record(millisecond_timed_flush, tmp_path):
    for _ in range(PLAIN_RUNS):
        assert _count_through_a_shuffle(beam.Pipeline(options=_threaded_options()), tmp_path) == INPUTS * PER_INPUT


@pytest.mark.parametrize("attempt", range(3))
def test_our_threaded_runner_keeps_every_record(millisecond_timed_flush, tmp_path, attempt):
    pipeline = new_pipeline(_threaded_options())
    assert isinstance(pipeline.runner, ThreadSafeFnApiRunner)
    assert _count_through_a_shuffle(pipeline, tmp_path) == INPUTS * PER_INPUT


def test_only_local_worker_threads_get_the_thread_safe_runner():
    assert uses_worker_threads(_threaded_options())
    assert not uses_worker_threads(PipelineOptions(["--runner=FnApiRunner"]))
    assert not uses_worker_threads(PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=4",
                                                    "--direct_running_mode=multi_processing"]))
    assert not uses_worker_threads(PipelineOptions(["--runner=DataflowRunner", "--direct_running_mode=multi_threading",
                                                    "--direct_num_workers=4"]))
