"""Every kind of output read by the readers a trainer uses, as a user would call them.

Hugging Face ``datasets`` over the tars and over the folder (its card), webdataset in a
``DataLoader`` with four workers through the README's snippet as printed, wids split
between two ranks, pyarrow over the Parquet. The outputs are small real runs: a candidate
set written by the real encoder and writer (some sources carry decode notes, as real
inputs do: the ``list<null>`` type hole of issue 18), the pairs ``build`` makes of it with
review decisions, Paint-by-Example pairs from COCO boxes, frame pairs of both branches and
source shards ingested from a COCO file annotating a few images only, the un-annotated first
(so the first samples ``datasets`` infers types from have no annotation).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
import warnings

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pyarrow.dataset as pads  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import webdataset  # noqa: E402
import wids  # noqa: E402

from jobs import build, cli, ingest, pbe, video  # noqa: E402
from pipeline.card import CARD  # noqa: E402
from pipeline.publish import REPOSITORY_MANIFEST, publish_version  # noqa: E402
from pipeline.testing import write_candidate_set  # noqa: E402
from review.contact_sheet import CAPTION_PX, mimic_sheet  # noqa: E402
from schemas import sample as sample_format  # noqa: E402
from schemas.decisions import Decision, Verdict, decisions_jsonl  # noqa: E402
from schemas.sample import Field  # noqa: E402
from tests.integration.test_video_pairs import pan, scene, write_video  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
KINDS = ("sources", "candidates", "pairs", "pbe", "frames")
METADATA_SCHEMAS = {"sources": sample_format.SOURCE_METADATA_SCHEMA,
                    "candidates": sample_format.CANDIDATE_METADATA_SCHEMA, "pairs": sample_format.PAIR_METADATA_SCHEMA,
                    "pbe": sample_format.PBE_METADATA_SCHEMA, "frames": sample_format.MIMIC_METADATA_SCHEMA}
#: The bundled photos annotated in the sources' COCO file: the three whose keys (their bytes' sha256) sort last,
#: one with a polygon mask: a run's tars hold samples in key order, so the eight un-annotated ones come first.
ANNOTATED = {"rocket.jpg": None, "vtest_f0397.jpg": [[10, 10, 60, 10, 60, 50, 10, 50]], "bikes_f0083.jpg": None}
BOXES = {"astronaut.jpg": (512, 512, [[22, 15, 319, 482], [150, 100, 200, 200], [300, 300, 150, 150]]),
         "coffee.jpg": (600, 400, [[173, 18, 60, 269], [300, 100, 200, 200], [50, 150, 150, 150]]),
         "motorcycle.jpg": (741, 500, [[93, 16, 496, 419], [400, 200, 200, 200]]),
         "rocket.jpg": (640, 427, [[200, 50, 150, 300]])}


def write_coco(path: pathlib.Path) -> pathlib.Path:
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for image_id, (name, (width, height, boxes)) in enumerate(BOXES.items(), start=1):
        coco["images"].append({"id": image_id, "file_name": name, "width": width, "height": height})
        coco["annotations"] += [{"id": len(coco["annotations"]) + i, "image_id": image_id, "category_id": 1, "bbox": box,
                                 "iscrowd": 0, "area": box[2] * box[3]} for i, box in enumerate(boxes, start=1)]
    path.write_text(json.dumps(coco))
    return path


def write_sparse_coco(path: pathlib.Path, images: pathlib.Path) -> pathlib.Path:
    """Every bundled photo, a box on those in :data:`ANNOTATED` only (one with a polygon)."""
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    for image_id, image in enumerate(sorted(images.iterdir()), start=1):
        with PIL.Image.open(image) as opened:
            coco["images"].append({"id": image_id, "file_name": image.name, "width": opened.width,
                                   "height": opened.height})
        if image.name in ANNOTATED:
            coco["annotations"].append({"id": image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                        "bbox": [10, 10, 50, 40], "area": 2000,
                                        **({"segmentation": ANNOTATED[image.name]} if ANNOTATED[image.name] else {})})
    path.write_text(json.dumps(coco))
    return path


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, samples_dir) -> dict[str, pathlib.Path]:
    base = tmp_path_factory.mktemp("readers")
    images = samples_dir / "images"
    ingest.run([f"--annotations={write_sparse_coco(base / 'sparse.json', images)}", f"--images_root={images}",
                f"--output={base / 'sources'}"])
    candidates = write_candidate_set(base / "candidates", 40, max_count=5, noted=20)
    keys = sorted(s["__key__"] for s in webdataset.WebDataset(str(candidates / "shard-000000-00.tar"), shardshuffle=False))
    decisions = base / "decisions.jsonl"
    decisions.write_bytes(decisions_jsonl([Decision(key, Verdict.ACCEPT, "ana", "2026-12-01T10:00:00+00:00")
                                           for key in keys[-2:]]))
    build.run([f"--candidates={candidates}", f"--output={base / 'datasets'}", "--name=demo", "--version=v1",
               f"--decisions={decisions}"])
    pbe.run([f"--annotations={write_coco(base / 'coco.json')}", f"--images_root={samples_dir / 'images'}",
             "--boxes=annotations", f"--output={base / 'pbe'}"])
    videos = base / "videos"
    videos.mkdir()
    write_video(videos / "two_shots.mp4", pan(scene(1), 30, 3) + pan(scene(2), 30, 3))
    video.run([f"--videos={videos}/*.mp4", f"--input={samples_dir / 'images' / 'astronaut.jpg'}",
               f"--input={samples_dir / 'images' / 'coffee.jpg'}", f"--output={base / 'frames'}",
               "--sampling={min_gap_s: 0.3, max_gap_s: 2.0, max_pairs: 8}", "--decode={short_side: 160}"])
    return {"sources": base / "sources", "candidates": candidates, "pairs": base / "datasets" / "demo" / "v1", "pbe": base / "pbe",
            "frames": base / "frames"}


def tars(folder: pathlib.Path) -> list[str]:
    return [str(folder / e["url"]) for e in json.loads((folder / "shardindex.json").read_text())["shardlist"]]


def raw_samples(folder: pathlib.Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in webdataset.WebDataset(tars(folder), shardshuffle=False)}


def holds(loaded, raw) -> bool:
    """``loaded`` (a row as ``datasets`` gives it) has every value of ``raw`` (its JSON); keys ``raw`` lacks are null."""
    if isinstance(raw, dict):
        return isinstance(loaded, dict) and all(holds(loaded.get(k), v) for k, v in raw.items()) and all(
            loaded[k] is None for k in set(loaded) - set(raw))
    if isinstance(raw, list):
        return isinstance(loaded, list) and len(loaded) == len(raw) and all(map(holds, loaded, raw))
    return loaded == raw


def json_types(value, path: str, types: dict[str, set[str]]) -> None:
    if isinstance(value, dict):
        types.setdefault(path, set()).add("object")
        for key, item in value.items():
            json_types(item, f"{path}.{key}", types)
    elif isinstance(value, list):
        types.setdefault(path, set()).add("list" if value else "empty list")
        for item in value:
            json_types(item, path + "[]", types)
    else:
        types.setdefault(path, set()).add("number" if type(value) in (int, float) else type(value).__name__)


@pytest.fixture(scope="module")
def snippet() -> str:
    """The README's first python block under "Train on a version", exactly as printed."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("\n## Train on a version\n", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_first_source_samples_have_no_annotation_and_later_ones_do(outputs):
    rows = pads.dataset([shard.replace(".tar", ".parquet") for shard in tars(outputs["sources"])]).to_table()
    labels = rows.column("labels").to_pylist()
    assert labels[:5] == [[]] * 5 and labels.count(["thing"]) == len(ANNOTATED)


