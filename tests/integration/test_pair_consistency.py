"""Consistent pairs on a real small build: embedded bootstrap on three bundled photos, then ``build``.

For every written pair, input and target must be equal outside the pair's mask, exactly:
every member compared is lossless or the source's own JPEG (``src.jpg`` is never
re-encoded; ``removed.png`` and ``pasted.png`` are PNGs made from its decoded pixels), so
there is no codec noise to tolerate and any difference is a real edit the mask misses.
"""
from __future__ import annotations

import io
import json
import pathlib

import numpy as np
import pytest
import webdataset
from PIL import Image

from jobs import bootstrap
from jobs import build as build_job
from schemas.sample import PAIRS, Field
from transforms.io.decode import decode_rgb
from transforms.masks import decode_mask_png

pytestmark = pytest.mark.network

SAMPLES = pathlib.Path(__file__).parents[2] / "jobs" / "samples" / "images"
#: Four objects: the cup, the cat, the astronaut and her flag; the default remover (telea, patchmatch, ns, telea).
IMAGES = ("coffee.jpg", "chelsea.jpg", "astronaut.jpg")
#: Every threshold off, so that every object becomes a pair and every pair is checked.
NO_THRESHOLDS = "{ssim_outside: null, change_inside: null, redetect_score: null, seam: null, quality: null}"


def _samples(folder: pathlib.Path) -> list[dict]:
    return list(webdataset.WebDataset(sorted(str(p) for p in folder.glob("shard-*.tar")), shardshuffle=False))


def _image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[list[dict], list[dict]]:
    root = tmp_path_factory.mktemp("consistency")
    candidates = root / "candidates"
    bootstrap.run(["--output", str(candidates), *(f"--input={SAMPLES / name}" for name in IMAGES)])
    build_job.run([f"--candidates={candidates}", f"--output={root / 'datasets'}", "--name=demo", "--version=v1",
                   f"--thresholds={NO_THRESHOLDS}"])
    return _samples(candidates), _samples(root / "datasets" / "demo" / "v1")


def test_every_pair_differs_from_its_target_only_inside_its_mask(built):
    candidates, pairs = built
    assert len(pairs) == len(candidates) >= 3
    for pair in pairs:
        meta = json.loads(pair[Field.JSON])
        assert meta["pairs"] == PAIRS
        for name, members in meta["pairs"].items():
            source, target = _image(pair[members["input"]]), _image(pair[members["target"]])
            mask = decode_mask_png(pair[members["mask"]], source.shape[1], source.shape[0])
            changed = (source != target).any(axis=2)
            assert not (changed & ~mask).any(), f"{pair['__key__']} {name}: {int((changed & ~mask).sum())} px"
            assert changed.sum() > 0.05 * mask.sum(), f"{pair['__key__']} {name}: the pair changes nothing"
        # The object mask lies inside the region; the region is what the remover grew around it.
        region = decode_mask_png(pair[Field.REGION])
        assert region[decode_mask_png(pair[Field.MASK])].all()
        assert region.sum() > decode_mask_png(pair[Field.MASK]).sum()


def test_every_candidate_repaints_only_its_region(built):
    candidates, _ = built
    for sample in candidates:
        src = decode_rgb(sample[Field.SRC])
        for candidate in json.loads(sample[Field.JSON])["candidates"]:
            region = decode_mask_png(sample[candidate["region"]], src.shape[1], src.shape[0])
            removed = decode_rgb(sample[candidate["field"]])
            assert np.array_equal(removed[~region], src[~region]), candidate["key"]
        methods = [c["remover"].split(":")[1] for c in json.loads(sample[Field.JSON])["candidates"]]
        assert methods == ["telea", "patchmatch", "ns", "telea"]


def test_the_pasted_edge_is_soft(built):
    _, pairs = built
    for pair in pairs:
        with Image.open(io.BytesIO(pair[Field.OBJECT])) as cutout:
            alpha = np.array(cutout.convert("RGBA"))[..., 3]
        assert ((alpha > 0) & (alpha < 255)).sum() > 0.5 * (alpha == 255).sum() ** 0.5  # a ramp all round the outline
