"""What ``counterfactory ingest`` shows a user: no library noise, a summary table from stats.json, a run.log."""
import json
import pathlib
import re
import subprocess
import sys

import pytest

from jobs import cli

REPO = pathlib.Path(__file__).resolve().parent.parent.parent

#: Lines a default run printed before (issue 19): Beam's GCP import warning, BatchElements statistics,
#: the worker's state cache, one line per shard written.
NOISE = ("apitools not found", "BatchElements statistics", "Creating state cache", "wrote shard-")


@pytest.fixture(scope="module")
def default_ingest(tmp_path_factory):
    """The README's command, as a user runs it: a fresh process (Beam's import-time warnings included)."""
    output = tmp_path_factory.mktemp("console") / "sources"
    command = pathlib.Path(sys.executable).parent / "counterfactory"
    done = subprocess.run([str(command), "ingest", "--output", str(output)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return output, done


def test_a_default_ingest_prints_no_noise(default_ingest):
    _, done = default_ingest
    noisy = [line for line in done.stderr.splitlines() if any(noise in line for noise in NOISE)]
    assert noisy == []
    assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING|ERROR) ", line)
               for line in done.stderr.splitlines()), done.stderr


def test_the_summary_table_says_what_stats_json_says(default_ingest):
    output, done = default_ingest
    stats = json.loads((output / "stats.json").read_text())
    rows = {line.split("  ")[0].strip(): line for line in done.stdout.splitlines()[2:]}
    assert done.stdout.splitlines()[0] == f"ingest {stats['dataset']} finished"
    figure = {what: re.split(r"\s{2,}", line.strip())[1] for what, line in rows.items()}
    ledger = stats["ledger"]
    assert figure["inputs"] == str(ledger["inputs"]) == "24"
    assert figure["written"] == str(ledger["written"])
    assert figure["dead letters"] == str(ledger["dead_letters_total"])
    assert figure["rejected"] == str(ledger["rejected_total"])
    top = max(ledger["rejected"].items(), key=lambda item: (item[1], [-ord(c) for c in item[0]]))
    assert f"{top[0]} {top[1]}" in rows["rejected"]
    assert f"{stats['shards']['count']} shards, {stats['shards']['samples']} samples" in rows["output"]
    assert rows["stats"].endswith(str(output / "stats.json"))
    assert rows["log"].endswith(str(output / "run.log"))
    assert {"throughput", "elapsed"} <= set(rows)


def test_the_run_log_holds_what_the_console_showed(default_ingest):
    output, done = default_ingest
    log = (output / "run.log").read_text()
    assert log.splitlines() == done.stderr.splitlines() + done.stdout.splitlines()
    assert "no input given: reading the bundled samples" in log  # logged before the output folder was known


def test_a_refused_run_leaves_the_finished_run_and_its_log_alone(default_ingest, capsys):
    output, _ = default_ingest
    before = (output / "run.log").read_bytes()
    assert cli.main(["ingest", "--output", str(output)]) == 2
    assert (output / "run.log").read_bytes() == before
    assert capsys.readouterr().out == ""  # no table: nothing ran