@pytest.mark.parametrize("kind", KINDS)
def test_every_sample_of_a_kind_has_the_same_json_keys_and_types(outputs, kind):
    samples = [json.loads(s[Field.JSON]) for s in raw_samples(outputs[kind]).values()]
    per_sample = []
    for meta in samples:
        types: dict[str, set[str]] = {}
        json_types(meta, "", types)
        per_sample.append(types)
    for path in set().union(*per_sample):
        seen = [types.get(path) for types in per_sample]
        assert all(seen), f"{kind}: {path} is missing in {seen.count(None)} of {len(seen)} samples"
        assert len(set().union(*seen)) == 1, f"{kind}: {path} has types {set().union(*seen)}"
    assert all(meta["format_version"] == sample_format.FORMAT_VERSION for meta in samples)


@pytest.mark.parametrize("kind", KINDS)
def test_datasets_reads_every_sample_from_the_tars(outputs, kind, tmp_path):
    raw = raw_samples(outputs[kind])
    loaded = datasets.load_dataset("webdataset", data_files={"train": tars(outputs[kind])}, split="train",
                                   cache_dir=str(tmp_path))
    assert sorted(loaded["__key__"]) == sorted(raw)
    for row in loaded:
        assert holds(row["json"], json.loads(raw[row["__key__"]][Field.JSON])), row["__key__"]


