"""Small file operations on any Beam filesystem: read, hash, publish atomically."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
import uuid
from typing import Any, BinaryIO, Callable, Optional, TypeVar

from apache_beam.io.filesystems import FileSystems

LOG = logging.getLogger(__name__)

PARTIAL_SUFFIX = ".partial"
_CHUNK_BYTES = 8 << 20

T = TypeVar("T")


def with_retries(operation: Callable[[], T], *, attempts: int = 3, base_delay_s: float = 0.5, what: str = "") -> T:
    """Run an I/O operation, retrying ``OSError`` with exponential backoff.

    For transient storage errors (a GCS 503, an NFS hiccup). The last error propagates:
    inside a stage it becomes a dead letter for that one record.
    """
    for attempt in range(1, attempts + 1):
        try:
            return operation()
        except OSError as error:
            if attempt == attempts:
                raise
            delay = base_delay_s * 2 ** (attempt - 1)
            LOG.warning("retrying %s after %s (attempt %d/%d, %.1fs)", what or "I/O", error, attempt, attempts, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def read_bytes(path: str) -> bytes:
    """All bytes of a file, retrying transient errors."""

    def read() -> bytes:
        with FileSystems.open(path, compression_type="uncompressed") as stream:
            return stream.read()

    return with_retries(read, what=f"reading {path}")


def read_json(path: str) -> Any:
    """A JSON file (a manifest, stats, lineage), retrying transient errors."""
    return json.loads(read_bytes(path))


def md5_of(path: str) -> Optional[str]:
    """The md5 of a file, or None if it does not exist."""

    def digest() -> Optional[str]:
        if not FileSystems.exists(path):
            return None
        md5 = hashlib.md5()
        with FileSystems.open(path, compression_type="uncompressed") as stream:
            for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
                md5.update(chunk)
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
        with FileSystems.create(partial, mime_type="application/octet-stream", compression_type="uncompressed") as out:
            for chunk in iter(lambda: stream.read(_CHUNK_BYTES), b""):
                out.write(chunk)
        FileSystems.rename([partial], [path])

    with_retries(write, what=f"writing {path}")


def list_files(pattern: str) -> list[str]:
    return sorted(metadata.path for result in FileSystems.match([pattern]) for metadata in result.metadata_list)


def remove_partials(directory: str) -> int:
    """Delete ``.partial`` files left by killed writers; call only once every writer has finished."""
    paths = list_files(FileSystems.join(directory, f"*{PARTIAL_SUFFIX}"))
    if paths:
        FileSystems.delete(paths)
    return len(paths)
