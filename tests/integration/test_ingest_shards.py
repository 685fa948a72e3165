"""``ingest --shards`` reading our own shards back: checked against their run's manifest first, as build does."""
from __future__ import annotations

import logging
import pathlib
import shutil

import pytest

from jobs import cli
from pipeline.finalize import read_stats
from tests.integration.test_build import _zero_bytes_of_a_src_jpg


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> pathlib.Path:
    output = tmp_path_factory.mktemp("ingest") / "sources"
    assert cli.main(["ingest", "--output", str(output)]) == 0
    return output


def _refused(argv: list[str], caplog) -> list[str]:
    with caplog.at_level(logging.ERROR):
        assert cli.main(["ingest", *argv]) == 2
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def test_a_run_folder_reads_the_shards_its_manifest_lists(sources, tmp_path):
    """Before: the folder itself was the one input, rejected as not_a_regular_file, and the run exited 0."""
    assert cli.main(["ingest", "--shards", str(sources), "--output", str(tmp_path / "again")]) == 0
    ledger = read_stats(str(tmp_path / "again"))["ledger"]
    assert ledger["written"] == read_stats(str(sources))["ledger"]["written"] > 0 and not ledger["rejected"]


def test_a_shard_changed_since_written_is_refused_in_one_line(sources, tmp_path, caplog):
    """Before: the changed shard was read (only the damaged sample was rejected) and the run exited 0."""
    damaged = tmp_path / "damaged"
    shutil.copytree(sources, damaged)
    shard = next(damaged.glob("shard-*.tar"))
    _zero_bytes_of_a_src_jpg(shard)
    output = tmp_path / "out"
    for shards in (str(damaged / "shard-*.tar"), str(damaged), str(shard)):
        caplog.clear()
        [error] = _refused(["--shards", shards, "--output", str(output)], caplog)
        assert f"--shards: {shard} does not match the manifest: md5" in error
    assert not output.exists()


def test_a_shard_its_folders_manifest_does_not_list_is_refused(sources, tmp_path, caplog):
    """A killed re-run's shard beside the manifest of the run before: reading both would mix two runs."""
    mixed = tmp_path / "mixed"
    shutil.copytree(sources, mixed)
    stray = mixed / "shard-000009-00.tar"
    shutil.copy(next(mixed.glob("shard-*.tar")), stray)
    [error] = _refused(["--shards", str(mixed / "*.tar"), "--output", str(tmp_path / "out")], caplog)
    assert error.endswith(f"--shards: {stray} is not listed in shardindex.json beside it (left by another run): "
                          "name the run's folder to read the shards it lists")
