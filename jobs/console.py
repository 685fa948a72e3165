"""What a user sees of a run: log lines on stderr (without library noise: :func:`jobs.cli.setup_logging`),
the same lines in the output folder's ``run.log``, and the closing summary table (the job's result) on stdout.

The log file holds what the console showed at the chosen level (INFO by default; DEBUG
would make Beam log every bundle, so it is not added silently): the lines from before
the output folder is known are held and written first. A local output gets the file as
the run goes; a ``gs://``/``s3://`` output gets it uploaded when the run ends. Lines that
local worker *subprocesses* (``--direct_running_mode multi_processing``) or a cluster's
workers log are theirs, not this process's, so they are not in it.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import traceback
from typing import Optional, TextIO

from apache_beam.io.filesystems import FileSystems

from jobs import cli
from jobs.summary import LOG_FILE, REPORT_FILES, summary_table
from pipeline.finalize import holds_finished_run, read_stats


class _Held(logging.Handler):
    """The run's records until the output folder, and so the log file, is known."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _RunLogFile(logging.FileHandler):
    """The run.log handler: a write that fails (a full disk) stops the file, not the run, and prints nothing."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.broken = True

    def write(self, text: str) -> None:
        with self.lock:
            if self.broken:
                return
            try:
                self.stream.write(text)
                self.stream.flush()
            except OSError:
                self.broken = True

    def close(self) -> None:
        try:
            super().close()
        except OSError:
            self.broken = True


class RunConsole:
    """One CLI run's log file and closing table (see the module docstring); :func:`run_started` names its folder."""

    active: Optional["RunConsole"] = None

    def __init__(self) -> None:
        self._held = _Held()
        self._file: Optional[_RunLogFile] = None
        self.output: Optional[str] = None
        self._started = 0.0

    def __enter__(self) -> "RunConsole":
        root = logging.getLogger()
        self._held.setLevel(root.getEffectiveLevel())
        for handler in root.handlers:
            for log_filter in handler.filters:
                self._held.addFilter(log_filter)
        root.addHandler(self._held)
        self._started, cli.STARTED = (time.monotonic() if cli.STARTED is None else cli.STARTED), None
        RunConsole.active = self
        return self

    def start_log(self, output: str) -> None:
        """Open ``OUTPUT/run.log`` (a local temporary file for a remote output) and write the held lines to it."""
        self.output = output.rstrip("/")
        if "://" in self.output:
            fd, path = tempfile.mkstemp(prefix="counterfactory-", suffix=f"-{LOG_FILE}")
            os.close(fd)
        else:
            path = os.path.join(self.output, LOG_FILE)
        try:
            if "://" not in self.output:
                os.makedirs(self.output, exist_ok=True)
            self._file = _RunLogFile(path, mode="w", encoding="utf-8")
        except OSError as error:  # the run's own writes will fail, and say so in one line
            logging.getLogger().removeHandler(self._held)
            self._held.records.clear()
            logging.getLogger(__name__).warning("no %s in %s: %s", LOG_FILE, self.output, error)
            return
        self._file.setFormatter(logging.Formatter(cli.FORMAT))
        self._file.setLevel(self._held.level)
        for log_filter in self._held.filters:
            self._file.addFilter(log_filter)
        root = logging.getLogger()
        root.removeHandler(self._held)
        for record in self._held.records:
            self._file.handle(record)
        self._held.records.clear()
        root.addHandler(self._file)

    def _write(self, text: str, *streams: TextIO) -> None:
        for stream in streams:
            stream.write(text)
            stream.flush()
        if self._file is not None:
            self._file.write(text)

    def finished(self) -> None:
        """The summary table of the finished run, from its stats.json, on stdout and in the log file."""
        if self.output is None or not holds_finished_run(self.output):
            return
        reports = [name for name in REPORT_FILES if FileSystems.exists(FileSystems.join(self.output, name))]
        table = summary_table(read_stats(self.output), self.output, time.monotonic() - self._started, reports)
        self._write(table + "\n", sys.stdout)

    def __exit__(self, exc_type, exc, tb) -> None:
        RunConsole.active = None
        root = logging.getLogger()
        root.removeHandler(self._held)
        if self._file is None:
            return
        if exc is not None:  # the console shows the traceback Python prints; the file keeps it too
            self._write("".join(traceback.format_exception(exc_type, exc, tb)))
        root.removeHandler(self._file)
        self._file.close()
        if "://" in self.output:
            with open(self._file.baseFilename, "rb") as source, \
                    FileSystems.create(FileSystems.join(self.output, LOG_FILE)) as target:
                shutil.copyfileobj(source, target)
            os.remove(self._file.baseFilename)


def run_started(output: str) -> None:
    """The run of the CLI (if any) writes to ``output``: its log file goes there from now on."""
    if RunConsole.active is not None:
        RunConsole.active.start_log(output)
