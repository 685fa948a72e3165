"""Every metadata row locates its sample in its tar and carries the digest it was written with."""
import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import schemas.sample
from jobs import ingest
from schemas.sample import LOCATION_COLUMNS, sample_digest
from transforms.io.shards import ShardWriterConfig

METADATA_SCHEMAS = sorted(name for name in dir(schemas.sample) if name.endswith("_METADATA_SCHEMA"))


@pytest.mark.parametrize("name", METADATA_SCHEMAS)
def test_every_kind_of_output_records_location_and_digest(name, tmp_path):
    schema = getattr(schemas.sample, name)
    for column in LOCATION_COLUMNS:
        assert schema.field(column.name).type == column.type and not schema.field(column.name).nullable
    ShardWriterConfig(output_dir=str(tmp_path), metadata_schema=schema)  # the writer accepts it


def test_source_shards_read_sample_by_sample_from_byte_ranges(tmp_path):
    output = tmp_path / "samples"
    ingest.run(["--output", str(output)])
    rows = [row for path in sorted(output.glob("shard-*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert len(rows) >= 10
    for row in rows:
        with open(output / row["shard"], "rb") as shard:
            shard.seek(row["tar_offset"])
            piece = shard.read(row["tar_length"])
        with tarfile.open(fileobj=io.BytesIO(piece)) as archive:
            members = {member.name.split(".", 1)[1]: archive.extractfile(member).read() for member in archive}
            assert {member.split(".", 1)[0] for member in archive.getnames()} == {row["key"]}
        assert sample_digest(members) == row["sample_sha256"]
    assert pa.types.is_int64(pq.read_schema(output / rows[0]["shard"].replace(".tar", ".parquet")).field("tar_offset").type)
