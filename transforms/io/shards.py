"""WebDataset shard sink: deterministic, atomic, resumable.

How samples become shards (docs/FORMAT.md):

1. The number of buckets is ``ceil(total / (fill * max_count))``, computed from the
   count of all samples, and each sample goes to bucket ``blake2b(key) mod buckets``.
   The same set of samples therefore always lands in the same buckets, whatever the
   runner, worker count or input order.
2. Inside a bucket, samples are sorted by key and cut into parts when ``max_count``
   samples or ``max_size`` bytes are reached: ``{prefix}-{bucket:06d}-{part:02d}.tar``.
   A run of fewer buckets than ``min_shards`` first cuts each bucket into
   ``ceil(min_shards / buckets)`` even parts, so that a small run still has a shard for
   each of a few DataLoader workers (``min(min_shards, samples)`` shards).
3. Each part is assembled in a spool, hashed, and compared with the file already at its
   final name: an identical shard is left untouched (a re-run rewrites nothing and
   duplicates nothing); otherwise it is written under a unique ``.partial`` name and
   renamed into place, so a killed worker never leaves a truncated ``.tar`` behind.
4. Next to every tar, ``{name}.parquet`` holds the per-sample metadata rows, each with
   the sample's place in its tar (``shard``, ``tar_offset``, ``tar_length``) and its
   ``sample_sha256`` (:data:`schemas.sample.LOCATION_COLUMNS`).

Tars are byte-identical for identical samples: members in key then field order, fixed
mtime, fixed owner and mode.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import contextlib
import math
import posixpath
import tarfile
import tempfile
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from schemas.sample import LOCATION_COLUMNS, sample_digest
from transforms.checks import is_integral
from transforms.io.files import BundleSpool, hash_stream, list_files, md5_of, publish
from transforms.ledger import MAIN_LEDGER, RunAccounts

LOG = logging.getLogger(__name__)

_SPOOL_IN_MEMORY_BYTES = 64 << 20
#: The stage name of the writer in the stats' stage table.
STAGE = "write"
#: The tag of the sample keys each finished shard holds (the writer's side of the stage table).
_WRITTEN_KEYS = "written_keys"
_LOCATION_NAMES = tuple(field.name for field in LOCATION_COLUMNS)
#: Parts of a bucket have two-digit numbers.
_MAX_PARTS = 100


@dataclasses.dataclass(frozen=True)
class EncodedSample:
    """A sample ready for a tar: member bytes by field name, plus its Parquet metadata row."""

    key: str
    fields: Mapping[str, bytes]
    metadata: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not self.key or "." in self.key or "/" in self.key:
            raise ValueError(f"invalid sample key {self.key!r}: it must be non-empty, without '.' or '/'")
        for name, value in self.fields.items():
            if not isinstance(value, (bytes, bytearray)):
                raise TypeError(f"field {name!r} of {self.key} must be bytes, got {type(value).__name__}")

    @property
    def nbytes(self) -> int:
        return sum(len(value) for value in self.fields.values())


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One finished shard, as listed in the wids manifest."""

    url: str  # relative to the output directory
    md5sum: str
    nsamples: int
    filesize: int
    written: bool  # False when an identical shard was already in place

    def manifest_entry(self) -> dict[str, Any]:
        return {"url": self.url, "md5sum": self.md5sum, "nsamples": self.nsamples, "filesize": self.filesize}


