"""Options and preflight (issue 19): a run that could only fail or do the wrong thing stops before any work.

Each case is one of the issue's reproductions: the command exits 2 with one line naming
the option, writes nothing, and resolves no model.
"""
from __future__ import annotations

import json
import logging
import os
import pathlib
import shutil

import pytest

import jobs.common
from jobs import cli
from pipeline.testing import write_candidate_set

SAMPLE_IMAGES = pathlib.Path(jobs.common.SAMPLE_IMAGES)


@pytest.fixture
def no_models(monkeypatch):
    """Fail the test if any model is resolved (fetched or read from the cache)."""
    def refuse(ref, *args, **kwargs):
        raise AssertionError(f"model {ref!r} resolved before preflight refused the run")

    monkeypatch.setattr(jobs.common, "resolve_model", refuse)


@pytest.fixture
def images(tmp_path) -> pathlib.Path:
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sorted(SAMPLE_IMAGES.glob("*.jpg"))[:2]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="module")
def candidates(tmp_path_factory) -> pathlib.Path:
    return write_candidate_set(tmp_path_factory.mktemp("candidates") / "set", 3, seed=3)


def refused(argv: list[str], caplog) -> str:
    """Run the command; assert it exits 2 with one error line, and return that line."""
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert cli.main(argv) == 2
    lines = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_misspelled_input_flag_ingests_nothing(images, tmp_path, caplog):
    line = refused(["ingest", "--inptu", str(images), "--output", str(tmp_path / "o")], caplog)
    assert line == "unknown option --inptu (did you mean --input?)"
    assert not (tmp_path / "o").exists()


def test_a_misspelled_build_flag_builds_no_version(candidates, tmp_path, caplog):
    argv = ["build", f"--candidates={candidates}", f"--output={tmp_path}", "--name=demo", "--version=v2"]
    assert refused([*argv, "--treshold", "{seam: 0.3}"], caplog) == \
        "unknown option --treshold (did you mean --thresholds?)"
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("thresholds, message", [
    ("{saem: 0.3}", "--thresholds: unknown score 'saem' in thresholds (did you mean seam?)"),
    ("{seam: -0.5}", "--thresholds: threshold seam -0.5 is outside the score's range [0, 1]: as a maximum it keeps "
                     "nothing"),
    ("{quality: 1.5}", "--thresholds: threshold quality 1.5 is outside the score's range [0, 1]: as a minimum it "
                       "keeps nothing"),
    ("{hole_depth: 0.7}", "--thresholds: threshold hole_depth 0.7 is outside the score's range [0, 0.5]: as a "
                          "maximum it keeps everything (null drops a threshold)"),
])
def test_impossible_thresholds_are_refused_by_build_and_thresholds(candidates, tmp_path, caplog, thresholds, message):
    argv = [f"--candidates={candidates}", f"--thresholds={thresholds}"]
    assert refused(["build", *argv, f"--output={tmp_path}", "--name=demo", "--version=v1"], caplog) == message
    assert not (tmp_path / "demo").exists()
    assert refused(["thresholds", *argv, "--sweep=seam=0.3:0.5:0.1"], caplog) == message


@pytest.mark.parametrize("sweep, message", [
    ("seam=-0.5:0.5:0.1", "threshold seam -0.5 is outside the score's range [0, 1]"),
    ("seam=0.6:0.3:0.05", "--sweep needs finite lo <= hi"),  # min > max
])
def test_impossible_sweeps_are_refused(candidates, caplog, sweep, message):
    assert message in refused(["thresholds", f"--candidates={candidates}", f"--sweep={sweep}"], caplog)


def test_unknown_settings_of_mapping_options_are_refused(images, tmp_path, caplog, no_models):
    line = refused(["bootstrap", "--input", str(images), "--output", str(tmp_path / "o"),
                    "--detector_options", "{scroe_threshold: 1}"], caplog)
    assert line.startswith("--detector_options: unknown settings ['scroe_threshold']")


def test_unknown_ranking_weights_are_refused(candidates, tmp_path, caplog):
    line = refused(["build", f"--candidates={candidates}", f"--output={tmp_path}", "--name=demo", "--version=v1",
                    "--ranking={saem: 2}"], caplog)
    assert line == "--ranking: unknown score 'saem' in ranking weights (did you mean seam?)"


def test_a_wrong_device_is_blamed_on_device(images, tmp_path, caplog, no_models):
    line = refused(["bootstrap", "--input", str(images), "--output", str(tmp_path / "o"), "--device", "tpu9"], caplog)
    assert line == "--device: device must be 'cpu', 'cuda' or 'cuda:N', got 'tpu9'"


def test_an_output_that_is_a_file_is_refused_before_any_model(images, tmp_path, caplog, no_models):
    output = tmp_path / "out.tar"
    output.write_bytes(b"keep me")
    assert refused(["bootstrap", "--input", str(images), "--output", str(output)], caplog) == \
        f"--output {output} is a file, not a folder"
    assert refused(["ingest", "--input", str(images), "--output", str(output / "sub")], caplog) == \
        f"--output {output / 'sub'} is below {output}, which is a file, not a folder"
    assert output.read_bytes() == b"keep me"


def test_an_output_inside_or_equal_to_an_input_folder_is_refused(images, tmp_path, caplog, no_models):
    for output in (images / "out", images):
        line = refused(["bootstrap", "--input", str(images), "--output", str(output)], caplog)
        assert line.startswith(f"--output {output} is {'inside ' if output != images else ''}the input folder "
                               f"--input {images}: the run would read what it writes")
    link = tmp_path / "elsewhere"
    os.symlink(images, link)  # the same folder under another name
    assert "is inside the input folder" in refused(
        ["ingest", "--input", f"{tmp_path}/images/*.jpg", "--output", str(link / "out")], caplog)
    assert not (images / "out").exists()


