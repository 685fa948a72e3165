"""What a ``--where`` pull run again checks of the tars it wrote: every sample, one at a time."""
from __future__ import annotations

import os
import pathlib
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.pull import _TAR_END, _tar_holds
from schemas.sample import LOCATION_COLUMNS
from transforms.io.shards import EncodedSample, ShardWriterConfig, write_shard

SAMPLE_BYTES = 2 << 20
SAMPLES = 6


@pytest.fixture(scope="module")
def pulled(tmp_path_factory) -> tuple[pathlib.Path, list[dict]]:
    """A tar as a ``--where`` pull writes it (the samples' byte ranges, then the end blocks) and its rows."""
    folder = tmp_path_factory.mktemp("pulled")
    config = ShardWriterConfig(output_dir=str(folder), metadata_schema=pa.schema(
        [pa.field("key", pa.string(), nullable=False), *LOCATION_COLUMNS]))
    samples = [EncodedSample(f"s{i}", {"bin": os.urandom(SAMPLE_BYTES), "json": b"{}"}, {}) for i in range(SAMPLES)]
    shard = write_shard(config, "shard-000000-00.tar", samples)
    rows = pq.read_table(folder / "shard-000000-00.parquet").to_pylist()
    published = (folder / shard.url).read_bytes()
    tar = folder / "pulled.tar"
    tar.write_bytes(b"".join(published[r["tar_offset"]:r["tar_offset"] + r["tar_length"]] for r in rows) + _TAR_END)
    return tar, rows


def test_a_pulled_tar_is_verified_a_sample_at_a_time_not_read_whole(pulled):
    tar, rows = pulled
    tracemalloc.start()
    try:
        assert _tar_holds(str(tar), rows)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * SAMPLE_BYTES < tar.stat().st_size / 2


def test_a_flipped_byte_a_missing_sample_or_extra_bytes_fail_the_check(pulled, tmp_path):
    tar, rows = pulled
    data = tar.read_bytes()
    flipped = bytearray(data)
    flipped[rows[0]["tar_length"] * 4 + 700] ^= 1
    cases = {"flipped": bytes(flipped), "extra": data + b"\0" * 512, "short": data[:-512]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        assert not _tar_holds(str(tmp_path / name), rows), name
    assert not _tar_holds(str(tar), rows[:-1]) and not _tar_holds(str(tar), rows[1:] + rows[:1])
