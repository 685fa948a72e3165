"""Pulling a published version: verified, resumable, whole or partial.

Every file is checked against the repository's ``manifest.json`` (size and sha256) before
it gets its name: it is fetched to ``DIR/PATH.partial`` (continued with an HTTP Range
request after an interruption) and renamed once verified, so a file with its final name
is complete, and a later pull verifies it locally and never fetches it again. A file that
fails verification is deleted and fetched again once; a second failure ends the pull.

A partial pull (``--shards GLOB``, ``--where EXPR``) fetches the Parquet metadata first,
selects rows with :mod:`transforms.where`, and fetches only the selected samples' byte
ranges (``tar_offset``, ``tar_length``; consecutive samples in one request), each checked
against its ``sample_sha256``. Their shards, filtered Parquet and a new ``shardindex.json``
make a folder every reader of a built version reads. ``DIR/manifest.json``, written last,
lists what was pulled.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import io
import json
import logging
import os
import posixpath
import shutil
import tarfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.finalize import MANIFEST
from pipeline.publish import REPOSITORY_MANIFEST
from pipeline.remote import Source, SourceError, UntrustedServer, open_source, read_exactly
from pipeline.versions import INDEX
from schemas.sample import sample_digest
from transforms.io.files import PARTIAL_SUFFIX, hash_stream, md5_of, publish
from transforms.io.shards import ShardInfo
from transforms.io.shards import manifest as shard_manifest
from transforms.where import compile_where

LOG = logging.getLogger(__name__)

#: Where a partial pull keeps the version's own Parquet files while it runs (removed at the end).
WORK_DIR = ".pull"
LATEST = "latest"
_CHUNK_BYTES = 1 << 20
_MAX_REQUEST_BYTES = 64 << 20
_TAR_END = b"\0" * 1024


class PullError(RuntimeError):
    """A pull that cannot complete: a file that fails verification twice, an unknown version, a lost server."""


@dataclasses.dataclass(frozen=True)
class PullConfig:
    """What to pull, from where, into where."""
    spec: str  # NAME@VERSION or NAME@latest
    source: str
    target: str
    shards: Optional[str] = None
    where: Optional[str] = None
    workers: int = 8
    progress_interval_s: float = 2.0
    #: PEM file of the CAs an ``https://`` source is verified against (else the system's, or ``SSL_CERT_FILE``).
    ca_bundle: Optional[str] = None

    def __post_init__(self):
        name, sep, version = self.spec.partition("@")
        if not (sep and name and version) or "/" in name or "/" in version:
            raise ValueError(f"expected NAME@VERSION or NAME@latest, got {self.spec!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")

    @property
    def name(self) -> str:
        return self.spec.partition("@")[0]

    @property
    def version(self) -> str:
        return self.spec.partition("@")[2]

    @property
    def partial(self) -> bool:
        return self.shards is not None or self.where is not None


@dataclasses.dataclass(frozen=True)
class Pulled:
    """What a pull did."""
    dataset: str
    version: str
    target: str
    files: int
    fetched_bytes: int
    kept_files: int
    samples: Optional[int]  # samples selected by a partial pull; None for a whole version


class _Progress:
    """Bytes, files, rate and ETA, logged at most every ``interval_s`` (threads report into it)."""

    def __init__(self, total_bytes: int, total_files: int, interval_s: float):
        self._lock = threading.Lock()
        self._total_bytes, self._total_files, self._interval_s = total_bytes, total_files, interval_s
        self.fetched = self.kept_bytes = self.files = self.kept_files = 0
        self._started = self._logged = time.monotonic()

    def add(self, count: int) -> None:
        with self._lock:
            self.fetched += count
            now = time.monotonic()
            if now - self._logged >= self._interval_s:
                self._logged = now
                self._log(now)

    def file_done(self, kept_bytes: Optional[int] = None) -> None:
        with self._lock:
            self.files += 1
            if kept_bytes is not None:
                self.kept_files += 1
                self.kept_bytes += kept_bytes

    def _log(self, now: float) -> None:
        rate = self.fetched / max(now - self._started, 1e-9)
        remaining = max(self._total_bytes - self.fetched - self.kept_bytes, 0)
        eta = f"{remaining / rate:.0f} s" if rate > 0 else "?"
        LOG.info("pulled %.1f / %.1f MB, %d / %d files, %.1f MB/s, ETA %s", (self.fetched + self.kept_bytes) / 1e6,
                 self._total_bytes / 1e6, self.files, self._total_files, rate / 1e6, eta)

    def finish(self) -> None:
        with self._lock:
            self._log(time.monotonic())


class _Stopped(Exception):
    """Another worker failed: this one stops between chunks, its ``.partial`` kept for the next pull."""


def _sha256_of(path: str) -> tuple[int, "hashlib._Hash"]:
    sha = hashlib.sha256()
    with open(path, "rb") as stream:
        size = hash_stream(stream, sha)
    return size, sha


def _is_safe(path: str) -> bool:
    """A relative path that stays inside the folder (a manifest comes from a server, not from us)."""
    return path not in ("", ".") and not path.startswith("/") and posixpath.normpath(path) == path and \
        not path.startswith("../") and path != ".." and "\\" not in path and not path.endswith(PARTIAL_SUFFIX)


def _is_shard(path: str, paths: frozenset[str]) -> bool:
    return path.endswith(".tar") and f"{path[:-4]}.parquet" in paths


def _shard_matches(path: str, pattern: Optional[str]) -> bool:
    return pattern is None or fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(posixpath.basename(path), pattern)


class _Puller:
    """One pull: the manifest, the files to fetch, the thread pool and what each worker writes."""

    def __init__(self, config: PullConfig, source: Source, version: str, manifest_bytes: bytes):
        self.config, self.source, self.version = config, source, version
        self.manifest_bytes = manifest_bytes
        self.manifest = json.loads(manifest_bytes)
        self.entries = {entry["path"]: entry for entry in self.manifest["files"]}
        unsafe = [path for path in self.entries if not _is_safe(path)]
        if unsafe:
            raise PullError(f"the manifest of {config.name}@{version} lists paths outside the version: "
                            f"{', '.join(map(repr, unsafe[:5]))}; nothing was fetched")
        self.stop = threading.Event()
        self.progress: Optional[_Progress] = None
        self._earlier_fetched = self._earlier_kept = 0

    def account(self) -> None:
        """Fold the current phase's progress into the totals before the next phase starts its own."""
        self._earlier_fetched += self.progress.fetched
        self._earlier_kept += self.progress.kept_files

    @property
    def fetched(self) -> int:
        return self._earlier_fetched + self.progress.fetched

    @property
    def kept_files(self) -> int:
        return self._earlier_kept + self.progress.kept_files

    # ---------------------------------------------------------------- whole files

    def fetch_file(self, path: str, target: str) -> None:
        """``path`` of the version to ``target``, verified; a verified file already there is kept."""
        entry = self.entries[path]
        if os.path.exists(target):
            size, sha = _sha256_of(target)
            if size == entry["size"] and sha.hexdigest() == entry["sha256"]:
                self.progress.file_done(kept_bytes=size)
                return
            LOG.warning("%s does not match the manifest: fetching it again", target)
            os.remove(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        for attempt in range(2):
            problem = self._download(path, entry, target + PARTIAL_SUFFIX)
            if problem is None:
                os.replace(target + PARTIAL_SUFFIX, target)
                self.progress.file_done()
                return
            os.remove(target + PARTIAL_SUFFIX)
            if attempt == 0:
                LOG.warning("%s: %s; deleted, fetching it again", path, problem)
        raise PullError(f"{path} fails verification against the manifest after fetching it twice: {problem}")

    def _download(self, path: str, entry: Mapping[str, Any], partial: str) -> Optional[str]:
        """Continue ``partial`` to the file's manifest size; returns why it is wrong, or None if verified."""
        size = entry["size"]
        if not os.path.exists(partial):
            open(partial, "wb").close()
        have, sha = _sha256_of(partial)
        if have > size:
            open(partial, "wb").close()
            have, sha = 0, hashlib.sha256()
        if have < size:
            with self.source.open(self._remote(path), start=have) as opened, open(partial, "r+b") as out:
                if opened.offset != have:  # the server ignored Range: start over
                    out.truncate(0)
                    have, sha = 0, hashlib.sha256()
                out.seek(have)
                if opened.total != size:
                    return f"the server's file has {opened.total} bytes, the manifest {size}"
                read = getattr(opened.stream, "read1", opened.stream.read)  # what has arrived: a kill keeps it
                while have < size:
                    if self.stop.is_set():
                        raise _Stopped()
                    chunk = read(min(_CHUNK_BYTES, size - have))
                    if not chunk:
                        raise SourceError(f"{self.source.url}/{self._remote(path)}: the connection ended after "
                                          f"{have} of {size} bytes (kept in {partial}; pull again to resume)")
                    out.write(chunk)
                    sha.update(chunk)
                    have += len(chunk)
                    self.progress.add(len(chunk))
        if sha.hexdigest() != entry["sha256"]:
            return f"sha256 {sha.hexdigest()[:12]}… is not the manifest's {entry['sha256'][:12]}…"
        return None

    def _remote(self, path: str) -> str:
        return f"{self.config.name}/{self.version}/{path}"

    # ---------------------------------------------------------------- samples

    def fetch_samples(self, shard: str, rows: Sequence[Mapping[str, Any]], metadata: pa.Table) -> None:
        """The selected ``rows`` of ``shard`` as a tar of their own, then their Parquet (written last)."""
        target = os.path.join(self.config.target, shard)
        parquet = f"{target[:-4]}.parquet"
        if os.path.exists(parquet) and os.path.exists(target) and _tar_holds(target, rows):
            self.progress.file_done(kept_bytes=sum(row["tar_length"] for row in rows))
            return
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target + PARTIAL_SUFFIX, "wb") as out:
            for run in _runs(rows):
                out.write(self._fetch_run(shard, run))
            out.write(_TAR_END)
        os.replace(target + PARTIAL_SUFFIX, target)
        offsets, offset = [], 0
        for row in rows:
            offsets.append(offset)
            offset += row["tar_length"]
        table = pa.Table.from_pylist([dict(row) for row in rows], schema=metadata.schema)
        table = table.set_column(table.schema.get_field_index("tar_offset"), "tar_offset", pa.array(offsets, pa.int64()))
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        publish(parquet, buffer)
        self.progress.file_done()

    def _fetch_run(self, shard: str, run: Sequence[Mapping[str, Any]]) -> bytes:
        start = run[0]["tar_offset"]
        length = run[-1]["tar_offset"] + run[-1]["tar_length"] - start
        for attempt in range(2):
            if self.stop.is_set():
                raise _Stopped()
            with self.source.open(self._remote(shard), start=start, length=length) as opened:
                if opened.offset != start:
                    raise PullError(f"{self.source.url} ignores Range requests: a --where pull needs them")
                data = read_exactly(opened, length)
            self.progress.add(length)
            bad = [row["key"] for row in run if not _holds_sample(data, row, start)]
            if not bad:
                return data
            if attempt == 0:
                LOG.warning("%s: samples %s fail their sample_sha256; fetching them again", shard, ", ".join(bad))
        raise PullError(f"{shard}: samples {', '.join(bad)} fail their sample_sha256 after fetching them twice")

    # ---------------------------------------------------------------- the pool

    def run_all(self, tasks: Iterable[Callable[[], None]]) -> None:
        """Run every task on the pool; the first failure stops the others and is raised."""
        with ThreadPoolExecutor(max_workers=self.config.workers, thread_name_prefix="pull") as pool:
            futures = [pool.submit(task) for task in tasks]
            try:
                wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # Ctrl-C: the workers stop between chunks, their .partial kept
                self.stop.set()
                raise
            failed = [future for future in futures if future.done() and not future.cancelled()
                      and future.exception() is not None and not isinstance(future.exception(), _Stopped)]
            if failed:
                self.stop.set()
                for future in futures:
                    future.cancel()
                raise failed[0].exception()