def test_an_input_folder_without_files_is_refused(tmp_path, caplog, no_models):
    empty = tmp_path / "empty"
    (empty / "a" / "b").mkdir(parents=True)  # folders only
    assert refused(["ingest", "--input", str(empty), "--output", str(tmp_path / "o")], caplog) == \
        f"--input {empty} holds no files"
    assert refused(["bootstrap", "--input", str(empty), "--output", str(tmp_path / "o")], caplog) == \
        f"--input {empty} holds no files"
    assert not (tmp_path / "o").exists()


@pytest.mark.timeout(60)  # before: the reader blocked in open() on the FIFO, forever
def test_an_option_file_that_is_no_regular_file_is_refused_in_one_line(images, candidates, tmp_path, caplog,
                                                                       no_models):
    fifo = tmp_path / "boxes.json"
    os.mkfifo(fifo)
    output = tmp_path / "o"
    assert refused(["ingest", "--annotations", str(fifo), "--images_root", str(images), "--output", str(output)],
                   caplog) == f"--annotations {fifo} is a FIFO (not_a_regular_file): only a regular file is read"
    assert refused(["bootstrap", "--annotations", str(fifo), "--output", str(output)], caplog).startswith(
        f"--annotations {fifo} is a FIFO")
    assert refused(["build", f"--candidates={candidates}", f"--decisions={fifo}", f"--output={output}",
                    "--name=demo", "--version=v1"], caplog).startswith(f"--decisions {fifo} is a FIFO")
    coco = tmp_path / "coco.json"
    coco.write_text("{}")
    assert refused(["ingest", "--annotations", str(coco), "--class_descriptions", str(fifo), "--output",
                    str(output)], caplog).startswith(f"--class_descriptions {fifo} is a FIFO")
    dangling = tmp_path / "gone.json"
    os.symlink(tmp_path / "nowhere.json", dangling)
    assert refused(["ingest", "--annotations", str(dangling), "--output", str(output)], caplog) == (
        f"--annotations {dangling} is a link to '{tmp_path / 'nowhere.json'}', which does not exist "
        "(dangling_symlink): only a regular file is read")
    assert not output.exists()


def test_a_missing_annotation_file_is_refused_in_one_line(tmp_path, caplog, no_models):
    missing = tmp_path / "missing.json"
    for command in ("ingest", "bootstrap"):
        assert refused([command, "--annotations", str(missing), "--output", str(tmp_path / "o")], caplog) == \
            f"--annotations {str(missing)!r} matches no file"
    assert not (tmp_path / "o").exists()


def test_a_finished_run_in_output_is_refused_before_any_model(images, tmp_path, caplog, no_models):
    output = tmp_path / "o"
    output.mkdir()
    (output / "stats.json").write_text(json.dumps({"job": "bootstrap"}))
    line = refused(["bootstrap", "--input", str(images), "--output", str(output)], caplog)
    assert line == f"{output} already holds a finished run (stats.json); pass --overwrite to replace it"


def test_an_empty_build_is_recorded_but_does_not_become_latest(candidates, tmp_path, caplog):
    argv = [f"--candidates={candidates}", f"--output={tmp_path}", "--name=demo"]
    everything = "--thresholds={ssim_outside: null, change_inside: null, redetect_score: null, seam: null, quality: null}"
    nothing = "--thresholds={quality: 1.0, ssim_outside: 1.0}"
    assert cli.main(["build", *argv, "--version=v1", everything]) == 0
    with caplog.at_level(logging.WARNING):
        assert cli.main(["build", *argv, "--version=v2", nothing]) == 0
    index = json.loads((tmp_path / "demo" / "versions.json").read_text())
    assert [(v["version"], v["samples"] > 0) for v in index["versions"]] == [("v1", True), ("v2", False)]
    assert index["latest"] == "v1"
    assert "demo-v2 keeps no sample: it is recorded and listed, but latest stays v1" in caplog.text
    repository = tmp_path / "repository"
    for version in ("v1", "v2"):  # the published index follows the same rule
        assert cli.main(["publish", str(tmp_path / "demo" / version), "--to", str(repository)]) == 0
    assert json.loads((repository / "demo" / "versions.json").read_text())["latest"] == "v1"
    assert cli.main(["build", *argv, "--version=v3", nothing, "--allow_empty"]) == 0
    index = json.loads((tmp_path / "demo" / "versions.json").read_text())
    assert index["latest"] == "v3" and index["versions"][2]["allow_empty"] is True


def test_a_folder_given_where_a_file_is_read_is_refused_in_one_line(candidates, tmp_path, caplog, no_models):
    folder = tmp_path / "boxes"
    folder.mkdir()
    (folder / "coco.json").write_text("{}")  # before: a traceback from the annotation reader, after the pipeline began
    output = tmp_path / "o"
    for command in ("ingest", "bootstrap"):
        assert refused([command, "--annotations", str(folder), "--output", str(output)], caplog) == \
            f"--annotations {folder} is a folder: name the file (or a glob of files)"
    assert refused(["build", f"--candidates={candidates}", f"--decisions={folder}", f"--output={output}",
                    "--name=demo", "--version=v1"], caplog) == \
        f"--decisions {folder} is a folder: name the file (or a glob of files)"
    assert not output.exists()
