"""Classical removal through RunInference on a real photo: K deterministic candidates per object."""
import concurrent.futures
import hashlib
import io
import json

import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to
from PIL import Image

from schemas import Box, Detection, ObjectMask, RawInput, candidate_key, object_key
from transforms.io.decode import DecodeConfig, decode_rgb, decode_source
from transforms.masks import dilate
from transforms.models.removal import (
    INPAINT_METHODS,
    ClassicalRemovalHandler,
    RemovalConfig,
    RemovalRequest,
    candidate_seed,
    decode_mask,
)
from transforms.models.removers import REMOVAL_HANDLERS, removal_handler


def _ellipse_mask(width, height, box):
    mask = np.zeros((height, width), np.uint8)
    center = (round((box.x0 + box.x1) / 2), round((box.y0 + box.y1) / 2))
    axes = (round(box.width / 2), round(box.height / 2))
    cv2.ellipse(mask, center, axes, 0, 0, 360, 255, -1)
    return mask > 0


def _png(mask):
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, format="PNG")
    return buffer.getvalue()


def _object(source, box, label, mask=None):
    mask = _ellipse_mask(source.width, source.height, box) if mask is None else mask
    detection = Detection(label=label, class_id=0, score=1.0, box=box, detector="test")
    return ObjectMask(object_key(source.key, 0), source.key, 0, detection, _png(mask), 1.0, "test")


def _source(samples_dir, name):
    path = samples_dir / "images" / name
    return decode_source(RawInput(str(path), path.read_bytes()), DecodeConfig())


@pytest.fixture
def coffee(samples_dir):
    """The coffee photo and its cup, the COCO sample box filled as an ellipse."""
    coco = json.loads((samples_dir / "annotations" / "coco.json").read_text())
    image_id = next(i["id"] for i in coco["images"] if i["file_name"] == "coffee.jpg")
    cup = next(a for a in coco["annotations"] if a["image_id"] == image_id)
    source = _source(samples_dir, "coffee.jpg")
    return source, _object(source, Box.from_xywh(*cup["bbox"]), "cup")


def _pixels(png):
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.mode == "RGB"
        return np.array(img)


def _digests(candidates):
    return [(c.key, hashlib.sha256(c.removed_png).hexdigest()) for c in candidates]


def test_run_inference_gives_k_deterministic_candidates(coffee):
    source, cup = coffee
    config = RemovalConfig(num_candidates=4, seed=7)
    request = config.request(source, cup)
    handler = ClassicalRemovalHandler(config)
    [direct] = handler.load_model()([request])
    [again] = ClassicalRemovalHandler(config).load_model()([request])
    assert _digests(direct) == _digests(again)

    with beam.Pipeline(runner="FnApiRunner") as p:
        results = p | beam.Create([request]) | RunInference(handler)
        assert_that(
            results | beam.Map(lambda r: (r.example.mask.key, r.model_id, len(r.inference))),
            equal_to([(cup.key, "classical", 4)]),
            label="one result per object",
        )
        assert_that(results | beam.FlatMap(lambda r: _digests(r.inference)), equal_to(_digests(direct)), label="same bytes")

    assert [c.key for c in direct] == [candidate_key(cup.key, k) for k in range(4)]
    assert [c.candidate_index for c in direct] == [0, 1, 2, 3]
    assert {c.object_key for c in direct} == {cup.key}
    assert [c.seed for c in direct] == [candidate_seed(7, cup.key, k) for k in range(4)]
    assert len({c.seed for c in direct}) == 4
    assert all(c.scores.ssim_outside is None for c in direct)  # scored by a later step
    assert len({c.removed_png for c in direct}) == 4


def test_candidates_change_only_the_dilated_mask(coffee):
    source, cup = coffee
    config = RemovalConfig(num_candidates=4, seed=3)
    plan = config.plan(cup.key, 3, 4)
    assert [p.method for p in plan] == ["telea", "patchmatch", "ns", "telea"]  # the embedded default
    [candidates] = ClassicalRemovalHandler(config).load_model()([config.request(source, cup)])
    rgb = decode_rgb(source.jpeg)
    mask = decode_mask(cup.mask_png, source.width, source.height)
    for candidate, params in zip(candidates, plan):
        assert candidate.remover == params.remover_id
        assert candidate.remover == f"classical:{params.method}:radius={params.radius_px}:dilation={params.dilation_px}"
        removed = _pixels(candidate.removed_png)
        assert removed.shape == rgb.shape
        region = dilate(mask, params.dilation_px)
        assert np.array_equal(removed[~region], rgb[~region])
        # The cup (white porcelain, dark coffee) is replaced by the saucer/table around it.
        assert np.abs(removed[mask].astype(int) - rgb[mask]).mean() > 20
        # Inpainting propagates the border: it changes pixels up to the edge of the region.
        ring = region & ~dilate(mask, max(params.dilation_px - 2, 0))
        assert (removed[ring] != rgb[ring]).any()


