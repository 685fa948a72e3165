"""``counterfactory pbe-pairs`` end to end on the bundled samples and their COCO boxes.

The COCO file's boxes give a known outcome per image: astronaut, coffee and motorcycle
boxes pass the default filters; chelsea's cat box covers 88 % of the image
(``box_too_large``, so the image has ``no_suitable_box``); the rocket has no box.
"""
from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset
from PIL import Image

from jobs import pbe
from pipeline.finalize import check_ledgers
from review.contact_sheet import pbe_sheet
from schemas.sample import Field
from tests.chaos import drop_in_stage, fail_stage, injected_dead_letters
from transforms.ledger import LedgerError

EXPECTED_PAIRS = {"astronaut.jpg": "person", "coffee.jpg": "cup", "motorcycle.jpg": "motorcycle"}


def run_coco(samples_dir: pathlib.Path, output: pathlib.Path, *extra: str) -> pathlib.Path:
    annotations = samples_dir / "annotations" / "coco.json"
    pbe.run([f"--annotations={annotations}", f"--images_root={samples_dir / 'images'}", "--boxes=annotations",
             f"--output={output}", *extra])
    return output


def assert_stages_close(stats: dict) -> None:
    rows = stats["stages"]
    assert rows and all(row["closed"] and row["balanced"] for row in rows), rows
    assert all(row["in"] == row["out"] + row["rejected"] + row["dead_letters"] for row in rows), rows


def samples(folder: pathlib.Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in webdataset.WebDataset(sorted(map(str, folder.glob("*.tar"))), shardshuffle=False)}


@pytest.fixture(scope="module")
def coco_run(samples_dir, tmp_path_factory) -> pathlib.Path:
    return run_coco(samples_dir, tmp_path_factory.mktemp("pbe") / "run")


def test_every_image_and_box_ends_where_it_should(coco_run):
    stats = check_ledgers(str(coco_run))
    assert stats["ledger"]["written"] == 3
    assert stats["ledger"]["rejected"] == {"no_boxes": 1, "no_suitable_box": 1}
    assert stats["boxes_ledger"]["inputs"] == 4 and stats["boxes_ledger"]["rejected"] == {"box_too_large": 1}
    rejected = pq.read_table(coco_run / "rejected.parquet").to_pylist()
    reasons = {(pathlib.Path(row["uri"]).name, row["reason"]) for row in rejected}
    assert {("chelsea.jpg", "box_too_large"), ("chelsea.jpg", "no_suitable_box"), ("rocket.jpg", "no_boxes"),
            ("chelsea.jpg", "invalid_box")} <= reasons
    written = samples(coco_run)
    labels = {pathlib.Path(json.loads(s[Field.JSON])["source"]["uri"]).name: json.loads(s[Field.JSON])["box"]["label"]
              for s in written.values()}
    assert labels == EXPECTED_PAIRS


def test_every_stage_accounts_for_each_image_and_box_it_takes(coco_run):
    stats = check_ledgers(str(coco_run))
    assert_stages_close(stats)
    assert [(row["stage"], row["unit"]) for row in stats["stages"]] == [
        ("read", "main"), ("decode", "main"), ("dedup", "main"), ("pbe_pairs", "main"), ("pbe_boxes", "boxes"),
        ("write", "boxes")]
    rows = {row["stage"]: row for row in stats["stages"]}
    assert rows["pbe_pairs"]["in"] == stats["ledger"]["inputs"]
    assert rows["pbe_boxes"]["in"] == stats["boxes_ledger"]["inputs"]
    assert rows["write"]["out"] == stats["boxes_ledger"]["written"]


def test_samples_hold_target_mask_and_reference_at_their_sizes(coco_run):
    for key, sample in samples(coco_run).items():
        meta = json.loads(sample[Field.JSON])
        with Image.open(io.BytesIO(sample[Field.SRC])) as target, Image.open(io.BytesIO(sample[Field.REF])) as ref, \
                Image.open(io.BytesIO(sample[Field.MASK])) as mask_image:
            assert target.size == (512, 512) and ref.size == (224, 224) and mask_image.size == (512, 512)
            mask = np.asarray(mask_image.convert("L")) > 0
        assert 0.05 < mask.mean() < 1.0
        assert meta["kind"] == "pbe" and meta["key"] == key and meta["mask"]["kind"] in ("box", "bezier")
        assert meta["reference"]["seed"] == meta["seed"]
        x0, y0, x1, y1 = meta["crop_box"]
        assert x1 - x0 == y1 - y0  # square crop
    rows = [row for path in sorted(coco_run.glob("shard-*.parquet")) for row in pq.read_table(path).to_pylist()]
    assert {row["key"] for row in rows} == set(samples(coco_run))


def test_the_same_seed_reproduces_the_samples_and_another_seed_does_not(samples_dir, coco_run, tmp_path):
    again = run_coco(samples_dir, tmp_path / "run")  # samples record the dataset name: the folder's
    names = sorted(path.name for path in coco_run.glob("*.tar"))
    assert [(coco_run / n).read_bytes() for n in names] == [(again / n).read_bytes() for n in names]
    other = samples(run_coco(samples_dir, tmp_path / "other", "--pairs={seed: 1}"))
    assert set(other) == set(samples(coco_run))
    assert any(other[key][Field.REF] != sample[Field.REF] for key, sample in samples(coco_run).items())


def test_a_contact_sheet_shows_reference_mask_and_target(coco_run):
    sheet = pbe_sheet(sorted(map(str, coco_run.glob("*.tar"))), side=64)
    assert sheet.width == 64 * 6 + 8 and sheet.height > 2 * 64  # 3 pairs, two per row