@pytest.mark.parametrize("kind", KINDS)
def test_datasets_loads_the_folder_through_its_card(outputs, kind, tmp_path):
    card = (outputs[kind] / CARD).read_text()
    assert card.startswith("---\n") and "config_name: default" in card and "task_categories" in card
    raw = raw_samples(outputs[kind])
    loaded = datasets.load_dataset(str(outputs[kind]), split="train", cache_dir=str(tmp_path))
    assert sorted(loaded["__key__"]) == sorted(raw)
    assert isinstance(loaded.features[Field.JSON], dict) and isinstance(loaded.features[Field.SRC], datasets.Image)
    assert kind == "sources" or isinstance(loaded.features[Field.MASK], datasets.Image)
    for row in loaded:
        assert holds(row["json"], json.loads(raw[row["__key__"]][Field.JSON])), row["__key__"]
        assert kind in ("sources", "candidates") or row[Field.MASK].size == row[Field.SRC].size


@pytest.mark.parametrize("kind", KINDS)
def test_the_readme_snippet_feeds_four_dataloader_workers_every_sample_decoded_right(
        outputs, kind, snippet, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "demo").symlink_to(outputs[kind])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(snippet, "README.md", "exec"), namespace)
    assert not [w for w in caught if "shardshuffle" in str(w.message)]
    assert namespace["loader"].num_workers == 4
    seen = [sample for batch in namespace["loader"] for sample in batch]
    assert sorted(s["__key__"] for s in seen) == sorted(raw_samples(outputs[kind]))
    for sample in seen:
        images = {name: array for name, array in sample.items() if name.endswith((".png", ".jpg"))}
        for name, array in images.items():
            channels = 4 if name == "object.png" else 0 if name.startswith(("mask", "region")) else 3
            assert array.ndim == (2 if not channels else 3) and (not channels or array.shape[2] == channels), name
        assert kind == "sources" or images[Field.MASK].shape == images[Field.SRC].shape[:2]
        assert sample["json"]["key"] == sample["__key__"]
        if Field.OBJECT in images:
            assert 0 < (images[Field.OBJECT][..., 3] > 0).mean() <= 1 and (images[Field.OBJECT][..., 3] < 255).any()


@pytest.mark.parametrize("kind", KINDS)
def test_wids_split_between_two_ranks_covers_every_sample_once(outputs, kind, snippet, tmp_path):
    namespace: dict = {}
    exec(compile(snippet.split("\nshards = ", 1)[0], "README.md", "exec"), namespace)  # decode() alone
    samples = wids.ShardListDataset(str(outputs[kind] / "shardindex.json"), transformations=[namespace["decode"]],
                                    cache_dir=str(tmp_path / "wids"))
    ranks = [[samples[i]["__key__"] for i in torch.utils.data.Subset(samples, range(rank, len(samples), 2)).indices]
             for rank in range(2)]
    assert not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == sorted(raw_samples(outputs[kind]))
    assert samples[0][Field.MASK].ndim == 2 if kind != "sources" else samples[0][Field.SRC].ndim == 3


@pytest.mark.parametrize("kind", KINDS)
def test_pyarrow_reads_one_metadata_row_per_sample(outputs, kind):
    table = pads.dataset([shard.replace(".tar", ".parquet") for shard in tars(outputs[kind])]).to_table()
    schema = METADATA_SCHEMAS[kind]
    assert [(f.name, f.type) for f in table.schema] == [(f.name, f.type) for f in schema]
    assert sorted(table.column("key").to_pylist()) == sorted(raw_samples(outputs[kind]))


def test_a_published_version_carries_its_card(outputs, tmp_path):
    published = publish_version(str(outputs["pairs"]), str(tmp_path / "repo"))
    manifest = json.loads((pathlib.Path(published.url) / REPOSITORY_MANIFEST).read_text())
    assert CARD in {entry["path"] for entry in manifest["files"]}
    assert (pathlib.Path(published.url) / CARD).read_bytes() == (outputs["pairs"] / CARD).read_bytes()


@pytest.mark.parametrize("kind", ("candidates", "pairs", "pbe", "frames"))
def test_the_contact_sheet_draws_every_kind(outputs, kind, tmp_path):
    picture = tmp_path / f"{kind}.png"
    assert cli.main(["sheet", "--shards", str(outputs[kind]), "--output", str(picture), "--side", "64"]) == 0
    with PIL.Image.open(picture) as sheet:
        assert sheet.height >= 64 and np.asarray(sheet.convert("L"), np.float32).std() > 10, "the tiles are drawn"


def test_the_frame_pair_sheet_draws_both_branches(outputs):
    """Format 3 frame pairs carry both branches' fields; the sheet captions each by the branch it is from."""
    by_branch = {}
    for key, sample in raw_samples(outputs["frames"]).items():
        by_branch.setdefault(json.loads(sample[Field.JSON])["branch"], key)
    assert set(by_branch) == {"video", "image"}
    sheet = mimic_sheet(tars(outputs["frames"]), list(by_branch.values()), side=64, per_row=2)
    assert sheet.size == (2 * 2 * 64 + 8, 64 + CAPTION_PX)