@dataclasses.dataclass(frozen=True)
class ShardWriterConfig:
    """Where and how shards are written. ``fill`` keeps buckets below ``max_count`` on average."""

    output_dir: str
    metadata_schema: pa.Schema
    prefix: str = "shard"
    max_count: int = 1000
    max_size: int = 1 << 30
    #: Fewest shards of a run with at least that many samples (a run of fewer has one per sample).
    min_shards: int = 8
    fill: float = 0.8
    #: Whole seconds: a float mtime (even 0.0) gives every member a PAX header of its own,
    #: 1 KiB more per member and half of a reader's tar parsing time.
    mtime: int = 0

    def __post_init__(self) -> None:
        if not self.output_dir:
            raise ValueError("output_dir is required")
        if not self.prefix or "/" in self.prefix or "." in self.prefix:
            raise ValueError(f"shard prefix must be a plain name, got {self.prefix!r}")
        if self.max_count < 1:
            raise ValueError(f"max_count must be >= 1, got {self.max_count}")
        if self.max_size < 1024:
            raise ValueError(f"max_size must be >= 1024 bytes, got {self.max_size}")
        if not is_integral(self.min_shards) or not 1 <= self.min_shards <= _MAX_PARTS:
            raise ValueError(f"min_shards must be a whole number in [1, {_MAX_PARTS}], got {self.min_shards!r}")
        if not 0.0 < self.fill <= 1.0:
            raise ValueError(f"fill must be in (0, 1], got {self.fill}")
        if not is_integral(self.mtime) or self.mtime < 0:
            raise ValueError(f"mtime must be whole seconds >= 0, got {self.mtime!r}")
        missing = [name for name in ("key", *_LOCATION_NAMES) if name not in self.metadata_schema.names]
        if missing:
            raise ValueError(f"metadata_schema lacks the columns {missing} (see schemas.sample.LOCATION_COLUMNS)")

    def bucket_count(self, total_samples: int) -> int:
        return max(1, math.ceil(total_samples / (self.fill * self.max_count)))

    def min_parts(self, total_samples: int) -> int:
        """How many even parts each bucket is cut into at least, for ``min_shards`` shards in all."""
        return math.ceil(min(self.min_shards, total_samples) / self.bucket_count(total_samples))

    def shard_name(self, bucket: int, part: int) -> str:
        return f"{self.prefix}-{bucket:06d}-{part:02d}.tar"

    def path(self, name: str) -> str:
        return FileSystems.join(self.output_dir, name)


def bucket_of(key: str, buckets: int) -> int:
    """The bucket of a sample key: uniform, and the same on every machine."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % buckets


def split_parts(samples: Sequence[EncodedSample], max_count: int, max_size: int,
                min_parts: int = 1) -> Iterator[list[EncodedSample]]:
    """Cut key-sorted samples into ``min_parts`` even runs, then each into parts within the limits.

    A single sample larger than ``max_size`` gets a part of its own rather than an error.
    """
    runs = min(min_parts, len(samples)) or 1
    for index in range(runs):
        part: list[EncodedSample] = []
        size = 0
        for sample in samples[index * len(samples) // runs:(index + 1) * len(samples) // runs]:
            if part and (len(part) >= max_count or size + sample.nbytes > max_size):
                yield part
                part, size = [], 0
            part.append(sample)
            size += sample.nbytes
        if part:
            yield part


def tar_records(sample: EncodedSample, mtime: int) -> bytes:
    """The tar records of one sample: a header and zero-padded data per member, in field order.

    Byte for byte what ``webdataset.TarWriter`` writes for it, and independent of where in
    a tar it goes, so a sample can be spooled once and copied into its shard later.
    """
    records = bytearray()
    for name in sorted(sample.fields):
        value = sample.fields[name]
        info = tarfile.TarInfo(f"{sample.key}.{name}")
        info.size, info.mtime, info.mode, info.uname, info.gname = len(value), mtime, 0o444, "", ""
        records += info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        records += value
        records += bytes(-len(value) % tarfile.BLOCKSIZE)
    return bytes(records)


@dataclasses.dataclass(frozen=True)
class SpooledSample:
    """A sample whose tar records wait in a spool file: what crosses the writer's shuffle instead of its bytes."""

    key: str
    nbytes: int
    sample_sha256: str
    metadata: Mapping[str, Any]
    spool: str
    offset: int
    length: int


class _SpoolFn(beam.DoFn):
    """Append each sample's tar records to one spool file per bundle (``*.partial`` beside the shards)."""

    def __init__(self, config: ShardWriterConfig) -> None:
        super().__init__()
        self._config = config

    def start_bundle(self) -> None:
        self._spool = BundleSpool(self._config.output_dir, f"{self._config.prefix}-spool")

    def process(self, sample: EncodedSample) -> Iterator[SpooledSample]:
        records = tar_records(sample, self._config.mtime)
        path, offset = self._spool.append(records)
        yield SpooledSample(key=sample.key, nbytes=sample.nbytes, sample_sha256=sample_digest(sample.fields),
                            metadata=dict(sample.metadata), spool=path, offset=offset, length=len(records))

    def finish_bundle(self) -> None:
        self._spool.close()


def _spooled_records(samples: Sequence[SpooledSample]) -> Iterator[bytes]:
    """The tar records of spooled samples, read back one sample at a time."""
    with contextlib.ExitStack() as stack:
        spools: dict[str, Any] = {}
        for sample in samples:
            if sample.spool not in spools:
                spools[sample.spool] = stack.enter_context(FileSystems.open(sample.spool, compression_type="uncompressed"))
            spool = spools[sample.spool]
            spool.seek(sample.offset)
            records = spool.read(sample.length)
            if len(records) != sample.length:
                raise OSError(f"spool {sample.spool} ends inside sample {sample.key}")
            yield records


