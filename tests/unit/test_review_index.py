"""The review index against the shards themselves: members read by offset are the tar's bytes, and each
object's queue facts agree with plain threshold comparisons on its stored scores."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib

import pytest
import webdataset

from jobs.review import dataset_source
from pipeline.testing import write_candidate_set
from review.index import DatasetSource, open_index, slack
from schemas.sample import Field
from transforms.thresholds import Thresholds

HIGHER = {"ssim_outside", "change_inside"}
OBJECTS = 24
#: Thresholds on the scores synthetic sets have (pinned: the build defaults may add scores they lack).
BOUNDS = {"ssim_outside": 0.95, "change_inside": 0.05, "redetect_score": 0.3, "seam": 0.45}


def passes(scores: dict, bounds: dict) -> bool:
    return all(scores[n] >= b if n in HIGHER else scores[n] <= b for n, b in bounds.items())


@pytest.fixture(scope="module")
def candidates(tmp_path_factory) -> pathlib.Path:
    return write_candidate_set(tmp_path_factory.mktemp("set") / "demo", OBJECTS, seed=3, max_count=10)


@pytest.fixture(scope="module")
def index(candidates, tmp_path_factory):
    source = dataclasses.replace(dataset_source(str(candidates), {}), thresholds=Thresholds(BOUNDS))
    index = open_index(source, str(tmp_path_factory.mktemp("cache")))
    yield index
    index.close()


def shard_samples(folder: pathlib.Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in webdataset.WebDataset(sorted(map(str, folder.glob("*.tar"))), shardshuffle=False)}


def test_members_read_by_offset_are_the_tar_members(candidates, index):
    samples = shard_samples(candidates)
    assert index.count == len(samples) == OBJECTS
    assert len(index.shard_paths) == 3  # max_count 10: the index spans shards
    for key, sample in samples.items():
        indexed = index.sample(key)
        members = {name for name in sample if not name.startswith("__")}
        assert set(indexed.members) == members
        for name in members:
            assert index.read(indexed, name) == sample[name]


def test_queue_facts_agree_with_plain_threshold_comparisons(candidates, index):
    for key, sample in shard_samples(candidates).items():
        meta = json.loads(sample[Field.JSON])
        passing = [c["index"] for c in meta["candidates"] if passes(c["scores"], BOUNDS)]
        indexed = index.sample(key)
        assert indexed.passed == bool(passing)
        assert (indexed.chosen in passing) if passing else indexed.chosen is None
        assert (indexed.margin >= 0) == indexed.passed
        assert indexed.label == "blob" and (indexed.reason is None) == indexed.passed
    assert 0 < sum(index.sample(k).passed for k in shard_samples(candidates)) < OBJECTS


def test_slack_is_in_score_deviations_and_missing_scores_fail():
    thresholds = Thresholds({"seam": 0.45, "ssim_outside": 0.95})
    scales = {"seam": 0.1, "ssim_outside": 0.01}
    assert slack({"seam": 0.40, "ssim_outside": 0.97}, thresholds, scales) == pytest.approx(0.5)
    assert slack({"seam": 0.40, "ssim_outside": 0.94}, thresholds, scales) == pytest.approx(-1.0)
    assert slack({"seam": None, "ssim_outside": 0.99}, thresholds, scales) == float("-inf")


def test_the_index_is_built_once_and_again_for_other_thresholds(candidates, tmp_path):
    first = open_index(dataset_source(str(candidates), {}), str(tmp_path))
    again = open_index(dataset_source(str(candidates), {}), str(tmp_path))
    other = open_index(dataset_source(str(candidates), {"seam": 0.3}), str(tmp_path))
    assert first.path == again.path != other.path
    assert os.path.getmtime(first.path) == os.path.getmtime(again.path)
    assert other.thresholds.bounds["seam"] == 0.3
    assert not list(tmp_path.glob("*.partial-*"))
    for index in (first, again, other):
        index.close()


def test_a_manifest_naming_a_shard_outside_the_folder_is_refused(candidates, tmp_path):
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "shardindex.json").write_text(json.dumps(
        {"__kind__": "wids-shard-index-v1", "shardlist": [{"url": "../demo/shard-000000-00.tar"}]}))
    source = DatasetSource(str(folder), "shardindex.json", "evil@0", Thresholds())
    with pytest.raises(ValueError, match="not a path inside"):
        source.shards()


def test_a_folder_that_is_no_finished_run_fails_in_one_line(tmp_path):
    with pytest.raises(ValueError, match="no stats.json"):
        dataset_source(str(tmp_path), {})


def test_a_sample_that_differs_from_its_recorded_digest_is_left_out_and_counted(tmp_path, caplog):
    """Before: the index read the tar headers only, so a sample damaged behind its manifest was reviewed."""
    from tests.integration.test_review_server import damage_behind_the_manifest
    folder = write_candidate_set(tmp_path / "demo", 6, seed=5)
    damaged = damage_behind_the_manifest(folder)
    with caplog.at_level(logging.WARNING):
        index = open_index(dataset_source(str(folder), {}), str(tmp_path / "cache"))
    try:
        assert index.sample(damaged) is None and index.count == 5 and index.corrupt == 1
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert f"sample {damaged!r} left out: its bytes are not those written (sample_digest_mismatch" in warning
    finally:
        index.close()
