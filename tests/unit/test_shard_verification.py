"""Readers of a run's folder refuse shards that are not the ones its manifest lists (issue 19: 400 zeroed bytes)."""
import logging

import pytest

from jobs import evaluate as evaluate_job
from jobs import sheet as sheet_job
from pipeline.testing import write_candidate_set
from transforms.io.shards import ShardMismatch


def _damaged_set(tmp_path):
    folder = write_candidate_set(tmp_path / "demo", 2, seed=1)
    shard = next(folder.glob("shard-*.tar"))
    with open(shard, "r+b") as file:
        file.seek(1536)
        file.write(bytes(400))  # size unchanged
    return folder, shard


def test_sheet_refuses_a_folder_whose_shards_differ_from_its_manifest_in_one_line(tmp_path, caplog):
    folder, shard = _damaged_set(tmp_path)
    with caplog.at_level(logging.ERROR):
        assert sheet_job.main(["--candidates", str(folder), "--output", str(tmp_path / "sheet.jpg")]) == 2
    assert len(caplog.records) == 1 and f"{shard} does not match the manifest: md5" in caplog.records[0].getMessage()
    assert not (tmp_path / "sheet.jpg").exists()


def test_evaluate_refuses_composites_whose_shards_differ_from_their_manifest(tmp_path):
    folder, shard = _damaged_set(tmp_path)
    (folder / "stats.json").write_text('{"job": "composites"}')
    with pytest.raises(ShardMismatch, match="does not match the manifest"):
        evaluate_job.composite_shards(str(folder))