class _TarSpool:
    """A tar assembled in a spooled temp file from samples' tar records, with its md5, size and locations."""

    def __init__(self, samples_records: Iterable[bytes]) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY_BYTES)
        #: ``tar_offset`` and ``tar_length`` of each sample, in order.
        self.locations: list[dict[str, int]] = []
        offset = 0
        for records in samples_records:
            self.file.write(records)
            self.locations.append({"tar_offset": offset, "tar_length": len(records)})
            offset += len(records)
        # The end of archive as tarfile writes it: two zero blocks, then zeros to a whole record.
        end = offset + 2 * tarfile.BLOCKSIZE
        self.file.write(bytes(2 * tarfile.BLOCKSIZE + -end % tarfile.RECORDSIZE))
        self.size = self.file.tell()
        self.file.seek(0)
        digest = hashlib.md5()
        hash_stream(self.file, digest)
        self.md5 = digest.hexdigest()

    def close(self) -> None:
        self.file.close()


def _parquet_bytes(rows: list[Mapping[str, Any]], schema: pa.Schema) -> bytes:
    table = pa.Table.from_pylist([dict(row) for row in rows], schema=schema)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()


def write_shard(config: ShardWriterConfig, name: str, samples: Sequence[EncodedSample]) -> ShardInfo:
    """Write one shard of in-memory samples and its Parquet metadata (see :func:`_publish_shard`)."""
    rows = [{**sample.metadata, "key": sample.key, "sample_sha256": sample_digest(sample.fields)} for sample in samples]
    return _publish_shard(config, name, rows, (tar_records(sample, config.mtime) for sample in samples))


def _publish_shard(config: ShardWriterConfig, name: str, rows: Sequence[Mapping[str, Any]],
                   samples_records: Iterable[bytes]) -> ShardInfo:
    """Write one shard and its Parquet metadata atomically; skip both if identical ones exist."""
    tar_path = config.path(name)
    parquet_path = metadata_path(tar_path)
    spool = _TarSpool(samples_records)
    try:
        rows = [{**row, "shard": name, **location} for row, location in zip(rows, spool.locations)]
        parquet = _parquet_bytes(rows, config.metadata_schema)
        tar_unchanged = md5_of(tar_path) == spool.md5
        parquet_unchanged = md5_of(parquet_path) == hashlib.md5(parquet).hexdigest()
        if not tar_unchanged:
            publish(tar_path, spool.file)
        if not parquet_unchanged:
            publish(parquet_path, parquet)
        written = not (tar_unchanged and parquet_unchanged)
        LOG.debug("%s %s: %d samples, %d bytes", "wrote" if written else "kept identical", name, len(rows), spool.size)
        return ShardInfo(url=name, md5sum=spool.md5, nsamples=len(rows), filesize=spool.size, written=written)
    finally:
        spool.close()


def _remove_spools(_: None, spools: list[str], shards: list[ShardInfo]) -> None:
    """Delete the spool files once every shard is written (``shards`` is there to wait for them)."""
    for spool in spools:
        with contextlib.suppress(OSError):  # the finalize's removal of .partial files may have come first
            FileSystems.delete([spool])
    LOG.debug("removed %d spool files after %d shards", len(spools), len(shards))


class _WriteBucketFn(beam.DoFn):
    def __init__(self, config: ShardWriterConfig) -> None:
        super().__init__()
        self._config = config

    def process(self, bucket_and_samples: tuple[int, Iterable[SpooledSample]],
                total_samples: int) -> Iterator[ShardInfo | TaggedOutput]:
        bucket, samples = bucket_and_samples
        ordered = sorted(samples, key=lambda sample: sample.key)
        config = self._config
        parts = split_parts(ordered, config.max_count, config.max_size, config.min_parts(total_samples))
        for part_index, part in enumerate(parts):
            rows = [{**sample.metadata, "key": sample.key, "sample_sha256": sample.sample_sha256} for sample in part]
            info = _publish_shard(config, config.shard_name(bucket, part_index), rows, _spooled_records(part))
            Metrics.counter("counterfactory.write", "shards_written_count" if info.written else "shards_kept_count").inc()
            Metrics.counter("counterfactory.write", "samples_written_count").inc(info.nsamples)
            Metrics.counter("counterfactory.write", "shard_bytes_total_bytes").inc(info.filesize)
            yield TaggedOutput(_WRITTEN_KEYS, tuple(sample.key for sample in part))
            yield info