def test_the_seed_and_the_object_choose_the_parameters():
    config = RemovalConfig(methods=("telea", "ns"), radius_px_range=(2, 3), dilation_px_range=(4, 5), num_candidates=8)
    plan = config.plan("abc_o000", 0, 8)
    assert len(set(plan)) == 8 == config.max_candidates
    assert [p.method for p in plan] == ["telea", "ns"] * 4
    assert config.plan("abc_o000", 0, 8) == plan
    assert config.plan("abc_o000", 0, 3) == plan[:3]
    others = {config.plan("abc_o000", seed, 8) for seed in range(1, 6)} | {config.plan(f"x{i}_o000", 0, 8) for i in range(5)}
    assert len(others - {plan}) >= 9  # different seeds and objects get different plans
    with pytest.raises(ValueError, match="only 8 are distinct"):
        config.plan("abc_o000", 0, 9)


def test_a_different_seed_gives_different_candidates(coffee):
    source, cup = coffee
    model = ClassicalRemovalHandler(RemovalConfig(num_candidates=2)).load_model()
    first, second = model([RemovalRequest(source, cup, 2, seed=0), RemovalRequest(source, cup, 2, seed=1)])
    assert [c.remover for c in first] != [c.remover for c in second]
    assert {c.removed_png for c in first}.isdisjoint(c.removed_png for c in second)


def test_biharmonic_is_an_opt_in_method(samples_dir):
    source = _source(samples_dir, "chelsea.jpg")
    mask = np.zeros((source.height, source.width), bool)
    mask[100:130, 200:240] = True
    obj = _object(source, Box(200, 100, 240, 130), "patch", mask=mask)
    config = RemovalConfig(methods=("biharmonic",), dilation_px_range=(2, 2), num_candidates=1)
    [[candidate]] = ClassicalRemovalHandler(config).load_model()([config.request(source, obj)])
    assert candidate.remover.startswith("classical:biharmonic:")
    rgb, removed = decode_rgb(source.jpeg), _pixels(candidate.removed_png)
    region = dilate(mask, 2)
    assert np.array_equal(removed[~region], rgb[~region])
    assert not np.array_equal(removed[mask], rgb[mask])


def test_bad_masks_and_requests_raise(coffee):
    source, cup = coffee
    model = ClassicalRemovalHandler(RemovalConfig()).load_model()
    empty = _object(source, Box(0, 0, 1, 1), "none", mask=np.zeros((source.height, source.width), bool))
    with pytest.raises(ValueError, match="mask is empty"):
        model([RemovalRequest(source, empty, 1, 0)])
    small = _object(source, Box(0, 0, 5, 5), "small", mask=np.ones((10, 10), bool))
    with pytest.raises(ValueError, match="mask is 10x10, source is 600x400"):
        model([RemovalRequest(source, small, 1, 0)])
    foreign = ObjectMask("other_o000", "other", 0, cup.detection, cup.mask_png, 1.0, "test")
    with pytest.raises(ValueError, match="belongs to source other"):
        RemovalRequest(source, foreign, 1, 0)
    with pytest.raises(ValueError, match="num_candidates"):
        RemovalRequest(source, cup, 0, 0)
    with pytest.raises(ValueError, match="seed"):
        RemovalRequest(source, cup, 1, -1)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"methods": ()}, "non-empty"),
        ({"methods": ("telea", "telea")}, "without repeats"),
        ({"methods": ("lama",)}, "unknown inpainting methods"),
        ({"radius_px_range": (0, 3)}, "radius_px_range"),
        ({"radius_px_range": (5, 3)}, "radius_px_range"),
        ({"patch_radius_px_range": (0, 3)}, "patch_radius_px_range"),
        ({"dilation_px_range": (-1, 3)}, "dilation_px_range"),
        ({"num_candidates": 0}, "num_candidates"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"seed": -1}, "seed"),
        ({"methods": ("ns",), "radius_px_range": (3, 3), "dilation_px_range": (5, 6), "num_candidates": 3}, "2 distinct"),
    ],
)
def test_config_is_validated(options, message):
    with pytest.raises(ValueError, match=message):
        RemovalConfig(**options)


def test_config_accepts_yaml_lists():
    config = RemovalConfig(methods=["ns"], radius_px_range=[2, 4], dilation_px_range=[0, 1])
    assert config.methods == ("ns",) and config.radius_px_range == (2, 4) and config.max_candidates == 6


def test_registry_builds_handlers_by_kind():
    assert REMOVAL_HANDLERS["classical"] is ClassicalRemovalHandler
    handler = removal_handler("classical", {"methods": ["telea"], "max_batch_size": 2})
    assert isinstance(handler, ClassicalRemovalHandler) and handler.config.methods == ("telea",)
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 2}
    assert handler.get_metrics_namespace() == "counterfactory.removal"
    with pytest.raises(ValueError, match=r"unknown remover kind 'lama' \(known: \['classical'[],]"):
        removal_handler("lama", {})
    with pytest.raises(TypeError, match="needs a RemovalConfig"):
        ClassicalRemovalHandler({"methods": ["ns"]})
    with pytest.raises(TypeError):
        REMOVAL_HANDLERS["lama"] = ClassicalRemovalHandler  # the registry is read-only


