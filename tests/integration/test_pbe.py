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

EXPECTED_PAIRS = {"astronaut.jpg": "person", "coffee.jpg": "cup", "motorcycle.jpg": "motorcycle"}


def run_coco(samples_dir: pathlib.Path, output: pathlib.Path, *extra: str) -> pathlib.Path:
    annotations = samples_dir / "annotations" / "coco.json"
    pbe.run([f"--annotations={annotations}", f"--images_root={samples_dir / 'images'}", "--boxes=annotations",
             f"--output={output}", *extra])
    return output


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
    rows = pq.read_table(next(coco_run.glob("*.parquet"))).to_pylist()
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
