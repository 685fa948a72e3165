"""Paint-by-Example pair geometry: box rules, masks, crops and seeded references."""
from __future__ import annotations

import hashlib
import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.pvalue import TaggedOutput

from schemas import Box, Detection, Reason, Rejection, SourceImage, object_key
from schemas.sample import LabelledBox
from transforms.io.decode import encode_jpeg
from transforms.io.shards import EncodedSample
from transforms.pbe import (
    UNPAIRED_TAG,
    BoxFilterConfig,
    CropConfig,
    ImageBoxes,
    MakePairs,
    MaskConfig,
    PairSettings,
    PbeConfig,
    ReferenceConfig,
    bezier_mask,
    check_box,
    crop_and_resize,
    detected_boxes,
    extended_box,
    make_pair,
    object_mask,
    pixel_box,
    reference_crop,
    square_crop,
)
from transforms.selection import SelectionConfig, select_objects

REPO = Path(__file__).resolve().parents[2]
W, H = 1000, 500  # 500_000 px: 0.02 of it is 10_000, 0.8 is 400_000


def scene(width: int = 320, height: int = 240, seed: int = 0) -> np.ndarray:
    """A textured RGB image, so flips, blurs and warps all change pixels."""
    rng = np.random.default_rng(seed)
    image = cv2.resize(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8), (width, height))
    cv2.circle(image, (width // 2, height // 2), min(width, height) // 4, (220, 40, 40), -1)
    return image


def random_box(rng: np.random.Generator, width: int, height: int) -> Box:
    w = rng.uniform(4, width * 0.9)
    h = rng.uniform(4, height * 0.9)
    x0 = rng.uniform(0, width - w)
    y0 = rng.uniform(0, height - h)
    return Box(x0, y0, x0 + w, y0 + h)


def rect(width: int, height: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[box[1]:box[3], box[0]:box[2]] = True
    return mask


# --------------------------------------------------------------------------- box filters

NO_AREA = BoxFilterConfig(min_area_fraction=0.0)


@pytest.mark.parametrize(
    ("box", "config", "expected"),
    [
        ((0, 0, 100, 100), BoxFilterConfig(), None),  # area exactly 0.02: bounds are inclusive
        ((0, 0, 100, 99.9), BoxFilterConfig(), Reason.BOX_TOO_SMALL),
        ((0, 0, 800, 500), BoxFilterConfig(), None),  # area exactly 0.8
        ((0, 0, 801, 500), BoxFilterConfig(), Reason.BOX_TOO_LARGE),
        ((0, 0, 32, 100), NO_AREA, None),  # shorter side exactly 32
        ((0, 0, 31.9, 100), NO_AREA, Reason.BOX_SIDE_TOO_SHORT),
        ((0, 0, 400, 100), BoxFilterConfig(), None),  # aspect exactly 4
        ((0, 0, 401, 100), BoxFilterConfig(), Reason.BOX_ASPECT_RATIO),
        ((0, 0, 100, 401), BoxFilterConfig(), Reason.BOX_ASPECT_RATIO),  # tall counts too
        ((0, 0, 10, 10), BoxFilterConfig(), Reason.BOX_TOO_SMALL),  # small and short: area first
        ((0, 0, 320, 31.9), BoxFilterConfig(), Reason.BOX_SIDE_TOO_SHORT),  # short and thin: side first
        ((-100, -100, 100, 100), BoxFilterConfig(), None),  # clipped to 100x100 = 0.02
        ((-100, -100, 99, 100), BoxFilterConfig(), Reason.BOX_TOO_SMALL),  # clipped to 99x100
    ],
)
def test_check_box_rejects_exactly_what_it_should(box, config, expected):
    result = check_box(Box(*box), W, H, config)
    assert (None if result is None else result[0]) == expected


def test_check_box_details_say_what_failed():
    reason, detail = check_box(Box(0, 0, 100, 55), W, H, BoxFilterConfig())
    assert reason is Reason.BOX_TOO_SMALL and detail == "area fraction 0.011 < 0.02"
    assert check_box(Box(0, 0, 500, 100), W, H, BoxFilterConfig())[1] == "aspect ratio 5 > 4"


# --------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: BoxFilterConfig(min_area_fraction=-0.1), "min_area_fraction"),
        (lambda: BoxFilterConfig(max_area_fraction=1.5), "max_area_fraction"),
        (lambda: BoxFilterConfig(min_area_fraction=0.5, max_area_fraction=0.4), "min_area_fraction 0.5 >"),
        (lambda: BoxFilterConfig(min_side_px=-1), "min_side_px"),
        (lambda: BoxFilterConfig(min_side_px=True), "min_side_px"),
        (lambda: BoxFilterConfig(max_aspect_ratio=0.5), "max_aspect_ratio"),
        (lambda: BoxFilterConfig(max_aspect_ratio=math.nan), "max_aspect_ratio"),
        (lambda: MaskConfig(extend_fraction=1.2), "extend_fraction"),
        (lambda: MaskConfig(bezier_probability=-0.1), "bezier_probability"),
        (lambda: MaskConfig(points_per_edge=1), "points_per_edge"),
        (lambda: MaskConfig(points_per_edge=20.0), "points_per_edge"),
        (lambda: MaskConfig(jitter_px=(5, 1)), "lo 5 > hi 1"),
        (lambda: MaskConfig(jitter_px=(-1, 2)), "jitter_px"),
        (lambda: MaskConfig(jitter_px=(1, 2, 3)), "jitter_px"),
        (lambda: MaskConfig(jitter_px=5), "jitter_px"),
        (lambda: CropConfig(keep_fraction=1.1), "keep_fraction"),
        (lambda: CropConfig(size=15), "size"),
        (lambda: CropConfig(size=512.0), "size"),
        (lambda: ReferenceConfig(size=8), "size"),
        (lambda: ReferenceConfig(pad_fraction=1.5), "pad_fraction"),
        (lambda: ReferenceConfig(flip_p=2), "flip_p"),
        (lambda: ReferenceConfig(blur_p=math.nan), "blur_p"),
        (lambda: ReferenceConfig(elastic_p="0.3"), "elastic_p"),
        (lambda: ReferenceConfig(color_jitter_p=-1), "color_jitter_p"),
        (lambda: ReferenceConfig(rotate_limit_deg=181), "rotate_limit_deg"),
        (lambda: ReferenceConfig(rotate_limit_deg=-5), "rotate_limit_deg"),
        (lambda: PbeConfig(masks={"extend_fraction": 0.4}), "masks must be a MaskConfig"),
        (lambda: PbeConfig(reference=CropConfig()), "reference must be a ReferenceConfig"),
    ],
)
def test_configs_reject_bad_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_jitter_from_yaml_list_becomes_a_tuple():
    assert MaskConfig(jitter_px=[0, 3]).jitter_px == (0, 3)


# --------------------------------------------------------------------------- masks


def test_extended_box_holds_the_box_inside_the_image():
    rng = np.random.default_rng(7)
    for _ in range(200):
        width, height = int(rng.integers(40, 800)), int(rng.integers(40, 800))
        box = random_box(rng, width, height)
        fraction = float(rng.uniform(0, 1))
        x0, y0, x1, y1 = pixel_box(box, width, height)
        ex0, ey0, ex1, ey1 = ext = extended_box(box, width, height, fraction, rng)
        assert all(isinstance(v, int) for v in ext)
        assert 0 <= ex0 <= x0 and 0 <= ey0 <= y0 and x1 <= ex1 <= width and y1 <= ey1 <= height
        # Each side grows by at most `fraction` of the free space on that side.
        for grown, free in ((x0 - ex0, x0), (y0 - ey0, y0), (ex1 - x1, width - x1), (ey1 - y1, height - y1)):
            assert grown <= math.floor(fraction * free)


def test_extended_box_without_fraction_is_the_box_pixels():
    box = Box(10.5, 20.2, 50.5, 60.0)
    assert extended_box(box, 100, 100, 0.0, np.random.default_rng(0)) == (10, 20, 51, 60)


def test_extended_box_uses_the_free_space():
    grown = [extended_box(Box(400, 400, 500, 500), 1000, 1000, 0.4, np.random.default_rng(s)) for s in range(50)]
    assert min(b[0] for b in grown) < 400 - 80 and max(b[2] for b in grown) > 500 + 80


def test_box_mask_is_the_extended_box():
    for seed in range(20):
        box = Box(30.3, 40.7, 120.2, 90.1)
        mask, record = object_mask(box, 200, 150, MaskConfig(bezier_probability=0.0), np.random.default_rng(seed))
        assert record["kind"] == "box"
        assert mask.dtype == bool and mask.shape == (150, 200)
        np.testing.assert_array_equal(mask, rect(200, 150, record["extended_box"]))


def test_bezier_masks_are_one_region_inside_the_extended_box_covering_the_box():
    rng = np.random.default_rng(11)
    config = MaskConfig(bezier_probability=1.0)
    margin = config.jitter_px[1] + 1
    for _ in range(200):
        width, height = int(rng.integers(48, 700)), int(rng.integers(48, 700))
        box = random_box(rng, width, height)
        mask, record = object_mask(box, width, height, config, rng)
        assert record["kind"] == "bezier"
        ext = record["extended_box"]
        assert not (mask & ~rect(width, height, ext)).any(), "mask pixel outside the extended box"
        for connectivity in (4, 8):
            count, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=connectivity)
            assert count == 2, f"{count - 1} regions ({connectivity}-connected)"
        outside = np.pad(~mask, 1, constant_values=True)  # a ring joins background split by the border
        assert cv2.connectedComponents(outside.astype(np.uint8), connectivity=4)[0] == 2, "mask has a hole"
        # The outline bulges out from the box; only the point jitter can eat into it.
        x0, y0, x1, y1 = pixel_box(box, width, height)
        core = mask[y0 + margin:y1 - margin, x0 + margin:x1 - margin]
        assert core.all()