def test_handler_rejects_a_remover_that_drops_candidates(coffee):
    source, cup = coffee
    handler = ClassicalRemovalHandler(RemovalConfig())
    request = RemovalRequest(source, cup, 2, 0)

    def drops_everything(batch):
        return [()] * len(batch)

    with pytest.raises(RuntimeError, match="made 0 candidates"):
        list(handler.run_inference([request], drops_everything))


def test_patch_radius_range_bounds_patchmatch_only():
    config = RemovalConfig(methods=("telea", "patchmatch"), radius_px_range=(3, 9), patch_radius_px_range=(2, 2),
                           dilation_px_range=(4, 6), num_candidates=6)
    plan = config.plan("abc_o000", 0, 6)
    assert {p.radius_px for p in plan if p.method == "patchmatch"} == {2}
    assert config.max_candidates == 6  # PatchMatch's 1x3 grid bounds every method's turn
    with pytest.raises(ValueError, match="6 distinct"):
        RemovalConfig(methods=("telea", "patchmatch"), patch_radius_px_range=(2, 2), dilation_px_range=(4, 6),
                      num_candidates=7)


def _texture(kind, size=192, period=12):
    y, x = np.mgrid[:size, :size]
    if kind == "stripes":
        on = (x // (period // 2)) % 2 == 1
    else:
        on = ((x // period) + (y // period)) % 2 == 1
    rgb = np.empty((size, size, 3), np.uint8)
    rgb[on], rgb[~on] = (220, 180, 40), (30, 60, 150)
    return rgb


def _hole(size=192):
    mask = np.zeros((size, size), bool)
    mask[70:122, 64:130] = True  # 52x66 px: wider than several periods, so blur cannot guess the pattern
    return mask


@pytest.mark.parametrize("kind", ["stripes", "checkerboard"])
def test_patchmatch_continues_a_regular_texture_that_telea_blurs(kind):
    rgb, hole = _texture(kind), _hole()
    patch = INPAINT_METHODS["patchmatch"].fill(rgb, hole, 3, 11)
    telea = INPAINT_METHODS["telea"].fill(rgb, hole, 5, 11)
    error = {name: np.abs(out.astype(int) - rgb)[hole].mean() for name, out in (("patchmatch", patch), ("telea", telea))}
    # Measured: stripes 0.6 vs 61.6, checkerboard 0.2 vs 70.3 (mean absolute error in the hole, of 255).
    assert error["patchmatch"] < 10 and error["telea"] > 40 and error["patchmatch"] * 4 < error["telea"], error
    assert np.array_equal(patch[~hole], rgb[~hole])


def _small_photo(coffee):
    """The coffee photo and the cup's region at a quarter of its size: PatchMatch on the full photo takes 2 s."""
    source, cup = coffee
    rgb = np.ascontiguousarray(decode_rgb(source.jpeg)[::4, ::4])
    return rgb, dilate(decode_mask(cup.mask_png, source.width, source.height), 5)[::4, ::4]


def test_patchmatch_is_deterministic_for_a_seed_and_draws_from_it(coffee):
    rgb, region = _small_photo(coffee)
    fill = INPAINT_METHODS["patchmatch"].fill
    first, again, other = fill(rgb, region, 3, 5), fill(rgb, region, 3, 5), fill(rgb, region, 3, 6)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)
    assert np.array_equal(first[~region], rgb[~region])


def test_patchmatch_fills_from_concurrent_threads_match_sequential_ones(coffee):
    rgb, region = _small_photo(coffee)
    fill = INPAINT_METHODS["patchmatch"].fill
    seeds = [1, 2] * 4
    expected = {seed: fill(rgb, region, 3, seed) for seed in set(seeds)}
    assert not np.array_equal(expected[1], expected[2])
    with concurrent.futures.ThreadPoolExecutor(len(seeds)) as pool:
        results = list(pool.map(lambda seed: fill(rgb, region, 3, seed), seeds))
    assert all(np.array_equal(result, expected[seed]) for result, seed in zip(results, seeds))


def test_patchmatch_rejects_a_region_without_known_pixels():
    rgb = _texture("stripes", size=32)
    with pytest.raises(ValueError, match="needs known pixels"):
        INPAINT_METHODS["patchmatch"].fill(rgb, np.ones((32, 32), bool), 3, 0)
    with pytest.raises(ValueError, match="same height and width"):
        INPAINT_METHODS["patchmatch"].fill(rgb, np.eye(16, dtype=bool), 3, 0)
