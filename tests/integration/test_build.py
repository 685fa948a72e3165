"""``counterfactory build`` end to end on the local runner, on synthetic candidate sets.

The expected outcome of every object is computed here from its stored scores with plain
comparisons (not with the selection code), so the test catches a build that keeps or
drops the wrong objects, not just one that crashes.
"""
from __future__ import annotations

import hashlib
import io
import json
import pathlib
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset
import wids
from PIL import Image

from jobs import build as build_job
from jobs import cli
from jobs import thresholds as thresholds_job
from pipeline.finalize import check_ledgers
from transforms.ledger import LedgerError
from schemas.decisions import Decision, Verdict, decisions_jsonl
from schemas.sample import Field
from pipeline.testing import write_candidate_set
from tests.chaos import drop_in_stage, fail_stage, injected_dead_letters
from transforms.io.decode import decode_rgb
from transforms.repaste import repaste
from transforms.thresholds import DEFAULT_THRESHOLDS, Ranking

OBJECTS = 40
HIGHER = {"ssim_outside", "change_inside", "quality", "agreement"}


def passes(scores: dict, bounds: dict) -> bool:
    return all(scores[name] >= bound if name in HIGHER else scores[name] <= bound for name, bound in bounds.items())


def candidate_samples(folder: pathlib.Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in webdataset.WebDataset(sorted(map(str, folder.glob("shard-*.tar"))),
                                                            shardshuffle=False)}


def pair_samples(folder: pathlib.Path) -> dict[str, dict]:
    urls = [str(folder / e["url"]) for e in json.loads((folder / "shardindex.json").read_text())["shardlist"]]
    return {s["__key__"]: s for s in webdataset.WebDataset(urls, shardshuffle=False)}


def expected_kept(samples: dict[str, dict], bounds: dict) -> set[str]:
    return {key for key, s in samples.items()
            if any(passes(c["scores"], bounds) for c in json.loads(s[Field.JSON])["candidates"])}


def run_build(root: pathlib.Path, version: str, *sets: pathlib.Path, extra=()) -> pathlib.Path:
    argv = [f"--candidates={s}" for s in sets] + [f"--output={root}", "--name=demo", f"--version={version}", *extra]
    build_job.run(argv)
    return root / "demo" / version


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """A clean candidate set, and a damaged one: a truncated shard (of the set ``other``) and a shard of
    another sample kind."""
    base = tmp_path_factory.mktemp("candidates")
    clean = write_candidate_set(base / "clean", OBJECTS, seed=1)
    other = write_candidate_set(base / "other", 3, seed=2)
    tar = next(other.glob("shard-*.tar")).read_bytes()
    foreign = io.BytesIO()
    with webdataset.TarWriter(foreign) as writer:
        writer.write({"__key__": "f" * 24, "src.jpg": b"\xff\xd8", "json": b'{"kind": "source"}'})
    damaged = write_candidate_set(base / "damaged", 0, extra_shards={
        "truncated.tar": tar[: int(len(tar) * 0.6)], "foreign.tar": foreign.getvalue()})
    return clean, damaged


@pytest.fixture(scope="module")
def v1(sets, tmp_path_factory) -> pathlib.Path:
    return run_build(tmp_path_factory.mktemp("datasets"), "v1", *sets)


def test_every_candidate_object_ends_as_a_pair_or_a_reason(sets, v1):
    clean, _ = sets
    stats = check_ledgers(str(v1))
    ledger = stats["ledger"]
    candidates = candidate_samples(clean)
    kept = expected_kept(candidates, DEFAULT_THRESHOLDS)
    assert 0 < len(kept) < OBJECTS
    pairs = pair_samples(v1)
    from_clean = {key for key in pairs if key in candidates}
    assert from_clean == kept
    rejected = pq.read_table(v1 / "rejected.parquet").to_pylist()
    selected_out = {row["key"] for row in rejected if row["stage"] == "select"}
    assert selected_out & set(candidates) == set(candidates) - kept
    read_before_damage = set(candidate_samples(clean.parent / "other")) & (set(pairs) | selected_out)
    assert 1 <= len(read_before_damage) < 3
    # Every sample read, plus the truncated tail and the foreign sample.
    assert ledger["inputs"] == OBJECTS + len(read_before_damage) + 2
    assert ledger["rejected"]["corrupt_shard"] == 1 and ledger["rejected"]["not_a_candidate_sample"] == 1
    assert ledger["written"] == len(pairs) and ledger["dead_letters_total"] == 0
    assert [step["step"] for step in stats["funnel"]] == ["candidate_objects", "passed_thresholds", "kept",
                                                          "pairs_written"]


