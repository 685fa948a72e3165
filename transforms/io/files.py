"""Small file operations on any Beam filesystem: read, hash, publish atomically."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import stat
import time
import uuid
from typing import Any, BinaryIO, Callable, Optional, TypeVar

from apache_beam.io.filesystem import FileSystem
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.localfilesystem import LocalFileSystem

from schemas import Reason

LOG = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
_CHUNK_BYTES = 8 << 20

T = TypeVar("T")

#: Errors no retry can fix, with the words that name them in :class:`StorageError`.
_PERMANENT_ERRORS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}


_STORAGE_ERROR_TEXT = re.compile(r"StorageError: \[Errno \d+\] (.+?)(?: \[while running .*)?$", re.MULTILINE)


class StorageError(OSError):
    """A write that cannot succeed by retrying (full disk, no permission): one line says which file."""


def permanent_error(error: OSError, what: str) -> Optional[StorageError]:
    """``error`` as a one-line :class:`StorageError` if no retry can fix it, else None."""
    words = _PERMANENT_ERRORS.get(error.errno)
    return None if words is None else StorageError(error.errno, f"{words} {what}: {error.strerror or error}")


def with_retries(operation: Callable[[], T], *, attempts: int = 3, base_delay_s: float = 0.5, what: str = "") -> T:
    """Run an I/O operation, retrying ``OSError`` with exponential backoff.

    For transient storage errors (a GCS 503, an NFS hiccup). The last error propagates:
    inside a stage it becomes a dead letter for that one record. A full disk or a refused
    permission is raised at once as a :class:`StorageError` (retrying only fills the disk).
    """
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except StorageError:
            raise
        except OSError as error:
            permanent = permanent_error(error, what or "I/O")
            if permanent is not None:
                raise permanent from error
            if attempt == attempts:
                raise
            delay = base_delay_s * 2 ** (attempt - 1)
            LOG.warning("retrying %s after %s (attempt %d/%d, %.1fs)", what or "I/O", error, attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def storage_failure(error: BaseException) -> Optional[str]:
    """The one line of the :class:`StorageError` that ended a run, if one did.

    Runners re-raise a worker's exception as text (FnApiRunner: a ``RuntimeError`` holding
    ``...StorageError: [Errno 28] disk full writing ...``), so the text is searched too.
    """
    cause: Optional[BaseException] = error
    while cause is not None:
        if isinstance(cause, StorageError):
            return cause.strerror
        match = _STORAGE_ERROR_TEXT.search(str(cause))
        if match:
            return match.group(1)
        cause = cause.__cause__ or cause.__context__
    return None


def read_bytes(path: str) -> bytes:
    """All bytes of a file, retrying transient errors."""

    def read() -> bytes:
        with FileSystems.open(path, compression_type="uncompressed") as stream:
            return stream.read()

    return with_retries(read, what=f"reading {path}")


def read_json(path: str) -> Any:
    """A JSON file (a manifest, stats, lineage), retrying transient errors."""
    return json.loads(read_bytes(path))


def hash_stream(stream: BinaryIO, hasher: Any) -> int:
    """Feed the rest of ``stream`` to ``hasher`` (a ``hashlib`` object) in chunks; the bytes read."""
    size = 0
    for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
        hasher.update(chunk)
        size += len(chunk)
    return size


def md5_of(path: str) -> Optional[str]:
    """The md5 of a file, or None if it does not exist."""

    def digest() -> Optional[str]:
        if not FileSystems.exists(path):
            return None
        md5 = hashlib.md5()
        with FileSystems.open(path, compression_type="uncompressed") as stream:
            hash_stream(stream, md5)
        return md5.hexdigest()

    return with_retries(digest, what=f"md5 of {path}")


def publish(path: str, source: BinaryIO | bytes) -> None:
    """Write to a unique ``.partial`` name beside ``path``, then rename into place.

    Readers see either the old file or the complete new one, never a truncated file; a
    writer killed half-way leaves only a ``.partial`` that :func:`remove_partials` clears.
    The unique name keeps two attempts of the same work (Beam retries, speculative
    execution) from writing into one temporary file.
    """
    stream = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source

    def write() -> None:
        partial = f"{path}.{uuid.uuid4().hex}{PARTIAL_SUFFIX}"
        stream.seek(0)
        try:
            with FileSystems.create(partial, mime_type="application/octet-stream", compression_type="uncompressed") as out:
                for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
                    out.write(chunk)
            FileSystems.rename([partial], [path])
        except BaseException:
            _remove_quietly(partial)  # a failed attempt's partial would only fill the disk further
            raise

    with_retries(write, what=f"writing {path}")


def _remove_quietly(path: str) -> None:
    try:
        if FileSystems.exists(path):
            FileSystems.delete([path])
    except OSError as error:
        LOG.warning("could not remove %s: %s", path, error)


def _storage_io(operation: Callable[[], T], what: str) -> T:
    """Run one write; a full disk or a refused write becomes its one-line :class:`StorageError`."""
    try:
        return operation()
    except OSError as error:
        permanent = permanent_error(error, what)
        if permanent is None:
            raise
        raise permanent from error


class BundleSpool:
    """One bundle's append-only spool file, ``PREFIX-<uuid>.partial`` in ``directory``.

    Records wait here while only references to them cross a shuffle. The file is created on
    the first append. A failed write or close deletes it at once (a retried bundle writes a
    new one, and a full disk stays full); a full disk or a refused write is the one-line
    :class:`StorageError`.
    """

    def __init__(self, directory: str, prefix: str) -> None:
        self._directory = directory
        self._prefix = prefix
        self._path: Optional[str] = None
        self._file: Any = None
        self._offset = 0

    def append(self, data: bytes) -> tuple[str, int]:
        """Write ``data``; the spool's path and the offset of ``data`` in it."""
        try:
            if self._file is None:
                self._path = FileSystems.join(self._directory, f"{self._prefix}-{uuid.uuid4().hex}{PARTIAL_SUFFIX}")
                self._file = _storage_io(lambda: FileSystems.create(self._path, mime_type="application/octet-stream",
                                                                    compression_type="uncompressed"),
                                         f"writing {self._path}")
            _storage_io(lambda: self._file.write(data), f"writing {self._path}")
        except BaseException:
            self.discard()
            raise
        offset, self._offset = self._offset, self._offset + len(data)
        return self._path, offset

    def close(self) -> None:
        if self._file is None:
            return
        try:
            _storage_io(self._file.close, f"writing {self._path}")
        except BaseException:
            self.discard()
            raise
        self._file = None

    def discard(self) -> None:
        """Close and delete the spool (a failed bundle's)."""
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()
        if self._path is not None:
            _remove_quietly(self._path)


