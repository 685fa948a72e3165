"""The ingest job end to end on the local runners, on the bundled real samples."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
import webdataset
from PIL import Image

from jobs import ingest
from pipeline.finalize import check_ledgers, read_stats
from transforms.ledger import LedgerError
from schemas.sample import source_from_sample
from tests.chaos import drop_in_stage, fail_stage, injected_dead_letters

BROKEN_REASONS = {
    "truncated.jpg": "truncated_image",
    "empty.jpg": "empty_file",
    "text.jpg": "not_an_image",
    "huge.png": "image_too_large",
}
EDGE_NOTES = {
    "sixteen_bit.png": "from_16_bit",
    "cmyk.jpg": "from_cmyk",
    "palette_alpha.png": "from_palette",
    "exif_rotated.jpg": "exif_oriented",
}


def _samples(output: pathlib.Path) -> dict:
    urls = sorted(str(p) for p in output.glob("shard-*.tar"))
    return {s["__key__"]: s for s in webdataset.WebDataset(urls, shardshuffle=False)}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("ingest") / "samples"
    ingest.run(["--output", str(output)])
    return output


def test_default_run_accounts_for_every_bundled_file(default_run, samples_dir):
    stats = read_stats(str(default_run))
    ledger = stats["ledger"]
    files = [p for d in ("images", "broken") for p in (samples_dir / d).iterdir() if p.is_file() and p.name != "README.md"]
    readmes = [p for d in ("images", "broken") for p in [samples_dir / d / "README.md"] if p.exists()]
    assert ledger["closed"] and ledger["inputs"] == len(files) + len(readmes)
    assert ledger["dead_letters_total"] == 0
    assert ledger["rejected"]["duplicate_content"] == 1
    rejected = pq.read_table(default_run / "rejected.parquet").to_pylist()
    by_file = {pathlib.Path(row["uri"]).name: row["reason"] for row in rejected}
    for name, reason in BROKEN_REASONS.items():
        assert by_file[name] == reason, name
    samples = _samples(default_run)
    assert len(samples) == ledger["written"] == stats["shards"]["samples"]
    notes_by_file = {}
    for sample in samples.values():
        meta = json.loads(sample["json"])
        notes_by_file[pathlib.Path(meta["uri"]).name] = {note for note, applies in meta["notes"].items() if applies}
        assert meta["key"] == sample["__key__"] and meta["provenance"]["job"] == "ingest"
    for name, note in EDGE_NOTES.items():
        assert note in notes_by_file[name], name
    assert {"coffee.jpg", "chelsea.jpg", "rocket.jpg"} <= set(notes_by_file)
    # Of two identical files the one with the smaller URI is kept, the other rejected.
    assert "astronaut_copy.jpg" in notes_by_file and by_file["astronaut.jpg"] == "duplicate_content"
    funnel = [step["count"] for step in stats["funnel"]]
    assert funnel == sorted(funnel, reverse=True) and funnel[0] == ledger["inputs"]


def test_outputs_are_complete_and_consistent(default_run):
    index = json.loads((default_run / "shardindex.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1"
    for shard in index["shardlist"]:
        path = default_run / shard["url"]
        assert path.stat().st_size == shard["filesize"]
        assert pq.read_table(str(path).replace(".tar", ".parquet")).num_rows == shard["nsamples"]
    lineage = json.loads((default_run / "lineage.json").read_text())
    assert lineage["samples"] == sum(s["nsamples"] for s in index["shardlist"])
    assert "output" in (default_run / "config.yaml").read_text()
    assert (default_run / "dead_letters.jsonl").read_text() == ""
    assert not list(default_run.glob("*.partial"))


def test_rerun_is_idempotent(default_run):
    before = {p.name: p.read_bytes() for p in default_run.glob("shard-*")}
    ingest.run(["--output", str(default_run), "--overwrite"])
    stats = read_stats(str(default_run))
    assert stats["shards"]["written"] == 0 and stats["shards"]["kept_identical"] == stats["shards"]["count"]
    assert {p.name: p.read_bytes() for p in default_run.glob("shard-*")} == before


def test_source_shards_read_back_keep_their_keys(default_run, tmp_path):
    again = tmp_path / "again"
    ingest.run(["--shards", str(default_run / "shard-*.tar"), "--output", str(again)])
    first, second = _samples(default_run), _samples(again)
    assert set(first) == set(second)
    key = next(iter(first))
    assert source_from_sample(first[key]) == source_from_sample(second[key])


@pytest.mark.parametrize("stage", ["read", "decode"])
def test_an_exception_in_any_stage_is_a_dead_letter_and_the_ledger_closes(tmp_path, monkeypatch, stage):
    fail_stage(monkeypatch, stage, lambda uri, key: uri.endswith("coffee.jpg"))
    output = tmp_path / "run"
    ingest.run(["--output", str(output)])
    ledger = check_ledgers(str(output))["ledger"]
    assert [(pathlib.Path(d["uri"]).name, d["stage"]) for d in injected_dead_letters(output)] == [("coffee.jpg", stage)]
    assert ledger["dead_letters"] == {stage: 1}
    assert "coffee.jpg" not in {pathlib.Path(json.loads(s["json"])["uri"]).name for s in _samples(output).values()}


def test_every_stage_of_the_default_run_closes(default_run):
    rows = check_ledgers(str(default_run))["stages"]
    assert [row["stage"] for row in rows] == ["read", "decode", "dedup", "image_size", "encode", "write"]
    assert all(row["closed"] and row["balanced"] for row in rows)
    assert rows[0]["in"] == 24 and rows[-1]["out"] == 17


@pytest.mark.parametrize("stage", ["read", "decode", "encode"])
def test_a_record_a_stage_drops_without_an_error_fails_the_run_naming_it(tmp_path, monkeypatch, stage):
    drop_in_stage(monkeypatch, stage, lambda uri, key: uri.endswith("coffee.jpg"))
    with pytest.raises(LedgerError, match=rf"^stage {stage} does not close: .* 1 records missing"):
        ingest.run(["--output", str(tmp_path / "run")])


def test_source_shards_that_fail_to_read_are_dead_letters(default_run, tmp_path, monkeypatch):
    fail_stage(monkeypatch, "read_shards", lambda uri, key: True)
    output = tmp_path / "again"
    ingest.run(["--shards", str(default_run / "shard-*.tar"), "--output", str(output)])
    ledger = check_ledgers(str(output))["ledger"]
    shards = len(list(default_run.glob("shard-*.tar")))
    assert ledger["dead_letters"] == {"read_shards": shards} and ledger["written"] == 0


def test_annotated_datasets_carry_boxes(samples_dir, tmp_path):
    annotations = samples_dir / "annotations"
    output = tmp_path / "annotated"
    ingest.run([
        "--annotations", str(annotations / "coco.json"),
        "--annotations", str(annotations / "openimages.csv"),
        "--images_root", str(samples_dir / "images"),
        "--class_descriptions", str(annotations / "class-descriptions.csv"),
        "--output", str(output),
    ])
    stats = read_stats(str(output))
    assert stats["ledger"]["closed"]
    assert stats["counts"]["boxes_rejected"]["invalid_box"] >= 2
    labels = {}
    for sample in _samples(output).values():
        image = source_from_sample(sample)
        for annotation in image.annotations:
            assert 0 <= annotation.box.x0 < annotation.box.x1 <= image.width
            assert 0 <= annotation.box.y0 < annotation.box.y1 <= image.height
        labels[pathlib.Path(image.uri).name] = {a.label for a in image.annotations}
    assert "person" in labels["astronaut.jpg"] or "Person" in labels["astronaut.jpg"]
    assert stats["ledger"]["rejected"].get("duplicate_content", 0) >= 1  # both files name the same photos


def test_bad_arguments_are_clear(tmp_path, caplog):
    assert ingest.main(["--input", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2
    assert "matches no file" in caplog.text
    assert ingest.main(["--input", str(tmp_path)]) == 2


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return sock.getsockname()[1]


@pytest.mark.portable
def test_portable_runner_with_local_job_service(tmp_path, samples_dir):
    """The path Flink and Spark take: a job service, the portable runner, a LOOPBACK worker."""
    port = _free_port()
    service = subprocess.Popen(
        [sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main", f"--port={port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("localhost", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        output = tmp_path / "portable"
        ingest.run([
            "--input", str(samples_dir / "images"), "--input", str(samples_dir / "broken"),
            "--output", str(output),
            "--runner=PortableRunner", f"--job_endpoint=localhost:{port}", "--environment_type=LOOPBACK",
        ])
        stats = read_stats(str(output))
        assert stats["ledger"]["closed"] and stats["ledger"]["written"] == len(_samples(output)) > 5
        assert stats["counts"]["inputs"]["file"] == stats["ledger"]["inputs"]
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_multiprocess_runner_writes_identical_shards(default_run, tmp_path):
    output = tmp_path / "multi"
    ingest.run(["--output", str(output), "--name", default_run.name, "--local_workers", "2"])
    index = lambda d: {s["url"]: s["md5sum"] for s in json.loads((d / "shardindex.json").read_text())["shardlist"]}  # noqa: E731
    assert index(output) == index(default_run)


@pytest.mark.timeout(300)
def test_fifos_sockets_and_broken_links_are_rejected_with_their_reasons_and_the_run_finishes(samples_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "coffee.jpg").write_bytes((samples_dir / "images" / "coffee.jpg").read_bytes())
    os.mkfifo(folder / "x.jpg")
    (folder / "dangling.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "loop1.jpg").symlink_to(folder / "loop2.jpg")
    (folder / "loop2.jpg").symlink_to(folder / "loop1.jpg")
    # Were the FIFO opened, the job would block until a writer comes: this one comes late, so the test fails.
    writer = threading.Timer(120, lambda: os.close(os.open(folder / "x.jpg", os.O_WRONLY | os.O_NONBLOCK)))
    writer.start()
    try:
        output = tmp_path / "out"
        ingest.run(["--input", str(folder), "--output", str(output)])
    finally:
        writer.cancel()
    ledger = check_ledgers(str(output))["ledger"]
    assert ledger["inputs"] == 5 and ledger["written"] == 1
    rejected = {pathlib.Path(row["uri"]).name: row["reason"]
                for row in pq.read_table(output / "rejected.parquet").to_pylist()}
    assert rejected == {"x.jpg": "not_a_regular_file", "dangling.jpg": "dangling_symlink",
                        "loop1.jpg": "symlink_loop", "loop2.jpg": "symlink_loop"}


def test_an_image_smaller_than_min_image_side_is_rejected_as_bootstrap_rejects_it(samples_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "coffee.jpg").write_bytes((samples_dir / "images" / "coffee.jpg").read_bytes())
    Image.new("RGB", (1, 1), (200, 10, 10)).save(folder / "dot.png")
    Image.new("RGB", (40, 16), (10, 200, 10)).save(folder / "strip.png")
    output = tmp_path / "out"
    ingest.run(["--input", str(folder), "--output", str(output)])
    ledger = check_ledgers(str(output))["ledger"]
    assert ledger["inputs"] == 3 and ledger["written"] == 2 and ledger["rejected"] == {"image_too_small": 1}
    (row,) = pq.read_table(output / "rejected.parquet").to_pylist()
    assert pathlib.Path(row["uri"]).name == "dot.png" and row["stage"] == "image_size"
    strict = tmp_path / "strict"
    ingest.run(["--input", str(folder), "--output", str(strict), "--min_image_side", "64"])
    assert check_ledgers(str(strict))["ledger"]["rejected"] == {"image_too_small": 2}