def test_bezier_masks_are_irregular_not_boxes():
    box = Box(200, 150, 300, 250)
    config = MaskConfig(bezier_probability=1.0)
    for mask, record in (object_mask(box, 500, 400, config, np.random.default_rng(s)) for s in range(10)):
        assert mask.sum() < rect(500, 400, record["extended_box"]).sum()
        assert mask.sum() > 0.9 * 100 * 100


def test_bezier_mask_survives_heavy_jitter_on_a_tiny_box():
    config = MaskConfig(jitter_px=(10, 30), points_per_edge=50)
    for seed in range(50):
        rng = np.random.default_rng(seed)
        mask = bezier_mask((20, 20, 40, 40), 64, 64, config, rng, box=Box(25, 25, 35, 35))
        assert cv2.connectedComponents(mask.astype(np.uint8))[0] == 2
        assert not (mask & ~rect(64, 64, (20, 20, 40, 40))).any()


def test_bezier_mask_without_a_box_roughens_the_extended_box():
    config, ext = MaskConfig(), (30, 40, 130, 100)
    for seed in range(20):
        mask = bezier_mask(ext, 160, 120, config, np.random.default_rng(seed))
        assert cv2.connectedComponents(mask.astype(np.uint8))[0] == 2
        assert not (mask & ~rect(160, 120, ext)).any()
        assert mask[46:94, 36:124].all() and mask.sum() < 100 * 60


