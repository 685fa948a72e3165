"""The shard writer: deterministic bytes, limits, atomic publish, resume, and readers' view."""
import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import textwrap
import time

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset
import wids

from schemas.sample import LOCATION_COLUMNS, sample_digest

from transforms.io.files import with_retries
from transforms.io.files import PARTIAL_SUFFIX, publish, remove_partials
from schemas import Reason, Rejection
from transforms.io.readers import read_tar_samples
from transforms.io.shards import (
    EncodedSample,
    ShardMismatch,
    ShardWriterConfig,
    WriteShards,
    _SpoolFn,
    bucket_of,
    manifest,
    split_parts,
    verify_shards,
    write_shard,
)

SCHEMA = pa.schema([pa.field("key", pa.string()), *LOCATION_COLUMNS, pa.field("n", pa.int64())])


def sample(i: int, size: int = 100) -> EncodedSample:
    payload = bytes([i % 251]) * size
    return EncodedSample(key=f"k{i:05d}", fields={"bin": payload, "json": json.dumps({"i": i}).encode()}, metadata={"n": i})


def config(tmp_path: pathlib.Path, **overrides) -> ShardWriterConfig:
    return ShardWriterConfig(output_dir=str(tmp_path), metadata_schema=SCHEMA, **overrides)


def test_same_samples_give_byte_identical_shards(tmp_path):
    first = write_shard(config(tmp_path / "a"), "shard-000000-00.tar", [sample(i) for i in range(20)])
    second = write_shard(config(tmp_path / "b"), "shard-000000-00.tar", [sample(i) for i in range(20)])
    assert first.md5sum == second.md5sum
    assert (tmp_path / "a/shard-000000-00.tar").read_bytes() == (tmp_path / "b/shard-000000-00.tar").read_bytes()
    with tarfile.open(tmp_path / "a/shard-000000-00.tar") as archive:
        members = archive.getmembers()
    assert {m.mtime for m in members} == {0} and {m.uname for m in members} == {""}
    assert [m.name for m in members[:2]] == ["k00000.bin", "k00000.json"]
    # Plain ustar headers: one 512-byte header per member, no PAX extension header before it.
    assert not any(m.pax_headers for m in members)
    padded = sum(512 + -(-m.size // 512) * 512 for m in members)
    assert padded <= first.filesize <= padded + 10240  # + the end-of-archive blocks and record padding


def test_each_sample_reads_alone_from_its_recorded_byte_range(tmp_path):
    """tar_offset/tar_length cut one sample out of the tar; sample_sha256 verifies it; ranges tile the tar."""
    samples = [sample(i, size=100 + 300 * i) for i in range(7)]
    info = write_shard(config(tmp_path), "shard-000000-00.tar", samples)
    table = pq.read_table(tmp_path / "shard-000000-00.parquet")
    for name in ("tar_offset", "tar_length"):
        assert table.schema.field(name).type == pa.int64() and table.column(name).null_count == 0
    rows = table.to_pylist()
    assert rows[0]["tar_offset"] == 0
    for row, following in zip(rows, rows[1:]):
        assert row["tar_offset"] + row["tar_length"] == following["tar_offset"]
    assert rows[-1]["tar_offset"] + rows[-1]["tar_length"] <= info.filesize
    with open(tmp_path / "shard-000000-00.tar", "rb") as shard:
        for row, written in zip(rows, samples):
            shard.seek(row["tar_offset"])
            piece = shard.read(row["tar_length"])
            with tarfile.open(fileobj=io.BytesIO(piece)) as archive:
                names = archive.getnames()
                members = {m.name.split(".", 1)[1]: archive.extractfile(m).read() for m in archive.getmembers()}
            assert {name.split(".", 1)[0] for name in names} == {row["key"]} == {written.key}
            assert members == dict(written.fields)
            assert sample_digest(members) == row["sample_sha256"] == sample_digest({"__key__": row["key"], **members})
            members["bin"] = bytes(byte ^ 0xFF for byte in members["bin"][:10]) + members["bin"][10:]
            assert sample_digest(members) != row["sample_sha256"]


def test_readers_of_our_shards_reject_a_sample_that_differs_from_its_recorded_digest(tmp_path):
    samples = [sample(i, size=900) for i in range(4)]
    write_shard(config(tmp_path), "shard-000000-00.tar", samples)
    tar = tmp_path / "shard-000000-00.tar"
    assert [item[0] for item in read_tar_samples(str(tar), "read_shards")] == [s.key for s in samples]
    row = pq.read_table(tmp_path / "shard-000000-00.parquet").to_pylist()[2]
    data = bytearray(tar.read_bytes())
    data[row["tar_offset"] + 600:row["tar_offset"] + 1000] = bytes(400)  # inside the sample's first member
    tar.write_bytes(bytes(data))
    read = list(read_tar_samples(str(tar), "read_shards"))
    assert [item[0] for item in read if not isinstance(item, Rejection)] == [s.key for s in samples if s.key != row["key"]]
    (rejection,) = [item for item in read if isinstance(item, Rejection)]
    assert (rejection.key, rejection.reason, rejection.uri) == (row["key"], Reason.SAMPLE_DIGEST_MISMATCH,
                                                               f"{tar}#{row['key']}")
    assert row["sample_sha256"] in rejection.detail


def test_verify_shards_refuses_a_shard_that_is_not_the_one_its_manifest_lists(tmp_path):
    info = write_shard(config(tmp_path), "shard-000000-00.tar", [sample(i) for i in range(4)])
    listed = manifest([info], "demo")["shardlist"]
    verify_shards(str(tmp_path), listed)
    other = write_shard(config(tmp_path / "other"), "shard-000000-00.tar", [sample(i) for i in range(1, 5)])
    assert other.filesize == info.filesize and other.md5sum != info.md5sum
    (tmp_path / "shard-000000-00.tar").write_bytes((tmp_path / "other" / "shard-000000-00.tar").read_bytes())
    with pytest.raises(ShardMismatch, match=f"md5 {other.md5sum}, listed with {info.md5sum}"):
        verify_shards(str(tmp_path), listed)
    with open(tmp_path / "shard-000000-00.tar", "ab") as shard:
        shard.write(bytes(512))
    with pytest.raises(ShardMismatch, match=f"{info.filesize + 512} bytes, listed with {info.filesize}"):
        verify_shards(str(tmp_path), listed)
    (tmp_path / "shard-000000-00.tar").unlink()
    with pytest.raises(ShardMismatch, match="listed in the manifest but missing"):
        verify_shards(str(tmp_path), listed)


def test_the_writers_spools_are_gone_after_a_run_and_after_a_failed_bundle(tmp_path):
    with beam.Pipeline("FnApiRunner") as p:
        _ = p | beam.Create([sample(i) for i in range(30)]) | WriteShards(config(tmp_path / "run", min_shards=3))
    assert not list((tmp_path / "run").glob(f"*{PARTIAL_SUFFIX}")) and len(list((tmp_path / "run").glob("*.tar"))) == 3
    spool = _SpoolFn(config(tmp_path / "failed"))
    spool.start_bundle()
    list(spool.process(sample(0)))
    assert len(list((tmp_path / "failed").glob(f"*-spool-*{PARTIAL_SUFFIX}"))) == 1
    spool._spool._file.close()  # the next write fails, as on a lost volume
    with pytest.raises(ValueError):
        list(spool.process(sample(1)))
    assert list((tmp_path / "failed").iterdir()) == []


def test_sample_digest_is_defined_by_names_lengths_and_bytes():
    import hashlib

    expected = hashlib.sha256(b"a.png\0" + (2).to_bytes(8, "big") + b"xy" + b"json\0" + (1).to_bytes(8, "big") + b"z")
    assert sample_digest({"json": b"z", "a.png": b"xy", "__key__": "k", "__url__": "u"}) == expected.hexdigest()
    # The framing keeps a byte moving from one member to the next from giving the same digest.
    assert sample_digest({"a": b"xy", "b": b"z"}) != sample_digest({"a": b"x", "b": b"yz"})


def test_rewrite_of_identical_shard_is_skipped(tmp_path):
    cfg = config(tmp_path)
    samples = [sample(i) for i in range(5)]
    assert write_shard(cfg, "s.tar", samples).written
    stamp = os.stat(tmp_path / "s.tar").st_mtime_ns
    time.sleep(0.01)
    again = write_shard(cfg, "s.tar", samples)
    assert not again.written
    assert os.stat(tmp_path / "s.tar").st_mtime_ns == stamp
    changed = write_shard(cfg, "s.tar", samples[:4])
    assert changed.written and changed.nsamples == 4


def test_parts_respect_count_and_size_limits():
    samples = [sample(i, size=100) for i in range(10)]
    assert [len(p) for p in split_parts(samples, max_count=4, max_size=10**9)] == [4, 4, 2]
    by_size = list(split_parts(samples, max_count=100, max_size=3 * 120))
    assert all(sum(s.nbytes for s in part) <= 3 * 120 for part in by_size)
    assert sum(len(p) for p in by_size) == 10
    assert [len(p) for p in split_parts([sample(0, size=5000)], max_count=10, max_size=1024)] == [1]


def test_bucket_is_stable_and_spread():
    assert bucket_of("abc", 7) == bucket_of("abc", 7)
    counts = [0] * 8
    for i in range(8000):
        counts[bucket_of(f"key{i}", 8)] += 1
    assert min(counts) > 850 and max(counts) < 1150


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="prefix"):
        config(tmp_path, prefix="a.b")
    with pytest.raises(ValueError, match="max_count"):
        config(tmp_path, max_count=0)
    with pytest.raises(ValueError, match="whole seconds"):
        config(tmp_path, mtime=0.5)
    with pytest.raises(ValueError, match=r"lacks the columns \['key', 'shard', 'tar_offset'"):
        ShardWriterConfig(output_dir=str(tmp_path), metadata_schema=pa.schema([("x", pa.int64())]))
    with pytest.raises(ValueError, match="invalid sample key"):
        EncodedSample(key="a.b", fields={}, metadata={})


def _run_writer(tmp_path, samples, **overrides):
    cfg = config(tmp_path, **overrides)
    with beam.Pipeline(runner="FnApiRunner") as p:
        infos = p | beam.Create(samples) | WriteShards(cfg)
        infos | beam.combiners.ToList() | beam.Map(
            lambda found: (tmp_path / "infos.json").write_text(json.dumps([i.manifest_entry() for i in found]))
        )
    return json.loads((tmp_path / "infos.json").read_text())


def test_beam_writer_is_order_independent_and_reads_back(tmp_path):
    samples = [sample(i) for i in range(57)]
    infos = _run_writer(tmp_path / "a", samples, max_count=10)
    infos_reversed = _run_writer(tmp_path / "b", list(reversed(samples)), max_count=10)
    assert sorted(i["md5sum"] for i in infos) == sorted(i["md5sum"] for i in infos_reversed)
    assert sum(i["nsamples"] for i in infos) == 57 and all(i["nsamples"] <= 10 for i in infos)

    # Any WebDataset reader, through a torch DataLoader: every key once.
    import torch.utils.data

    urls = sorted(str(tmp_path / "a" / i["url"]) for i in infos)
    dataset = webdataset.WebDataset(urls, shardshuffle=False).to_tuple("__key__", "json")
    keys = [key for batch in torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=0) for key in batch[0]]
    assert sorted(keys) == [s.key for s in samples]

    # wids random access through the manifest.
    index_path = tmp_path / "a" / "shardindex.json"
    index_path.write_text(json.dumps(manifest([_info(i) for i in infos], "test")))
    ds = wids.ShardListDataset(str(index_path), transformations=[], cache_dir=str(tmp_path / "wids-cache"))
    assert len(ds) == 57
    keys_by_index = sorted(s.key for s in samples)
    for index in (0, 13, 56):
        got = ds[index]
        assert json.loads(got[".json"].read())["i"] == int(got["__key__"][1:])
    assert sorted(ds[i]["__key__"] for i in range(57)) == keys_by_index

    # Per-shard Parquet rows match the tar contents.
    table = pq.read_table(str(tmp_path / "a" / infos[0]["url"].replace(".tar", ".parquet")))
    assert table.num_rows == infos[0]["nsamples"] and set(table.column("shard").to_pylist()) == {infos[0]["url"]}


