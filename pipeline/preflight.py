"""Preflight: refuse, before any model loads or any file is read, a run that could only fail or do the wrong thing.

A job's options classes name the options that hold its inputs in a class attribute
``INPUTS`` (option names, e.g. ``("input", "shards", "annotations")``); with those and
``--output`` the checks here need nothing job-specific; ``FILE_INPUTS`` names those of them
that are files, never folders (an annotation file, a decisions file):

* ``--output`` is an existing file (or below one): the writers would fail after the whole run;
* ``--output`` is an input folder or inside one: the job would read what it writes;
* an input folder holds no files: the job would read nothing (or the folder itself) and exit 0;
* a file input names a folder: its reader would fail late, on a folder it cannot parse;
* an input named as a file (no glob) does not exist, is no regular file (a FIFO would block
  its reader forever, a broken link fail late) or cannot be opened: checked as the readers
  check, by opening it;
* ``--output`` already holds a finished run and ``--overwrite`` is not given.

Only local paths are checked for all but the last (a bucket has no folders to nest).
"""
from __future__ import annotations

import os
from typing import Iterator, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from pipeline.finalize import STATS, holds_finished_run
from pipeline.options import ConfigError, RunOptions
from transforms.io.files import NotARegularFile, open_input

_GLOB = frozenset("*?[")


def _is_local(path: str) -> bool:
    return "://" not in path


def _inputs(options: PipelineOptions,
            option_classes: Sequence[type[PipelineOptions]]) -> Iterator[tuple[str, str, bool]]:
    """``(flag, path, must be a file)`` of every input location the job's options name."""
    for options_class in option_classes:
        view = options.view_as(options_class)
        files = frozenset(getattr(options_class, "FILE_INPUTS", ()))
        for name in getattr(options_class, "INPUTS", ()):
            value = getattr(view, name)
            for path in [value] if isinstance(value, str) else value or ():
                yield f"--{name}", path, name in files


def _folder_of(pattern: str) -> str:
    """The folder a pattern reads below: the pattern itself, or a glob's part before its first wildcard."""
    parts = pattern.split("/")
    static = next((i for i, part in enumerate(parts) if _GLOB & set(part)), None)
    return pattern if static is None else "/".join(parts[:static]) or "."


def _holds_no_files(folder: str) -> bool:
    """True when nothing but (real) folders is below ``folder``; links are not followed (a link counts as a file)."""
    for root, folders, files in os.walk(folder):
        if files or any(os.path.islink(os.path.join(root, name)) for name in folders):
            return False
    return True


def check_output(output: str) -> None:
    """``--output`` must be a folder or not exist yet (nor lie below a file)."""
    if not _is_local(output):
        return
    path = os.path.abspath(output)
    while not os.path.lexists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        where = "is" if path == os.path.abspath(output) else f"is below {path}, which is"
        raise ConfigError(f"--output {output} {where} a file, not a folder")


def check_readable(flag: str, path: str) -> None:
    """An input named as a local file (no glob, no folder) must exist and be a regular file this process can open."""
    if _GLOB & set(path) or os.path.isdir(path):
        return  # a glob's or a folder's names are the readers' to reject
    if not os.path.lexists(path):
        raise ConfigError(f"{flag} {path!r} matches no file")
    try:
        open_input(path).close()  # non-blocking: a FIFO is refused, not waited on
    except NotARegularFile as error:
        raise ConfigError(f"{flag} {path} is {error.detail} ({error.reason.value}): only a regular file is read") \
            from error
    except OSError as error:
        raise ConfigError(f"{flag} {path} cannot be read: {error.strerror or error}") from error


def check_input(flag: str, path: str, output: str, file_only: bool = False) -> None:
    """An input folder must hold a file, and must not hold ``output`` (nor be it); a file must be one to read."""
    if not _is_local(path):
        return
    if file_only and os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder: name the file (or a glob of files)")
    check_readable(flag, path)
    if os.path.isdir(path) and _holds_no_files(path):
        raise ConfigError(f"{flag} {path} holds no files")
    if not _is_local(output):
        return
    folder = os.path.realpath(_folder_of(path))
    written = os.path.realpath(output)
    if os.path.isdir(folder) and (written == folder or written.startswith(folder.rstrip(os.sep) + os.sep)):
        place = "is" if written == folder else "is inside"
        raise ConfigError(f"--output {output} {place} the input folder {flag} {path}: the run would read what it "
                          f"writes; write somewhere else")


def refuse_finished_run(output: str, overwrite: bool) -> None:
    """A finished run in ``output`` is replaced only when asked (``--overwrite``)."""
    if not overwrite and holds_finished_run(output):
        raise ConfigError(f"{output} already holds a finished run ({STATS}); pass --overwrite to replace it")


def preflight(options: PipelineOptions, option_classes: Sequence[type[PipelineOptions]]) -> None:
    """Every check above, for a job that parsed ``options`` with ``option_classes``."""
    run = options.view_as(RunOptions)
    output = run.output.rstrip("/") or run.output
    check_output(output)
    for flag, path, file_only in _inputs(options, option_classes):
        check_input(flag, path, output, file_only)
    refuse_finished_run(output, run.overwrite)