def test_bezier_mask_rejects_a_box_outside_the_extended_box():
    with pytest.raises(ValueError, match="not inside ext_box"):
        bezier_mask((10, 10, 50, 50), 100, 100, MaskConfig(), np.random.default_rng(0), box=Box(5, 10, 40, 40))
    with pytest.raises(ValueError, match="ext_box"):
        bezier_mask((10, 10, 150, 50), 100, 100, MaskConfig(), np.random.default_rng(0))


# --------------------------------------------------------------------------- crops


def test_square_crop_holds_the_box_inside_the_image():
    rng = np.random.default_rng(3)
    for _ in range(300):
        width, height = int(rng.integers(32, 900)), int(rng.integers(32, 900))
        box = random_box(rng, width, height)
        x0, y0, x1, y1 = pixel_box(box, width, height)
        cx0, cy0, cx1, cy1 = crop = square_crop(box, width, height, CropConfig(), rng)
        assert all(isinstance(v, int) for v in crop)
        assert 0 <= cx0 < cx1 <= width and 0 <= cy0 < cy1 <= height
        assert cx1 - cx0 == cy1 - cy0, "always square: the shorter side bounds it"
        side = cx1 - cx0
        if max(x1 - x0, y1 - y0) <= min(width, height):
            assert cx0 <= x0 and cy0 <= y0 and x1 <= cx1 and y1 <= cy1
        else:  # the largest square, holding as much of the box as any square can
            assert side == min(width, height)
            assert min(cx1, x1) - max(cx0, x0) == min(side, x1 - x0)
            assert min(cy1, y1) - max(cy0, y0) == min(side, y1 - y0)