def list_files(pattern: str) -> list[str]:
    return sorted(metadata.path for result in FileSystems.match([pattern]) for metadata in result.metadata_list)


def remove_partials(directory: str) -> int:
    """Delete ``.partial`` files left by killed writers; call only once every writer has finished."""
    paths = list_files(FileSystems.join(directory, f"*{PARTIAL_SUFFIX}"))
    if paths:
        FileSystems.delete(paths)
    return len(paths)


class NotARegularFile(Exception):
    """An input name that is not a regular file (a FIFO, socket, device, directory, broken link), with its reason."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail


def _is_local(path: str) -> bool:
    return isinstance(FileSystems.get_filesystem(path), LocalFileSystem)


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
             (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"))
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _open_local(path: str) -> BinaryIO:
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever.
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ENOENT and os.path.islink(path):
            raise NotARegularFile(Reason.DANGLING_SYMLINK, f"a link to {os.readlink(path)!r}, which does not exist")
        if error.errno == errno.ELOOP:
            raise NotARegularFile(Reason.SYMLINK_LOOP, "a symlink loop")
        if error.errno == errno.ENXIO:
            raise NotARegularFile(Reason.NOT_A_REGULAR_FILE, "a socket")
        raise
    mode = os.fstat(descriptor).st_mode
    if not stat.S_ISREG(mode):
        os.close(descriptor)
        raise NotARegularFile(Reason.NOT_A_REGULAR_FILE, _kind(mode))
    os.set_blocking(descriptor, True)
    return os.fdopen(descriptor, "rb")


def open_input(path: str) -> BinaryIO:
    """An input file for reading; on local disk only a regular file is opened, else :class:`NotARegularFile`.

    Checked on the opened descriptor, so a name swapped after listing cannot slip through.
    """
    if _is_local(path):
        return _open_local(path)
    return FileSystems.open(path, compression_type="uncompressed")


def input_exists(path: str) -> bool:
    """Whether an input name exists; on local disk a broken link does, so that reading it says why it fails."""
    return os.path.lexists(path) if _is_local(path) else FileSystems.exists(path)


def read_input(path: str) -> bytes:
    """All bytes of an input file (see :func:`open_input`), retrying transient errors."""

    def read() -> bytes:
        with open_input(path) as stream:
            return stream.read()

    return with_retries(read, what=f"reading {path}")


def list_inputs(pattern: str) -> list[str]:
    """Paths matching ``pattern``, as :func:`list_files`, but on local disk every name, regular or not.

    Beam's local listing drops names it cannot stat (broken links, link loops) without a word;
    here they are listed so that the reader rejects them with a reason.
    """
    if not _is_local(pattern):
        return list_files(pattern)
    prefix = re.match(r"^[^[*?]*", pattern).group(0)
    if prefix == pattern:
        return [pattern] if os.path.lexists(pattern) else []
    matches = re.compile(FileSystem.translate_pattern(pattern)).match
    folder = prefix if prefix.endswith("/") else os.path.dirname(prefix)
    names = []
    for directory, subdirectories, files in os.walk(folder or "."):
        links = [name for name in subdirectories if os.path.islink(os.path.join(directory, name))]
        names += [os.path.join(directory, name) for name in files + links]
    return sorted(name for name in names if matches(name))