def test_pairs_hold_the_best_passing_candidate_and_the_repasted_object(sets, v1):
    candidates = candidate_samples(sets[0])
    for key, pair in pair_samples(v1).items():
        if key not in candidates:
            continue
        source = candidates[key]
        meta, source_meta = json.loads(pair[Field.JSON]), json.loads(source[Field.JSON])
        passing = [c for c in source_meta["candidates"] if passes(c["scores"], DEFAULT_THRESHOLDS)]
        best = max(Ranking().combined(c["scores"]) for c in passing)
        chosen = meta["candidate"]
        assert passes(chosen["scores"], DEFAULT_THRESHOLDS)
        assert chosen["combined_score"] == pytest.approx(best)
        assert pair[Field.REMOVED] == source[chosen["field"]]
        assert pair[Field.REGION] == source[chosen["region"]]
        for field in (Field.SRC, Field.MASK, Field.OBJECT):
            assert pair[field] == source[field]
        with Image.open(io.BytesIO(source[Field.OBJECT])) as cutout:
            rgba = np.array(cutout.convert("RGBA"))
        expected = repaste(decode_rgb(pair[Field.REMOVED]), rgba, tuple(meta["object"]["box"]))
        np.testing.assert_array_equal(decode_rgb(pair[Field.PASTED]), expected)  # lossless PNG: the re-paste exactly
        assert meta["pairs"] == {"removal": {"input": "src.jpg", "mask": "region.png", "target": "removed.png"},
                                 "insertion": {"input": "pasted.png", "mask": "region.png", "target": "src.jpg"}}
        assert meta["selected_by"] == "thresholds" and meta["provenance"]["job"] == "build"
        assert meta["selection"]["thresholds"]["seam"] == {"max": DEFAULT_THRESHOLDS["seam"]}


