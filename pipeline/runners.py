"""Making a job's ``beam.Pipeline``: the runner the options name, minus a record-losing race of local threads.

Beam's FnApiRunner, in ``multi_threading`` mode, runs its SDK workers as threads of this
process behind an in-process gRPC data plane whose output streams are also flushed on a
timer (``data_buffer_time_limit_ms``, 1 s by default there, and nowhere else: Dataflow's and
the portable runners' workers flush by size only). That flush runs on its own thread,
takes the buffered bytes, sends them, then clears the buffer, without holding off the
bundle thread that keeps writing into it: an element written in between is cleared
unsent. Nothing raises and nothing is logged; records are simply gone (issue 14: 136 of
972 objects of a 12-thread bootstrap run on one GPU). :func:`new_pipeline` runs such
pipelines on :class:`ThreadSafeFnApiRunner`, which never flushes on a timer; outputs are
still flushed by size (10 MB) and when a bundle ends, which is all a batch job needs.
"""
from __future__ import annotations

import json
import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability import python_urns
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

LOG = logging.getLogger(__name__)

#: The timer flush period given to in-process workers: longer than any bundle (int32 milliseconds, ~25 days).
NO_TIMED_FLUSH_MS = 2**31 - 1
#: Runners that, in multi_threading mode, run workers behind the racy timed flush.
_LOCAL_RUNNERS = frozenset({"FnApiRunner", "DirectRunner", "SwitchingDirectRunner"})


class ThreadSafeFnApiRunner(FnApiRunner):
    """The FnApiRunner whose in-process worker threads flush their outputs by size and at bundle end only."""

    def run_via_runner_api(self, pipeline_proto, options):
        for environment in pipeline_proto.components.environments.values():
            if environment.urn == python_urns.EMBEDDED_PYTHON_GRPC:
                config = json.loads(environment.payload.decode("utf-8") or "{}")
                config["data_buffer_time_limit_ms"] = NO_TIMED_FLUSH_MS
                environment.payload = json.dumps(config).encode("utf-8")
        return super().run_via_runner_api(pipeline_proto, options)


def uses_worker_threads(options: PipelineOptions) -> bool:
    """Whether the options run Beam's local runner with several worker threads in this process."""
    runner = options.view_as(StandardOptions).runner
    direct = options.view_as(DirectOptions)
    return (isinstance(runner, str) and runner.rsplit(".", 1)[-1] in _LOCAL_RUNNERS
            and direct.direct_running_mode == "multi_threading" and direct.direct_num_workers != 1)


def new_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on the runner the options name; local worker threads get :class:`ThreadSafeFnApiRunner`."""
    if uses_worker_threads(options):
        LOG.info("local runner with %d worker threads: without Beam's timed output flush (it loses records "
                 "under concurrency; see pipeline/runners.py)", options.view_as(DirectOptions).direct_num_workers)
        return beam.Pipeline(runner=ThreadSafeFnApiRunner(), options=options)
    return beam.Pipeline(options=options)
