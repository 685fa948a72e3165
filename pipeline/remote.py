"""Reading a dataset repository: whole files, byte ranges and resumable streams, over HTTP or any Beam filesystem.

A repository (``counterfactory publish``) is plain files, so a puller needs only GET and
``Range``: any static server (nginx, a bucket's HTTP endpoint) or a filesystem Beam
reaches. HTTP connections are kept alive per thread (a partial pull makes one request
per run of consecutive samples) and a request that fails on a connection the server
closed is retried once on a new one; anything else is a :class:`SourceError`.

HTTPS verifies the server against the system's CAs (``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
replace them, as for curl and urllib) or only against a ``ca_bundle`` given; a server
whose certificate is not trusted is an :class:`UntrustedServer`, never retried.
"""
from __future__ import annotations

import contextlib
import functools
import http.client
import ssl
import threading
import urllib.parse
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, Mapping, Optional, Protocol

from apache_beam.io.filesystems import FileSystems

_TIMEOUT_S = 60.0


class SourceError(OSError):
    """A file the repository does not serve, or a server that cannot be reached or stopped answering."""


class UntrustedServer(SourceError):
    """An HTTPS server whose certificate does not verify against the CAs trusted."""


@dataclass(frozen=True)
class Opened:
    """A body being read: it starts at byte ``offset`` of a file of ``total`` bytes."""
    stream: BinaryIO
    offset: int
    total: int


class Source(Protocol):
    url: str

    def open(self, path: str, start: int = 0, length: Optional[int] = None) -> contextlib.AbstractContextManager[Opened]:
        """Bytes ``start`` .. ``start + length - 1`` (to the end without ``length``) of ``path``."""

    def read(self, path: str) -> bytes:
        """A whole (small) file."""


def read_exactly(opened: Opened, length: int) -> bytes:
    data = opened.stream.read(length)
    if len(data) != length:
        raise SourceError(f"the body ended after {len(data)} of {length} bytes")
    return data


class HttpSource:
    """A repository behind a static HTTP(S) server that honours ``Range``.

    ``context`` verifies an HTTPS server; without it, Python's default (the system's CAs).
    """

    def __init__(self, url: str, context: Optional[ssl.SSLContext] = None):
        parts = urllib.parse.urlsplit(url)
        self.url = url.rstrip("/")
        self._connect = (functools.partial(http.client.HTTPSConnection, context=context) if parts.scheme == "https"
                         else http.client.HTTPConnection)
        self._netloc, self._base = parts.netloc, parts.path.rstrip("/")
        self._local = threading.local()

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self._local, "connection", None) is None:
            self._local.connection = self._connect(self._netloc, timeout=_TIMEOUT_S)
        return self._local.connection

    def _drop_connection(self) -> None:
        connection, self._local.connection = getattr(self._local, "connection", None), None
        if connection is not None:
            connection.close()

    def _get(self, path: str, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        target = urllib.parse.quote(f"{self._base}/{path}")
        for attempt in range(2):
            try:
                connection = self._connection()
                connection.request("GET", target, headers=dict(headers))
                return connection.getresponse()
            except ssl.SSLCertVerificationError as error:
                self._drop_connection()
                raise UntrustedServer(
                    f"{self.url}: the server's certificate is not trusted ({error.verify_message}): "
                    "pass the CA that signed it in SSL_CERT_FILE (or --ca_bundle FILE)") from None
            except (http.client.HTTPException, OSError) as error:
                self._drop_connection()  # a kept-alive connection the server closed: once more on a new one
                if attempt:
                    raise SourceError(f"cannot fetch {self.url}/{path}: {error or type(error).__name__}") from None
        raise AssertionError("unreachable")

    @contextlib.contextmanager
    def open(self, path: str, start: int = 0, length: Optional[int] = None) -> Iterator[Opened]:
        headers = {}
        if start or length is not None:
            headers["Range"] = f"bytes={start}-" + ("" if length is None else str(start + length - 1))
        response = self._get(path, headers)
        try:
            if response.status == http.client.PARTIAL_CONTENT:
                offset, total = _content_range(response.getheader("Content-Range", ""))
            elif response.status == http.client.OK:
                offset, total = 0, int(response.getheader("Content-Length", "-1"))
            else:
                raise SourceError(f"{self.url}/{path}: HTTP {response.status} {response.reason}")
            yield Opened(response, offset, total)
        except (http.client.HTTPException, OSError) as error:
            if isinstance(error, SourceError):
                raise
            raise SourceError(f"reading {self.url}/{path}: {error or type(error).__name__}") from None
        finally:
            if not response.isclosed():  # body not read to its end: the connection cannot serve another request
                self._drop_connection()

    def read(self, path: str) -> bytes:
        with self.open(path) as opened:
            return read_exactly(opened, opened.total) if opened.total >= 0 else opened.stream.read()


def _content_range(header: str) -> tuple[int, int]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL)."""
    try:
        unit, _, spec = header.partition(" ")
        span, _, total = spec.partition("/")
        return int(span.split("-")[0]), int(total)
    except ValueError:
        raise SourceError(f"unreadable Content-Range {header!r}") from None


class FileSystemSource:
    """A repository on a filesystem Beam reaches: a local folder, ``gs://``, ``s3://``."""

    def __init__(self, url: str):
        self.url = url.rstrip("/") or "/"

    def _path(self, path: str) -> str:
        return FileSystems.join(self.url, path) if path else self.url

    @contextlib.contextmanager
    def open(self, path: str, start: int = 0, length: Optional[int] = None) -> Iterator[Opened]:
        full = self._path(path)
        try:
            matches = FileSystems.match([full])[0].metadata_list
            if not matches:
                raise SourceError(f"{full}: no such file")
            with FileSystems.open(full, compression_type="uncompressed") as stream:
                stream.seek(start)
                yield Opened(stream, start, matches[0].size_in_bytes)
        except SourceError:
            raise
        except OSError as error:
            raise SourceError(f"reading {full}: {error}") from None

    def read(self, path: str) -> bytes:
        with self.open(path) as opened:
            return opened.stream.read()


_SOURCES: Mapping[str, Callable[[str], Source]] = {"http": HttpSource, "https": HttpSource}


def open_source(url: str, ca_bundle: Optional[str] = None) -> Source:
    """The reader of a repository URL: HTTP(S) by its scheme, any other URL or path through Beam's filesystems.

    ``ca_bundle`` (PEM) is the only CA an ``https://`` server is verified against; raises
    ``ValueError`` for another scheme or a file that holds no certificate.
    """
    if ca_bundle is None:
        return _SOURCES.get(urllib.parse.urlsplit(url).scheme, FileSystemSource)(url)
    if urllib.parse.urlsplit(url).scheme != "https":
        raise ValueError(f"--ca_bundle is for https:// repositories, not {url}")
    try:
        context = ssl.create_default_context(cafile=ca_bundle)
    except ssl.SSLError as error:
        raise ValueError(f"--ca_bundle {ca_bundle}: not a PEM bundle of certificates ({error.reason})") from None
    except OSError as error:
        raise ValueError(f"--ca_bundle {ca_bundle}: {error.strerror}") from None
    return HttpSource(url, context)