def test_square_crop_scale_follows_keep_fraction():
    box = Box(400, 300, 500, 350)
    tight = {square_crop(box, 1000, 800, CropConfig(keep_fraction=0.0), np.random.default_rng(s)) for s in range(20)}
    assert {c[2] - c[0] for c in tight} == {100}
    sides = [square_crop(box, 1000, 800, CropConfig(keep_fraction=1.0), np.random.default_rng(s)) for s in range(50)]
    assert max(c[2] - c[0] for c in sides) > 600


def test_crop_and_resize_keeps_mask_and_image_aligned():
    rgb = np.zeros((600, 1200, 3), dtype=np.uint8)
    rgb[:, :600] = 255
    mask = np.zeros((600, 1200), dtype=bool)
    mask[:, :600] = True
    image, small = crop_and_resize(rgb, mask, (300, 0, 900, 600), 300)
    assert image.shape == (300, 300, 3) and image.dtype == np.uint8
    assert small.shape == (300, 300) and small.dtype == bool
    assert small[:, :150].all() and not small[:, 150:].any()
    assert (image[:, :150] == 255).all() and (image[:, 150:] == 0).all()


def test_crop_and_resize_enlarges_small_crops():
    rgb = scene(100, 80)
    image, mask = crop_and_resize(rgb, np.ones((80, 100), dtype=bool), (10, 10, 50, 50), 512)
    assert image.shape == (512, 512, 3) and mask.all()


# --------------------------------------------------------------------------- references