def test_metadata_lineage_and_report(sets, v1):
    pairs = pair_samples(v1)
    rows = [row for path in sorted(v1.glob("shard-*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert {row["key"] for row in rows} == set(pairs)
    assert all(row["selected_by"] == "thresholds" and row["seam"] <= DEFAULT_THRESHOLDS["seam"] for row in rows)
    lineage = json.loads((v1 / "lineage.json").read_text())
    clean_lineage = json.loads((sets[0] / "lineage.json").read_text())
    assert lineage["candidate_sets"][0]["content_sha256"] == clean_lineage["content_sha256"]
    assert lineage["thresholds"]["redetect_score"] == {"max": DEFAULT_THRESHOLDS["redetect_score"]}
    assert lineage["version"] == "v1" and lineage["decisions"] is None and lineage["models"]["detector"]
    report = json.loads((v1 / "report.json").read_text())
    assert [step["stage"] for step in report["funnel"]][:2] == ["bootstrap", "bootstrap"]
    assert report["funnel"][-1]["count"] == len(pairs)
    html = (v1 / "report.html").read_text()
    thumbs = list((v1 / "report" / "thumbs").glob("*.jpg"))
    assert thumbs and all(f"report/thumbs/{thumb.name}" in html for thumb in thumbs)
    assert (v1 / "report" / "funnel.png").stat().st_size > 1000


def test_thresholds_and_decisions_change_exactly_the_samples_they_should(sets, v1, tmp_path):
    clean, _ = sets
    candidates = candidate_samples(clean)
    bounds = {**DEFAULT_THRESHOLDS, "seam": 0.35}
    kept = expected_kept(candidates, bounds)
    dropped = sorted(set(candidates) - kept)
    rejected_by_review, accepted_candidate = sorted(kept)[:2]
    accepted_object = dropped[0]
    decisions = [
        Decision(rejected_by_review, Verdict.REJECT, "ana", "2026-11-21T10:00:00+00:00", "blurry"),
        Decision(accepted_object, Verdict.ACCEPT, "ana", "2026-11-21T10:01:00+00:00"),
        Decision(f"{accepted_candidate}_c03", Verdict.ACCEPT, "bo", "2026-11-21T10:02:00+00:00"),
    ]
    decisions_file = tmp_path / "decisions.jsonl"
    decisions_file.write_bytes(decisions_jsonl(decisions))
    v2 = run_build(v1.parent.parent, "v2", clean, extra=["--thresholds={seam: 0.35}", f"--decisions={decisions_file}"])
    pairs = pair_samples(v2)
    assert set(pairs) == (kept - {rejected_by_review}) | {accepted_object}
    assert json.loads(pairs[accepted_object][Field.JSON])["selected_by"] == "review"
    chosen = json.loads(pairs[accepted_candidate][Field.JSON])
    assert (chosen["candidate"]["index"], chosen["review"]["reviewer"]) == (3, "bo")
    reasons = {row["key"]: row["reason"] for row in pq.read_table(v2 / "rejected.parquet").to_pylist()}
    assert reasons[rejected_by_review] == "review_rejected"
    lineage = json.loads((v2 / "lineage.json").read_text())
    assert lineage["thresholds"]["seam"] == {"max": 0.35}
    assert lineage["decisions"]["keys"] == 3 and len(lineage["decisions"]["sha256"]) == 64
    assert check_ledgers(str(v2))["counts"]["decisions"]["matched"] == 3


def test_building_the_same_inputs_again_gives_byte_identical_shards(sets, v1, tmp_path):
    again = run_build(tmp_path, "v1", *sets)  # same name and version (samples record them), elsewhere
    names = sorted(path.name for path in v1.glob("shard-*"))
    assert names and names == sorted(path.name for path in again.glob("shard-*"))
    for name in names:
        assert (v1 / name).read_bytes() == (again / name).read_bytes(), name


def test_a_finished_version_is_never_overwritten(sets, v1, caplog):
    before = {path: path.stat().st_mtime_ns for path in v1.rglob("*")}
    argv = [f"--candidates={sets[0]}", f"--output={v1.parent.parent}", "--name=demo", "--version=v1"]
    assert build_job.main(argv) == 2
    assert "never overwritten" in caplog.text
    assert {path: path.stat().st_mtime_ns for path in v1.rglob("*")} == before


def test_the_sweep_agrees_with_the_build(sets, v1, capsys):
    clean, _ = sets
    seam = DEFAULT_THRESHOLDS["seam"]
    assert thresholds_job.main([f"--candidates={clean}", f"--sweep=seam={seam - 0.1}:{seam}:0.05"]) == 0
    current = [line for line in capsys.readouterr().out.splitlines() if line.endswith("<- current")]
    assert len(current) == 1
    kept = sum(key in candidate_samples(clean) for key in pair_samples(v1))
    assert int(current[0].split()[2]) == kept


@pytest.mark.parametrize("stage", ["read_candidates", "select", "repaste"])
def test_an_exception_in_any_stage_is_a_dead_letter_and_the_ledger_closes(sets, v1, tmp_path, monkeypatch, stage):
    clean, _ = sets
    kept = sorted(pair_samples(v1))
    victim = kept[0]  # an object that becomes a pair, so that every stage sees it
    if stage == "read_candidates":
        fail_stage(monkeypatch, stage, lambda uri, key: uri.startswith(str(clean)))
    else:
        fail_stage(monkeypatch, stage, lambda uri, key: key == victim)
    stats = check_ledgers(str(run_build(tmp_path, "v1", *sets)))
    dead = injected_dead_letters(tmp_path / "demo" / "v1")
    assert [d["stage"] for d in dead] == [stage] * len(dead) and dead
    ledger = stats["ledger"]
    assert ledger["dead_letters"] == {stage: len(dead)}
    if stage != "read_candidates":
        assert [d["key"] for d in dead] == [victim] and ledger["written"] == len(kept) - 1


def test_every_stage_closes_and_a_silent_drop_names_its_stage(sets, v1, tmp_path, monkeypatch):
    rows = {row["stage"]: row for row in json.loads((v1 / "stats.json").read_text())["stages"]}
    assert list(rows) == ["read_candidates", "select", "repaste", "write"]
    assert all(row["closed"] for row in rows.values()) and not rows["read_candidates"]["balanced"]
    victim = sorted(pair_samples(v1))[0]
    drop_in_stage(monkeypatch, "repaste", lambda uri, key: key == victim)
    with pytest.raises(LedgerError, match=rf"stage repaste does not close: .* \(e\.g\. {victim}\)"):
        run_build(tmp_path, "v1", *sets)


def test_versions_index_lists_finished_versions_and_points_at_their_shards(sets, tmp_path, capsys):
    clean, _ = sets
    dataset = tmp_path / "demo"
    run_build(tmp_path, "v1", clean)
    run_build(tmp_path, "v2", clean, extra=["--thresholds={ssim_outside: 0.98}"])
    (dataset / "v3").mkdir()  # an unfinished attempt: no stats.json
    index = json.loads((dataset / "versions.json").read_text())
    assert index["latest"] == "v2" and [v["version"] for v in index["versions"]] == ["v1", "v2"]
    for entry in index["versions"]:
        stats = json.loads((dataset / entry["version"] / "stats.json").read_text())
        assert entry["samples"] == stats["ledger"]["written"] == len(pair_samples(dataset / entry["version"]))
        # What a researcher does: open the newest version's shard index with wids.
        shards = wids.ShardListDataset(str(dataset / entry["shardindex"]), transformations=[],
                                       cache_dir=str(tmp_path / "wids-cache"))
        assert len(shards) == entry["samples"]
    assert index["versions"][1]["thresholds"]["ssim_outside"] == {"min": 0.98}
    assert index["versions"][0]["samples"] > index["versions"][1]["samples"] > 0

    assert cli.main(["versions", str(dataset)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in table] == ["version", "v1", "v2"]
    shutil.rmtree(dataset / "v2")
    assert cli.main(["versions", str(dataset), "--reindex"]) == 0
    assert json.loads((dataset / "versions.json").read_text())["latest"] == "v1"
    assert cli.main(["versions", str(tmp_path / "nothing")]) == 2


def _zero_bytes_of_a_src_jpg(tar_path: pathlib.Path, count: int = 400) -> str:
    """The issue's damage: ``count`` bytes of a sample's src.jpg zeroed in place; returns the sample key."""
    import tarfile
    with tarfile.open(tar_path) as archive:
        member = next(m for m in archive.getmembers() if m.name.endswith(".src.jpg") and m.size > count + 200)
    data = bytearray(tar_path.read_bytes())
    data[member.offset_data + 100:member.offset_data + 100 + count] = bytes(count)
    tar_path.write_bytes(bytes(data))
    return member.name.split(".", 1)[0]


def test_a_candidate_shard_changed_since_written_is_refused_in_one_line(tmp_path, caplog):
    candidates = write_candidate_set(tmp_path / "candidates", 4, seed=3)
    shard = next(candidates.glob("shard-*.tar"))
    _zero_bytes_of_a_src_jpg(shard)
    argv = [f"--candidates={candidates}", f"--output={tmp_path / 'out'}", "--name=demo", "--version=v1"]
    assert build_job.main(argv) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert len(errors) == 1 and f"{shard} does not match the manifest: md5" in errors[0]
    assert not (tmp_path / "out" / "demo" / "v1" / "stats.json").exists()


def test_a_sample_that_differs_from_its_recorded_digest_is_rejected_never_built(tmp_path):
    """Damage the manifest cannot see (it was rewritten after the damage): the per-sample digest catches it."""
    candidates = write_candidate_set(tmp_path / "candidates", 4, seed=3)
    shard = next(candidates.glob("shard-*.tar"))
    damaged = _zero_bytes_of_a_src_jpg(shard)
    index = json.loads((candidates / "shardindex.json").read_text())
    for entry in index["shardlist"]:
        data = (candidates / entry["url"]).read_bytes()
        entry.update(md5sum=hashlib.md5(data).hexdigest(), filesize=len(data))
    (candidates / "shardindex.json").write_text(json.dumps(index))
    version = run_build(tmp_path / "out", "v1", candidates)
    stats = check_ledgers(str(version))
    assert damaged not in pair_samples(version)
    rejected = pq.read_table(version / "rejected.parquet").to_pylist()
    assert [(row["key"], row["stage"]) for row in rejected if row["reason"] == "sample_digest_mismatch"] == [
        (damaged, "read_candidates")]
    assert stats["ledger"]["rejected"]["sample_digest_mismatch"] == 1 and stats["ledger"]["inputs"] == 4