class WriteShards(beam.PTransform):
    """Write ``EncodedSample`` records as WebDataset shards; outputs one ``ShardInfo`` per shard.

    The samples written are ``unit`` 's ledger's ``written``, and the writer is a stage of
    the stage table: every sample given must be in exactly one finished shard.
    """

    def __init__(self, config: ShardWriterConfig, unit: str = MAIN_LEDGER) -> None:
        super().__init__()
        self._config = config
        self._unit = unit

    def expand(self, samples: beam.PCollection) -> beam.PCollection:
        config = self._config
        total = samples | "CountSamples" >> beam.combiners.Count.Globally()
        buckets = total | "BucketCount" >> beam.Map(config.bucket_count)
        spooled = samples | "Spool" >> beam.ParDo(_SpoolFn(config))
        written = (
            spooled
            | "AssignBucket"
            >> beam.Map(lambda sample, n: (bucket_of(sample.key, n), sample), n=beam.pvalue.AsSingleton(buckets))
            | "GroupByBucket" >> beam.GroupByKey()
            | "WriteBuckets"
            >> beam.ParDo(_WriteBucketFn(config), total_samples=beam.pvalue.AsSingleton(total)).with_outputs(
                _WRITTEN_KEYS, main="shards")
        )
        spools = spooled | "SpoolFiles" >> beam.Map(lambda sample: sample.spool) | "DistinctSpools" >> beam.Distinct()
        _ = (
            samples.pipeline
            | "AfterWrite" >> beam.Create([None])
            | "RemoveSpools" >> beam.Map(_remove_spools, spools=beam.pvalue.AsList(spools),
                                         shards=beam.pvalue.AsList(written.shards))
        )
        accounts = RunAccounts.of(samples.pipeline)
        accounts.add_stage(STAGE, self._unit, samples, main=written[_WRITTEN_KEYS], output_keys=lambda keys: keys)
        accounts.add_written(self._unit, written.shards)
        return written.shards


def manifest(shards: Iterable[ShardInfo], name: str) -> dict[str, Any]:
    """The ``wids-shard-index-v1`` manifest; urls are relative to the manifest's directory."""
    entries = sorted((shard.manifest_entry() for shard in shards), key=lambda entry: entry["url"])
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name, "shardlist": entries}


class ShardMismatch(ValueError):
    """A shard that is not the one its manifest lists: changed since, missing, or left by another run."""


def verify_shards(folder: str, shardlist: Iterable[Mapping[str, Any]]) -> None:
    """Check every shard a manifest lists against its ``filesize`` and ``md5sum``; raise for the first that differs.

    Catches a damaged copy and a folder that mixes runs (a killed re-run's shards beside
    the manifest of the run before), before any of its samples is used.
    """
    for entry in shardlist:
        path = FileSystems.join(folder, entry["url"])
        matched = FileSystems.match([path])[0].metadata_list if FileSystems.exists(path) else []
        if not matched:
            raise ShardMismatch(f"{path} is listed in the manifest but missing")
        if matched[0].size_in_bytes != entry["filesize"]:
            raise ShardMismatch(f"{path} does not match the manifest: {matched[0].size_in_bytes} bytes, listed with "
                                f"{entry['filesize']} (changed since written, or left by another run)")
        md5 = md5_of(path)
        if md5 != entry["md5sum"]:
            raise ShardMismatch(f"{path} does not match the manifest: md5 {md5}, listed with {entry['md5sum']} "
                                f"(changed since written, or left by another run)")


def metadata_path(tar_path: str) -> str:
    """The Parquet metadata beside a shard."""
    return tar_path[: -len(".tar")] + ".parquet" if tar_path.endswith(".tar") else tar_path + ".parquet"


def recorded_digests(tar_path: str) -> Optional[dict[str, str]]:
    """Each sample's ``sample_sha256`` as the writer recorded it beside the tar; None for a tar without our metadata."""
    path = metadata_path(tar_path)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as stream:
        parquet = pq.ParquetFile(io.BytesIO(stream.read()))
    if not {"key", "sample_sha256"} <= set(parquet.schema_arrow.names):
        return None
    table = parquet.read(columns=["key", "sample_sha256"])
    return dict(zip(table.column("key").to_pylist(), table.column("sample_sha256").to_pylist()))


def stale_files(config: ShardWriterConfig, shards: Iterable[ShardInfo]) -> list[str]:
    """Shard files in the output that this run did not produce (left by an earlier run)."""
    current = {shard.url for shard in shards}
    return [path for path in list_files(config.path(f"{config.prefix}-*.tar")) if posixpath.basename(path) not in current]