def test_reference_is_seeded():
    rgb, box, config = scene(), Box(80, 60, 240, 180), ReferenceConfig()
    first, record = reference_crop(rgb, box, config, 5)
    again, record_again = reference_crop(rgb, box, config, 5)
    assert first.shape == (224, 224, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert record == record_again
    others = [reference_crop(rgb, box, config, seed)[0] for seed in range(6, 10)]
    assert all(not np.array_equal(first, other) for other in others)


def test_reference_record_is_json_and_names_what_was_applied():
    config = ReferenceConfig(flip_p=1, blur_p=1, elastic_p=1, color_jitter_p=1)
    _, record = reference_crop(scene(), Box(80, 60, 240, 180), config, 123)
    assert json.loads(json.dumps(record)) == record
    assert record["seed"] == 123 and record["crop"] == [80, 60, 240, 180]
    applied = {a["name"]: a for a in record["applied"]}
    assert list(applied) == ["HorizontalFlip", "Rotate", "Blur", "ElasticTransform", "ColorJitter"]
    assert applied["ElasticTransform"]["omitted"] == ["map_x", "map_y"]
    assert len(applied["Rotate"]["params"]["matrix"]) == 3
    assert set(applied["ColorJitter"]["params"]) >= {"brightness", "contrast", "saturation", "hue"}
    assert abs(applied["ColorJitter"]["params"]["hue"]) <= 0.05


def test_reference_transforms_draw_independently():
    """One seed for every transform would make blur, elastic and colour jitter (same p) fire together."""
    config, rgb, box = ReferenceConfig(), scene(96, 96), Box(20, 20, 76, 76)
    fired = [{a["name"] for a in reference_crop(rgb, box, config, seed)[1]["applied"]} for seed in range(200)]
    patterns = {tuple(name in names for name in ("Blur", "ElasticTransform", "ColorJitter")) for names in fired}
    assert len(patterns) >= 6
    share = sum("HorizontalFlip" in names for names in fired) / len(fired)
    assert 0.35 < share < 0.65


def test_reference_without_augmentation_is_the_resized_crop():
    config = ReferenceConfig(size=64, flip_p=0, rotate_limit_deg=0, blur_p=0, elastic_p=0, color_jitter_p=0)
    rgb = scene()
    reference, record = reference_crop(rgb, Box(10, 10, 138, 138), config, 0)
    assert [a["name"] for a in record["applied"]] == ["Rotate"]
    expected = cv2.resize(rgb[10:138, 10:138], (64, 64), interpolation=cv2.INTER_AREA)
    assert np.abs(reference.astype(int) - expected).max() <= 1


def test_reference_padding_is_clipped_to_the_image():
    _, record = reference_crop(scene(320, 240), Box(10, 100, 110, 200), ReferenceConfig(pad_fraction=0.2), 0)
    assert record["crop"] == [0, 80, 130, 220]


_CHILD = """
import hashlib, json, sys
import numpy as np
sys.path.insert(0, {repo!r})
from tests.unit.test_pbe import scene
from schemas import Box
from transforms.pbe import ReferenceConfig, reference_crop
np.random.seed(999)
image, record = reference_crop(scene(), Box(80, 60, 240, 180), ReferenceConfig(elastic_p=1, blur_p=1), 77)
print(hashlib.sha256(image.tobytes()).hexdigest(), json.dumps(record, sort_keys=True))
"""


def test_reference_is_identical_across_processes():
    np.random.seed(1)  # the global state must not matter
    image, record = reference_crop(scene(), Box(80, 60, 240, 180), ReferenceConfig(elastic_p=1, blur_p=1), 77)
    here = f"{hashlib.sha256(image.tobytes()).hexdigest()} {json.dumps(record, sort_keys=True)}"
    child = subprocess.run([sys.executable, "-c", _CHILD.format(repo=str(REPO))], capture_output=True, text=True,
                           check=True, cwd=REPO)
    assert child.stdout.strip() == here


# --------------------------------------------------------------------------- pairs


def assert_pairs_equal(a, b):
    np.testing.assert_array_equal(a.target, b.target)
    np.testing.assert_array_equal(a.mask, b.mask)
    np.testing.assert_array_equal(a.reference, b.reference)
    assert a.record == b.record


def test_make_pair_is_a_function_of_its_seed():
    rgb, box = scene(640, 480), Box(200, 150, 420, 330)
    pair = make_pair(rgb, box, PbeConfig(), 42)
    assert pair.target.shape == (512, 512, 3) and pair.target.dtype == np.uint8
    assert pair.mask.shape == (512, 512) and pair.mask.dtype == bool and pair.mask.any()
    assert pair.reference.shape == (224, 224, 3) and pair.reference.dtype == np.uint8
    assert set(pair.record) == {"crop_box", "mask", "reference", "seed"} and pair.record["seed"] == 42
    assert json.loads(json.dumps(pair.record)) == pair.record
    assert_pairs_equal(pair, make_pair(rgb, box, PbeConfig(), 42))
    other = make_pair(rgb, box, PbeConfig(), 43)
    assert other.record != pair.record and not np.array_equal(other.reference, pair.reference)


def test_make_pair_crop_holds_the_whole_mask():
    rng = np.random.default_rng(5)
    rgb = scene(640, 480)
    for seed in range(30):
        box = random_box(rng, 640, 480)
        pair = make_pair(rgb, box, PbeConfig(), seed)
        ext, crop = pair.record["mask"]["extended_box"], pair.record["crop_box"]
        if max(ext[2] - ext[0], ext[3] - ext[1]) <= 480:
            assert crop[0] <= ext[0] and crop[1] <= ext[1] and ext[2] <= crop[2] and ext[3] <= crop[3]
        target, _ = crop_and_resize(rgb, np.zeros((480, 640), dtype=bool), tuple(crop), 512)
        np.testing.assert_array_equal(pair.target, target)


def test_make_pair_parts_draw_from_separate_streams():
    """Changing the reference's settings leaves the crop and mask as they were."""
    rgb, box = scene(640, 480), Box(200, 150, 420, 330)
    base = make_pair(rgb, box, PbeConfig(), 9)
    changed = make_pair(rgb, box, PbeConfig(reference=ReferenceConfig(flip_p=1.0, size=128)), 9)
    np.testing.assert_array_equal(base.target, changed.target)
    np.testing.assert_array_equal(base.mask, changed.mask)
    assert base.record["crop_box"] == changed.record["crop_box"]


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_make_pair_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed"):
        make_pair(scene(), Box(10, 10, 100, 100), PbeConfig(), seed)


def test_make_pair_rejects_non_rgb_images():
    with pytest.raises(ValueError, match="RGB uint8"):
        make_pair(np.zeros((100, 100), dtype=np.uint8), Box(10, 10, 50, 50), PbeConfig(), 0)
    with pytest.raises(ValueError, match="RGB uint8"):
        make_pair(np.zeros((100, 100, 3), dtype=np.float32), Box(10, 10, 50, 50), PbeConfig(), 0)


# --------------------------------------------------------------------------- the pairs stage


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PairSettings(max_boxes=0), "max_boxes"),
        (lambda: PairSettings(max_boxes=2.0), "max_boxes"),
        (lambda: PairSettings(seed=-1), "seed must be a non-negative integer"),
        (lambda: PairSettings(seed=True), "seed"),
        (lambda: PairSettings(jpeg_quality=49), r"jpeg_quality must be an integer in \[50, 100\]"),
        (lambda: PairSettings(jpeg_quality=101), "jpeg_quality"),
    ],
)
def test_pair_settings_reject_bad_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()