def _runs(rows: Sequence[Mapping[str, Any]]) -> list[list[Mapping[str, Any]]]:
    """Rows whose byte ranges follow one another (one request each, at most ``_MAX_REQUEST_BYTES``)."""
    runs: list[list[Mapping[str, Any]]] = []
    for row in sorted(rows, key=lambda r: r["tar_offset"]):
        last = runs[-1][-1] if runs else None
        if last is not None and last["tar_offset"] + last["tar_length"] == row["tar_offset"] and \
                row["tar_offset"] + row["tar_length"] - runs[-1][0]["tar_offset"] <= _MAX_REQUEST_BYTES:
            runs[-1].append(row)
        else:
            runs.append([row])
    return runs


def _sample_of(piece: bytes) -> tuple[set[str], dict[str, bytes]]:
    """The keys and the members (field -> bytes) of a tar of one sample."""
    keys, members = set(), {}
    with tarfile.open(fileobj=io.BytesIO(piece), mode="r:") as tar:
        for member in tar:
            if member.isfile():
                key, _, field = member.name.partition(".")
                keys.add(key)
                members[field] = tar.extractfile(member).read()
    return keys, members


def _holds_sample(data: bytes, row: Mapping[str, Any], start: int) -> bool:
    piece = data[row["tar_offset"] - start: row["tar_offset"] - start + row["tar_length"]]
    try:
        keys, members = _sample_of(piece)
    except tarfile.TarError:
        return False
    return keys == {row["key"]} and sample_digest(members) == row["sample_sha256"]


