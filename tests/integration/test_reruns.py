"""Re-running into a folder that holds a finished run: refused, or replaced so no reader takes a mix."""
import shutil

import pytest
import yaml

import pipeline.finalize
from jobs import ingest
from pipeline.build import load_candidate_set
from pipeline.finalize import STATS, check_ledgers, holds_finished_run
from pipeline.testing import write_candidate_set
from transforms.io.shards import ShardMismatch


def _argv(samples_dir, output, *extra):
    return ["--input", str(samples_dir / "images"), "--output", str(output), *extra]


@pytest.fixture()
def finished(samples_dir, tmp_path):
    output = tmp_path / "run"
    ingest.run(_argv(samples_dir, output))
    return output


def _files(folder):
    return {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in folder.iterdir() if path.is_file()}


def test_a_finished_run_in_output_is_refused_in_one_line_before_any_work(samples_dir, finished, caplog):
    before = _files(finished)
    assert ingest.main(_argv(samples_dir, finished, "--jpeg_quality", "60")) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert errors == [f"{finished} already holds a finished run ({STATS}); pass --overwrite to replace it"]
    assert _files(finished) == before


def test_overwrite_replaces_the_run_and_is_not_recorded_in_its_config(samples_dir, finished):
    first = (finished / "lineage.json").read_text()
    stats = ingest.run(_argv(samples_dir, finished, "--jpeg_quality", "60", "--overwrite"))
    assert stats["ledger"]["closed"] and holds_finished_run(str(finished))
    assert "overwrite" not in yaml.safe_load((finished / "config.yaml").read_text())
    assert (finished / "lineage.json").read_text() != first


def test_a_replacement_killed_after_its_shards_leaves_a_folder_every_reader_refuses(samples_dir, finished, monkeypatch):
    """The issue's mix: new shards and manifest beside the old stats and lineage; it must not read as finished."""
    def killed(*_):
        raise RuntimeError("killed after the shards and the manifest were replaced")

    monkeypatch.setattr(pipeline.finalize, "content_digest", killed)
    with pytest.raises(Exception, match="killed after"):
        ingest.run(_argv(samples_dir, finished, "--jpeg_quality", "60", "--overwrite"))
    monkeypatch.undo()
    assert not holds_finished_run(str(finished))
    with pytest.raises(Exception):
        check_ledgers(str(finished))
    with pytest.raises(ValueError, match=f"not a finished bootstrap run \\(no {STATS}\\)"):
        load_candidate_set(str(finished))
    # An unfinished folder is resumed without --overwrite and ends finished with the new configuration.
    stats = ingest.run(_argv(samples_dir, finished, "--jpeg_quality", "60"))
    assert stats["ledger"]["closed"] and "jpeg_quality: 60" in (finished / "config.yaml").read_text()


def test_build_refuses_a_folder_whose_shards_are_not_the_ones_its_manifest_lists(tmp_path):
    """A killed re-run's mix: the old stats.json and manifest beside shards the re-run replaced."""
    finished_run = write_candidate_set(tmp_path / "run", 6, seed=1)
    rerun = write_candidate_set(tmp_path / "rerun", 6, seed=2)
    for shard in rerun.glob("shard-*"):
        shutil.copy(shard, finished_run / shard.name)
    with pytest.raises(ShardMismatch, match="does not match the manifest"):
        load_candidate_set(str(finished_run))
