"""The table a run ends with, from its stats.json, and the run.log a CLI run leaves in its output folder."""
import logging
import os
import posixpath

from apache_beam.io.localfilesystem import LocalFileSystem

from jobs.console import RunConsole, run_started
from jobs.summary import human_bytes, summary_rows, summary_table, top_reasons

STATS = {
    "job": "bootstrap",
    "dataset": "candidates",
    "ledger": {"inputs": 120, "written": 80, "rejected_total": 38, "dead_letters_total": 2,
               "rejected": {"no_object_kept": 20, "corrupt_image": 9, "duplicate_content": 4, "empty_file": 2,
                            "image_too_small": 1, "not_an_image": 1, "truncated_image": 1},
               "dead_letters": {"segment": 2}},
    "objects_ledger": {"inputs": 300, "written": 150, "rejected_total": 150, "dead_letters_total": 0,
                       "rejected": {"mask_too_small": 100, "low_score": 50}, "dead_letters": {}},
    "annotated_objects_ledger": {"inputs": 0, "written": 0, "rejected_total": 0, "dead_letters_total": 0,
                                 "rejected": {}, "dead_letters": {}},
    "shards": {"count": 8, "samples": 150, "bytes": 123_456_789},
}


def test_top_reasons_name_the_most_frequent_and_sum_the_rest():
    assert top_reasons({"a": 1, "b": 5, "c": 1}, limit=2) == "b 5, a 1, others 1"
    assert top_reasons({}) == ""


def test_human_bytes_in_decimal_units():
    sizes = (999, 1000, 1_116_160, 123_456_789_000)
    assert [human_bytes(n) for n in sizes] == ["999 B", "1.0 kB", "1.1 MB", "123.5 GB"]


def test_every_ledger_is_a_block_of_rows_and_the_figures_are_the_stats():
    rows = {what: (figure, detail) for what, figure, detail in summary_rows(STATS, "gs://b/candidates", 60.0,
                                                                            ["report.html"])}
    assert rows["inputs"] == ("120", "")
    assert rows["rejected"] == ("38", "no_object_kept 20, corrupt_image 9, duplicate_content 4, empty_file 2, "
                                      "image_too_small 1, others 2")
    assert rows["dead letters"] == ("2", "segment 2")
    assert rows["rejected (objects)"] == ("150", "mask_too_small 100, low_score 50")
    assert not any("annotated_objects" in what for what in rows)  # nothing entered it
    assert rows["throughput"][0] == "2.00/s"
    assert rows["output"] == ("123.5 MB", "8 shards, 150 samples")
    assert rows["elapsed"] == ("1 min 0 s", "")
    assert rows["report"] == ("", "gs://b/candidates/report.html")
    assert rows["log"] == ("", "gs://b/candidates/run.log")


def test_the_table_is_aligned_under_a_title():
    lines = summary_table(STATS, "/data/candidates", 12.5).splitlines()
    assert lines[0] == "bootstrap candidates finished" and set(lines[1]) == {"-"}
    assert lines[2].startswith("inputs ") and lines[2].index("120") + 3 == lines[3].index("80") + 2


def test_the_run_log_starts_with_what_was_logged_before_the_output_was_known(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    log = logging.getLogger("tests.summary")
    with RunConsole() as console:
        log.info("before the output folder is known")
        run_started(str(tmp_path / "out"))
        log.info("during the run")
        console.finished()  # no stats.json: the run did not finish, no table
    log.info("after the run")
    lines = (tmp_path / "out" / "run.log").read_text().splitlines()
    assert [line.split(": ", 1)[1] for line in lines] == ["before the output folder is known", "during the run"]
    assert all(" INFO tests.summary: " in line for line in lines)


def test_a_failed_run_keeps_its_traceback_in_the_log(tmp_path):
    try:
        with RunConsole():
            run_started(str(tmp_path))
            raise RuntimeError("worker lost")
    except RuntimeError:
        pass
    text = (tmp_path / "run.log").read_text()
    assert "Traceback" in text and "RuntimeError: worker lost" in text


def test_without_a_cli_run_nothing_is_written(tmp_path):
    run_started(str(tmp_path))
    assert not (tmp_path / "run.log").exists()


def test_a_full_disk_stops_the_log_file_not_the_run(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO)
    (tmp_path / "run.log").symlink_to("/dev/full")  # every write: ENOSPC
    with RunConsole():
        run_started(str(tmp_path))
        logging.getLogger("tests.summary").info("a line the disk cannot take")
        logging.getLogger("tests.summary").info("and another")
    assert "Logging error" not in capsys.readouterr().err


def test_an_output_the_log_cannot_go_to_is_one_warning(tmp_path, caplog):
    (tmp_path / "file").write_text("")
    with RunConsole():
        run_started(str(tmp_path / "file" / "out"))  # below a file
    assert [r.getMessage() for r in caplog.records if r.name == "jobs.console"] == [
        f"no run.log in {tmp_path / 'file' / 'out'}: [Errno 20] Not a directory: '{tmp_path / 'file' / 'out'}'"]


class _Bucket(LocalFileSystem):
    """A remote filesystem for the test: ``consoletest://PATH`` is PATH below :attr:`root`."""

    root = ""

    @classmethod
    def scheme(cls):
        return "consoletest"

    def join(self, base, *paths):
        return posixpath.join(base, *paths)

    def create(self, path, *args, **kwargs):
        return super().create(os.path.join(self.root, path.split("://", 1)[1]), *args, **kwargs)


def test_a_remote_output_gets_its_log_uploaded_when_the_run_ends(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(_Bucket, "root", str(tmp_path))
    (tmp_path / "out").mkdir()
    with RunConsole():
        run_started("consoletest://out")
        logging.getLogger("tests.summary").info("a line of the run")
        assert not (tmp_path / "out" / "run.log").exists()  # held locally until the end
    assert (tmp_path / "out" / "run.log").read_text().endswith("tests.summary: a line of the run\n")