def _info(entry):
    from transforms.io.shards import ShardInfo

    return ShardInfo(written=True, **entry)


def test_killed_writer_leaves_no_partial_tar(tmp_path):
    """SIGKILL a writer mid-shard: no .tar appears; a re-run publishes the whole shard."""
    script = textwrap.dedent(
        f"""
        import sys, time, pyarrow as pa
        sys.path.insert(0, {str(pathlib.Path(__file__).resolve().parents[2])!r})
        import transforms.io.files as files
        from transforms.io.shards import EncodedSample, ShardWriterConfig, write_shard
        real_create = files.FileSystems.create
        class Slow:
            def __init__(self, inner): self.inner = inner
            def write(self, data):
                for i in range(0, len(data), 4096):
                    self.inner.write(data[i:i + 4096]); self.inner.flush(); time.sleep(0.05)
            def __enter__(self): return self
            def __exit__(self, *exc): self.inner.close()
        files.FileSystems.create = lambda *a, **k: Slow(real_create(*a, **k))
        from schemas.sample import LOCATION_COLUMNS
        schema = pa.schema([pa.field("key", pa.string()), *LOCATION_COLUMNS])
        cfg = ShardWriterConfig(output_dir={str(tmp_path)!r}, metadata_schema=schema)
        samples = [EncodedSample(key=f"k{{i}}", fields={{"bin": b"x" * 20000}}, metadata={{}}) for i in range(20)]
        write_shard(cfg, "shard-000000-00.tar", samples)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.stat().st_size > 0 for p in tmp_path.glob(f"*{PARTIAL_SUFFIX}")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(tmp_path.glob(f"*{PARTIAL_SUFFIX}")), "the writer never started its partial file"
    assert not list(tmp_path.glob("*.tar"))
    assert remove_partials(str(tmp_path)) == 1
    cfg = ShardWriterConfig(output_dir=str(tmp_path), metadata_schema=pa.schema([pa.field("key", pa.string()), *LOCATION_COLUMNS]))
    samples = [EncodedSample(key=f"k{i}", fields={"bin": b"x" * 20000}, metadata={}) for i in range(20)]
    info = write_shard(cfg, "shard-000000-00.tar", samples)
    with tarfile.open(tmp_path / "shard-000000-00.tar") as archive:
        assert len(archive.getmembers()) == 20 == info.nsamples


def test_publish_replaces_atomically(tmp_path):
    target = tmp_path / "f.json"
    publish(str(target), b"old")
    publish(str(target), b"new")
    assert target.read_bytes() == b"new" and not list(tmp_path.glob(f"*{PARTIAL_SUFFIX}"))


def test_with_retries_retries_oserror_then_raises():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise OSError("transient")
        return "ok"

    assert with_retries(flaky, base_delay_s=0) == "ok" and len(calls) == 3
    with pytest.raises(OSError):
        with_retries(lambda: (_ for _ in ()).throw(OSError("down")), attempts=2, base_delay_s=0)


@pytest.mark.parametrize("count, shards", [(3, 3), (8, 8), (50, 8), (900, 8)])
def test_small_run_writes_min_shards(tmp_path, count, shards):
    infos = _run_writer(tmp_path, [sample(i, size=10) for i in range(count)])
    assert len(infos) == shards and sum(i["nsamples"] for i in infos) == count
    if count < 800:  # one bucket: even parts, not one full shard and crumbs
        sizes = sorted(i["nsamples"] for i in infos)
        assert sizes[-1] - sizes[0] <= 1


def test_min_shards_feed_every_dataloader_worker(tmp_path):
    """DataLoader(num_workers=4) over a 10-sample run: one shard starved three workers (ValueError)."""
    import torch.utils.data

    samples = [sample(i) for i in range(10)]
    infos = _run_writer(tmp_path, samples)
    urls = sorted(str(tmp_path / i["url"]) for i in infos)
    dataset = webdataset.WebDataset(urls, shardshuffle=False).to_tuple("__key__")
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=4)
    assert sorted(key for (key,) in loader) == [s.key for s in samples]


def test_min_shards_is_validated(tmp_path):
    with pytest.raises(ValueError, match="min_shards"):
        config(tmp_path, min_shards=0)
    with pytest.raises(ValueError, match="min_shards"):
        config(tmp_path, min_shards=101)
