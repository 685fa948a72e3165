"""``counterfactory review`` usage mistakes fail in one logged line, before any index is built or port bound."""
import logging

import pytest

from jobs import review as review_job
from pipeline.testing import write_candidate_set
from review.app import ReviewConfig


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    return write_candidate_set(tmp_path_factory.mktemp("set") / "demo", 2, seed=1)


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/nowhere"], "no stats.json"),
    (["{set}", "--db", "{tmp}/missing/review.sqlite"], "does not exist"),
    (["{set}", "--db", "{tmp}"], "is a folder"),
    (["{set}", "--port", "70000"], "--port must be in 0..65535"),
])
def test_a_usage_mistake_is_one_line_and_exit_2(candidates, tmp_path, caplog, argv, message):
    argv = [a.format(tmp=tmp_path, set=candidates) for a in argv]
    with caplog.at_level(logging.ERROR):
        assert review_job.main(argv) == 2
    assert len(caplog.records) == 1 and message in caplog.records[0].getMessage()
    assert not list(tmp_path.glob("*.cache"))


def test_export_needs_an_existing_database(tmp_path, caplog):
    with caplog.at_level(logging.ERROR):
        assert review_job.main(["export", "--db", str(tmp_path / "none.sqlite"), "--output", str(tmp_path / "d")]) == 2
    assert "no decisions database" in caplog.text and not (tmp_path / "d").exists()


def test_a_build_folder_of_another_job_is_refused(tmp_path):
    (tmp_path / "stats.json").write_text('{"job": "ingest"}')
    with pytest.raises(ValueError, match="review reads bootstrap or evaluate or build outputs"):
        review_job.dataset_source(str(tmp_path), {})


def test_an_evaluation_is_a_candidate_set_to_review(candidates, tmp_path):
    """``evaluate`` writes a candidate set whose removals have a known truth: reviewers calibrate on it."""
    for name in ("shardindex.json", "lineage.json", *(p.name for p in candidates.glob("shard-*"))):
        (tmp_path / name).write_bytes((candidates / name).read_bytes())
    (tmp_path / "stats.json").write_text('{"job": "evaluate"}')
    source = review_job.dataset_source(str(tmp_path), {})
    assert source.thresholds.bounds["quality"] == 0.5


def test_the_cache_sits_beside_the_database(tmp_path):
    assert ReviewConfig(db=str(tmp_path / "qa.sqlite")).cache_dir == str(tmp_path / "qa.cache")


def test_a_dataset_whose_shards_differ_from_its_manifest_is_refused_in_one_line(tmp_path, caplog):
    folder = write_candidate_set(tmp_path / "demo", 2, seed=1)
    shard = next(folder.glob("shard-*.tar"))
    with open(shard, "r+b") as file:
        file.seek(1536)
        file.write(bytes(400))  # the damage: zeroed bytes, size unchanged
    with caplog.at_level(logging.ERROR):
        assert review_job.main([str(folder), "--db", str(tmp_path / "review.sqlite")]) == 2
    assert len(caplog.records) == 1 and f"{shard} does not match the manifest: md5" in caplog.records[0].getMessage()