@pytest.mark.network
def test_the_default_run_takes_boxes_from_the_detector(tmp_path):
    stats = pbe.run([f"--output={tmp_path / 'default'}"])
    assert stats["ledger"]["closed"] and stats["boxes_ledger"]["closed"]
    assert stats["boxes_ledger"]["written"] >= 10
    origins = {json.loads(s[Field.JSON])["box"]["origin"] for s in samples(tmp_path / "default").values()}
    assert origins == {"nanodet-coco80"} or all(origin.startswith("nanodet") for origin in origins)


def write_coco(folder: pathlib.Path, images: dict[str, list[tuple[str, list[int]]]]) -> pathlib.Path:
    """Synthetic photos (noise on a gradient, a bright rectangle per box) and their COCO file."""
    rng = np.random.default_rng(0)
    categories = {"blob": 1, "ball": 2}
    coco = {"images": [], "annotations": [], "categories": [{"id": i, "name": n} for n, i in categories.items()]}
    for image_id, (name, boxes) in enumerate(images.items(), start=1):
        pixels = np.clip(rng.normal(100, 20, (300, 400, 3)) + np.linspace(0, 80, 400)[None, :, None], 0, 255)
        for _, (x, y, w, h) in boxes:
            pixels[y:y + h, x:x + w] = rng.uniform(150, 255, 3)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / name, quality=92)
        coco["images"].append({"id": image_id, "file_name": name, "width": 400, "height": 300})
        for label, bbox in boxes:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id,
                                        "category_id": categories[label], "bbox": bbox, "iscrowd": 0})
    path = folder / "coco.json"
    path.write_text(json.dumps(coco))
    return path


def test_the_benchmark_pairs_each_image_with_another_image_of_its_class(tmp_path):
    images = {f"a{i}.jpg": [("blob", [100 + 10 * i, 80, 120, 90])] for i in range(3)}
    images.update({
        "b.jpg": [("ball", [150, 100, 100, 100])],  # the only ball: no other image to take a reference from
        "c.jpg": [("blob", [20, 20, 100, 100]), ("blob", [250, 150, 120, 120])],  # two objects
        "d.jpg": [("blob", [20, 10, 350, 270])],  # 79 % of the image: its mask covers more than half
        "e.jpg": [("blob", [10, 10, 20, 20])],  # too small to qualify
    })
    coco = write_coco(tmp_path, images)
    stats = pbe.run_benchmark([f"--annotations={coco}", "--boxes=annotations", f"--output={tmp_path / 'bench'}"])
    assert stats["ledger"]["closed"] and stats["ledger"]["written"] == 3
    assert stats["ledger"]["rejected"] == {"no_reference_image": 1, "multiple_objects": 1, "mask_too_large": 1,
                                           "no_suitable_box": 1}
    written = {key: json.loads(s[Field.JSON]) for key, s in samples(tmp_path / "bench").items()}
    assert {pathlib.Path(meta["source"]["uri"]).name for meta in written.values()} == {"a0.jpg", "a1.jpg", "a2.jpg"}
    references = {key: meta["reference_key"] for key, meta in written.items()}
    assert sorted(references.values()) == sorted(references)  # every object is someone's reference...
    for key, reference in references.items():
        assert reference.split("_o")[0] != key.split("_o")[0]  # ...never its own image's
        assert written[key]["mask"]["kind"] == "box"
        # Benchmark references are plain crops by default: only a rotation by 0 degrees is applied.
        assert {t["name"] for t in json.loads(written[key]["reference"]["applied"])} <= {"Rotate"}
    assert_stages_close(stats)
    rows = {row["stage"]: row for row in stats["stages"]}
    assert (rows["pbe_benchmark"]["in"], rows["pbe_benchmark_pairing"]["in"], rows["write"]["in"]) == (7, 4, 3)


@pytest.mark.parametrize("stage", ["read", "decode", "pbe_pairs"])
def test_an_exception_in_any_stage_is_a_dead_letter_and_the_ledgers_close(samples_dir, tmp_path, monkeypatch, stage):
    fail_stage(monkeypatch, stage, lambda uri, key: uri.endswith("coffee.jpg"))
    output = run_coco(samples_dir, tmp_path / "run")
    stats = check_ledgers(str(output))
    assert [(pathlib.Path(d["uri"]).name, d["stage"]) for d in injected_dead_letters(output)] == [("coffee.jpg", stage)]
    assert stats["ledger"]["written"] == 2 and stats["ledger"]["dead_letters_total"] == 1
    assert "coffee.jpg" not in {pathlib.Path(json.loads(s[Field.JSON])["source"]["uri"]).name
                                for s in samples(output).values()}


def test_an_image_lost_in_the_pairs_stage_fails_the_run_naming_the_stage(samples_dir, tmp_path, monkeypatch):
    drop_in_stage(monkeypatch, "pbe_pairs", lambda uri, key: uri.endswith("coffee.jpg"))
    with pytest.raises(LedgerError, match="stage pbe_pairs does not close"):
        run_coco(samples_dir, tmp_path / "run")


def test_an_item_lost_in_the_benchmark_pairing_fails_the_run_naming_the_stage(tmp_path, monkeypatch):
    coco = write_coco(tmp_path, {f"a{i}.jpg": [("blob", [100 + 10 * i, 80, 120, 90])] for i in range(3)})
    drop_in_stage(monkeypatch, "pbe_benchmark_pairing", lambda uri, key: uri.endswith("a1.jpg"))
    with pytest.raises(LedgerError, match="stage pbe_benchmark_pairing does not close"):
        pbe.run_benchmark([f"--annotations={coco}", "--boxes=annotations", f"--output={tmp_path / 'bench'}"])