IMAGE_KEY = "0123456789abcdef01234567"


def boxed_image(*boxes: tuple[float, float, float, float]) -> tuple[SourceImage, tuple[LabelledBox, ...]]:
    source = SourceImage(key=IMAGE_KEY, sha256="0" * 64, uri="mem://scene.jpg", width=640, height=480,
                         jpeg=encode_jpeg(scene(640, 480), 90))
    return source, tuple(LabelledBox("thing", Box(*box), "annotation") for box in boxes)


def run_pairs_stage(image, max_boxes: int = 8) -> list:
    """The stage's outputs for one image, from its record function as a worker gets it (pickled)."""
    stage = MakePairs(PbeConfig(), PairSettings(max_boxes=max_boxes), {"job": "test"})
    return list(pickle.loads(pickle.dumps(stage.record_fn()))(image))


def test_an_image_is_one_record_naming_each_of_its_boxes_once():
    large, medium, small, tiny = (0, 0, 300, 300), (320, 0, 520, 200), (100, 350, 200, 450), (600, 400, 610, 410)
    (record,) = run_pairs_stage(boxed_image(small, large, tiny, medium), max_boxes=2)
    assert isinstance(record, ImageBoxes) and (record.uri, record.key) == ("mem://scene.jpg", IMAGE_KEY)
    outcomes = {box.key: box for box in record.boxes}
    assert sorted(outcomes) == [object_key(IMAGE_KEY, index) for index in range(4)]
    assert [key for key, box in outcomes.items() if isinstance(box, EncodedSample)] == [
        object_key(IMAGE_KEY, 1), object_key(IMAGE_KEY, 3)]  # the two largest
    rejected = {key: (box.stage, box.reason) for key, box in outcomes.items() if isinstance(box, Rejection)}
    assert rejected == {object_key(IMAGE_KEY, 0): ("pbe_pairs", Reason.TOO_MANY_OBJECTS),
                        object_key(IMAGE_KEY, 2): ("pbe_pairs", Reason.BOX_TOO_SMALL)}


def test_an_image_without_a_usable_box_is_rejected_and_its_boxes_still_named():
    unpaired, rejection = run_pairs_stage(boxed_image((0, 0, 10, 10), (50, 50, 60, 60)))
    assert isinstance(unpaired, TaggedOutput) and unpaired.tag == UNPAIRED_TAG
    assert [(box.key, box.reason) for box in unpaired.value.boxes] == [
        (object_key(IMAGE_KEY, 0), Reason.BOX_TOO_SMALL), (object_key(IMAGE_KEY, 1), Reason.BOX_TOO_SMALL)]
    assert (rejection.reason, rejection.key) == (Reason.NO_SUITABLE_BOX, IMAGE_KEY)
    (no_boxes,) = run_pairs_stage(boxed_image())
    assert (no_boxes.reason, no_boxes.key) == (Reason.NO_BOXES, IMAGE_KEY)


@pytest.mark.parametrize("truck_box, expected_iou", [((100, 100, 300, 300), 1.0), ((100, 100, 300, 290), 0.95)])
def test_one_object_under_two_labels_is_a_duplicate_detection_as_in_bootstrap(truck_box, expected_iou):
    car = Detection(label="car", class_id=2, score=0.9, box=Box(100, 100, 300, 300), detector="test")
    truck = Detection(label="truck", class_id=7, score=0.6, box=Box(*truck_box), detector="test")
    source, _ = boxed_image()
    bootstrap = select_objects([car, truck], source.width, source.height, SelectionConfig())
    assert [(index, reason) for index, reason, _ in bootstrap.rejected] == [(1, Reason.DUPLICATE_DETECTION)]
    (record,) = run_pairs_stage(detected_boxes(PredictionResult(source, [car, truck])))
    first, second = (next(box for box in record.boxes if box.key == object_key(IMAGE_KEY, i)) for i in (0, 1))
    assert isinstance(first, EncodedSample) and second.reason == Reason.DUPLICATE_DETECTION
    assert second.detail.endswith(f"IoU {expected_iou:.3f} with detection 0 (car 0.90)")
    # Annotators' boxes are never duplicates of each other, in either job.
    (annotated,) = run_pairs_stage(boxed_image((100, 100, 300, 300), (100, 100, 300, 290)))
    assert all(isinstance(box, EncodedSample) for box in annotated.boxes)
