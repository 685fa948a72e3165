"""Making a job's ``beam.Pipeline``: the runner the options name, minus a record-losing race of local workers.

Beam's FnApiRunner with several local workers (``multi_threading``: SDK workers as threads
of this process; ``multi_processing``: as subprocesses) moves records over a gRPC data
plane whose output streams, on the runner's side and in in-process workers, are also
flushed on a timer (``data_buffer_time_limit_ms``, 1 s there; Dataflow's and the
portable runners' workers flush by size only). That flush runs on its own thread, takes
the buffered bytes, sends them, then clears the buffer, without holding off the thread
that keeps writing into it: what is written in between is cleared unsent. Nothing raises
and nothing is logged; records are simply gone (issue 14: 136 of 972 objects of a
12-thread bootstrap run on one H200; 3 of 972 with only the workers' timer off, the
runner's still on; none with both off). :func:`new_pipeline` runs such pipelines on
:class:`ThreadSafeFnApiRunner`, which never flushes on a timer; outputs are still flushed
by size (10 MB) and when a bundle or an input ends, which is all a batch job needs.

Beam also makes a ``beam-pipeline-temp*`` folder in ``$TMPDIR`` for every pipeline it
constructs and deletes it only when ``run()`` returns, so each killed run left one behind.
A pipeline writing to a local output keeps it in that output's hidden ``.beam-temp``
folder instead, which the next run into the output clears first.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from typing import Iterator, Optional

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner, worker_handlers

LOG = logging.getLogger(__name__)

#: The timer flush period of a run's data planes: longer than any bundle (int32 milliseconds, ~25 days).
NO_TIMED_FLUSH_MS = 2**31 - 1
#: Runners that, with several local workers, move records over the racy timed flush.
_LOCAL_RUNNERS = frozenset({"FnApiRunner", "DirectRunner", "SwitchingDirectRunner"})
_WORKER_MODES = frozenset({"multi_threading", "multi_processing"})
_flush_period_lock = threading.Lock()
#: The hidden folder of a local output that holds its run's Beam temp folder.
TEMP_FOLDER = ".beam-temp"


@contextlib.contextmanager
def _no_timed_flush() -> Iterator[None]:
    """Beam's data planes of one run, the runner's side and its in-process workers', without the timer.

    Both read the module default when the run creates them (the runner's servicer has no
    option for it at all), so the default is raised for the length of the run.
    """
    with _flush_period_lock:
        default = worker_handlers.DATA_BUFFER_TIME_LIMIT_MS
        worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = NO_TIMED_FLUSH_MS
        try:
            yield
        finally:
            worker_handlers.DATA_BUFFER_TIME_LIMIT_MS = default


class ThreadSafeFnApiRunner(FnApiRunner):
    """The FnApiRunner whose data planes flush by size and at bundle end only, never on a timer."""

    def run_pipeline(self, pipeline, options):
        with _no_timed_flush():
            return super().run_pipeline(pipeline, options)


def uses_local_workers(options: PipelineOptions) -> bool:
    """Whether the options run Beam's local runner with several workers (threads or processes) over gRPC."""
    runner = options.view_as(StandardOptions).runner
    direct = options.view_as(DirectOptions)
    return (isinstance(runner, str) and runner.rsplit(".", 1)[-1] in _LOCAL_RUNNERS
            and direct.direct_running_mode in _WORKER_MODES and direct.direct_num_workers != 1)


def local_temp_root(output: str) -> Optional[str]:
    """Where a run into ``output`` keeps Beam's temp folder: its hidden folder, if ``output`` is local."""
    return None if "://" in output else os.path.join(output, TEMP_FOLDER)


def _move_temp_folder(pipeline: beam.Pipeline, root: str) -> None:
    """Swap the temp folder Beam made in ``$TMPDIR`` for a fresh one under ``root``, clearing a killed run's."""
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    os.rmdir(pipeline.local_tempdir)  # empty: Beam has only just made it
    pipeline.local_tempdir = tempfile.mkdtemp(prefix="beam-pipeline-temp", dir=root)


def remove_temp_root(output: str) -> None:
    """Delete the (by now empty) hidden temp folder of a run that ended."""
    root = local_temp_root(output)
    if root is not None:
        shutil.rmtree(root, ignore_errors=True)


def new_pipeline(options: PipelineOptions, output: Optional[str] = None) -> beam.Pipeline:
    """A pipeline on the runner the options name; several local workers get :class:`ThreadSafeFnApiRunner`.

    With a local ``output``, Beam's temp folder lies in its hidden folder, not in ``$TMPDIR``.
    """
    if uses_local_workers(options):
        direct = options.view_as(DirectOptions)
        LOG.info("local runner with %d workers (%s): without Beam's timed output flush, which loses records "
                 "under concurrency (pipeline/runners.py)", direct.direct_num_workers, direct.direct_running_mode)
        pipeline = beam.Pipeline(runner=ThreadSafeFnApiRunner(), options=options)
    else:
        pipeline = beam.Pipeline(options=options)
    root = None if output is None else local_temp_root(output)
    if root is not None:
        _move_temp_folder(pipeline, root)
    return pipeline