def _tar_holds(path: str, rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a tar a previous pull wrote holds exactly ``rows``' samples, each matching its digest.

    Read a sample at a time: a shard may not fit in memory, and a resumed pull checks several at once.
    """
    if os.path.getsize(path) != sum(row["tar_length"] for row in rows) + len(_TAR_END):
        return False
    with open(path, "rb") as stream:
        if not all(_holds_sample(stream.read(row["tar_length"]), {**row, "tar_offset": 0}, 0) for row in rows):
            return False
        return stream.read() == _TAR_END


def _resolve(config: PullConfig, source: Source) -> tuple[str, bytes]:
    """The version a spec names and its manifest's bytes, checked against the index's sha256."""
    try:
        index = json.loads(source.read(f"{config.name}/{INDEX}"))
    except UntrustedServer:
        raise
    except SourceError as error:
        raise PullError(f"no dataset {config.name!r} in {source.url} ({error})") from None
    version = index["latest"] if config.version == LATEST else config.version
    entry = next((v for v in index["versions"] if v["version"] == version), None)
    if entry is None:
        known = ", ".join(v["version"] for v in index["versions"])
        raise PullError(f"{config.name} has no published version {version!r} in {source.url} (published: {known})")
    manifest_bytes = source.read(f"{config.name}/{version}/{REPOSITORY_MANIFEST}")
    if entry.get("manifest_sha256") and hashlib.sha256(manifest_bytes).hexdigest() != entry["manifest_sha256"]:
        raise PullError(f"{config.name}/{version}/{REPOSITORY_MANIFEST} does not match the sha256 {INDEX} lists")
    return version, manifest_bytes


def _local_entry(root: str, path: str) -> dict[str, Any]:
    size, sha = _sha256_of(os.path.join(root, path))
    return {"path": path, "size": size, "sha256": sha.hexdigest()}


def _shard_index(root: str, name: str, shards: Sequence[str]) -> bytes:
    """A wids shard index of the pulled shards (md5, sample count and size measured here)."""
    infos = []
    for shard in shards:
        path = os.path.join(root, shard)
        samples = pq.ParquetFile(f"{path[:-4]}.parquet").metadata.num_rows
        infos.append(ShardInfo(shard, md5_of(path), samples, os.path.getsize(path), written=True))
    return json.dumps(shard_manifest(infos, name), indent=2).encode("utf-8")


def pull(config: PullConfig) -> Pulled:
    """Pull the version ``config`` names into ``config.target``; raises :class:`PullError` when it cannot."""
    source = open_source(config.source, config.ca_bundle)
    try:
        version, manifest_bytes = _resolve(config, source)
        puller = _Puller(config, source, version, manifest_bytes)
        return (_pull_partial if config.partial else _pull_whole)(puller)
    except SourceError as error:
        raise PullError(str(error)) from None


def _pull_whole(puller: _Puller) -> Pulled:
    config, entries = puller.config, puller.manifest["files"]
    puller.progress = _Progress(sum(e["size"] for e in entries), len(entries), config.progress_interval_s)
    puller.run_all([lambda path=e["path"]: puller.fetch_file(path, os.path.join(config.target, path)) for e in entries])
    puller.progress.finish()
    publish(os.path.join(config.target, REPOSITORY_MANIFEST), puller.manifest_bytes)
    LOG.info("pulled %s@%s into %s: %d files verified", config.name, puller.version, config.target, len(entries))
    return Pulled(config.name, puller.version, config.target, len(entries), puller.fetched, puller.kept_files, None)


def _pull_partial(puller: _Puller) -> Pulled:
    config = puller.config
    paths = frozenset(puller.entries)
    shards = [p for p in sorted(paths) if _is_shard(p, paths) and _shard_matches(p, config.shards)]
    shard_parquets = {f"{p[:-4]}.parquet" for p in paths if _is_shard(p, paths)}
    others = [p for p in sorted(paths) if not _is_shard(p, paths) and p not in shard_parquets and p != MANIFEST]
    if config.where is None:
        pulled = shards
        files = [p for shard in shards for p in (shard, f"{shard[:-4]}.parquet")] + others
        puller.progress = _Progress(sum(puller.entries[p]["size"] for p in files), len(files),
                                    config.progress_interval_s)
        puller.run_all([lambda p=p: puller.fetch_file(p, os.path.join(config.target, p)) for p in files])
    else:
        pulled = _pull_samples(puller, shards, others)
    puller.progress.finish()
    written = list(others)
    if MANIFEST in paths:
        publish(os.path.join(config.target, MANIFEST), _shard_index(config.target, config.name, pulled))
        written.append(MANIFEST)
    written += [p for shard in pulled for p in (shard, f"{shard[:-4]}.parquet")]
    samples = sum(pq.ParquetFile(os.path.join(config.target, f"{shard[:-4]}.parquet")).metadata.num_rows
                  for shard in pulled)
    manifest = {
        "format_version": puller.manifest["format_version"], "dataset": config.name, "version": puller.version,
        "pulled": {"from": puller.source.url, "shards": config.shards, "where": config.where, "samples": samples,
                   "repository_manifest_sha256": hashlib.sha256(puller.manifest_bytes).hexdigest()},
        "files": sorted((_local_entry(config.target, p) for p in written), key=lambda e: e["path"]),
    }
    publish(os.path.join(config.target, REPOSITORY_MANIFEST),
            json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8"))
    shutil.rmtree(os.path.join(config.target, WORK_DIR), ignore_errors=True)
    LOG.info("pulled %d samples of %s@%s (%d shards) into %s", samples, config.name, puller.version, len(pulled),
             config.target)
    return Pulled(config.name, puller.version, config.target, len(written), puller.fetched, puller.kept_files, samples)


def _pull_samples(puller: _Puller, shards: Sequence[str], others: Sequence[str]) -> list[str]:
    """Metadata first (kept in ``WORK_DIR`` until the end), then the samples ``--where`` selects."""
    config = puller.config
    work = os.path.join(config.target, WORK_DIR)
    metadata_paths = [f"{shard[:-4]}.parquet" for shard in shards]
    first = metadata_paths + list(others)
    puller.progress = _Progress(sum(puller.entries[p]["size"] for p in first), len(first), config.progress_interval_s)
    puller.run_all([lambda p=p: puller.fetch_file(p, os.path.join(work, p)) for p in metadata_paths] +
                   [lambda p=p: puller.fetch_file(p, os.path.join(config.target, p)) for p in others])
    tables = {shard: pq.read_table(os.path.join(work, f"{shard[:-4]}.parquet")) for shard in shards}
    columns = next(iter(tables.values())).column_names if tables else ()
    predicate = compile_where(config.where, columns)
    selected = {}
    for shard, table in tables.items():
        rows = [row for row in table.to_pylist() if predicate(row)]
        if rows:
            selected[shard] = rows
    puller.account()
    puller.progress = _Progress(sum(r["tar_length"] for rows in selected.values() for r in rows), len(selected),
                                config.progress_interval_s)
    puller.run_all([lambda s=s, rows=rows: puller.fetch_samples(s, rows, tables[s]) for s, rows in selected.items()])
    return sorted(selected)

