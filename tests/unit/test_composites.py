"""Composites: placement rules, the paste, and that the stored truth is exact."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from schemas import Box, SourceImage
from schemas.keys import composite_key
from schemas.sample import Field, composite_from_sample
from transforms.composites import (
    CompositeConfig,
    Cutout,
    ImageComposites,
    _make_composites,
    draw_cutouts,
    make_composite,
    place,
)
from transforms.io.decode import decode_rgb, encode_jpeg
from transforms.io.shards import EncodedSample
from transforms.masks import decode_matte_png


def _disc_rgba(size: int = 40, colour=(250, 20, 20)) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= (size / 2 - 2) ** 2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = np.where(inside, 255, 0)
    rgba[..., 3][np.roll(inside, 1, axis=0) & ~inside] = 128  # a soft edge row
    return rgba


def _png(rgba: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def _background(width: int = 200, height: int = 150, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width, dtype=np.float32)[None, :, None]
    return np.clip(ramp + rng.normal(0, 10, (height, width, 3)), 0, 255).astype(np.uint8)


def _source(rgb: np.ndarray, key: str = "a" * 24) -> SourceImage:
    return SourceImage(key=key, sha256="0" * 64, uri=f"/images/{key}.jpg", width=rgb.shape[1], height=rgb.shape[0],
                       jpeg=encode_jpeg(rgb, 95))


def test_placement_is_inside_the_image_clear_of_known_objects_and_sized_as_asked():
    alpha = _disc_rgba()[..., 3]
    avoid = [Box(0, 0, 100, 150)]  # the left half is taken
    config = CompositeConfig(area_fraction_range=(0.02, 0.04))
    for seed in range(50):
        placement = place(alpha, 200, 150, avoid, config, np.random.default_rng(seed))
        assert placement is not None
        x0, y0, x1, y1 = placement.box
        assert 100 <= x0 and x1 <= 200 and 0 <= y0 and y1 <= 150
        area = alpha.sum() / 255 * placement.scale ** 2 / (200 * 150)
        assert 0.015 < area < 0.05


def test_no_placement_when_known_objects_cover_the_image():
    config = CompositeConfig(max_tries=5)
    assert place(_disc_rgba()[..., 3], 200, 150, [Box(0, 0, 200, 150)], config, np.random.default_rng(0)) is None


def test_a_cutout_larger_than_the_image_is_shrunk_to_fit():
    config = CompositeConfig(area_fraction_range=(0.5, 0.9), max_upscale=3.0)
    placement = place(_disc_rgba(40)[..., 3], 30, 30, [], config, np.random.default_rng(0))
    assert placement is not None and placement.width <= 30 and placement.height <= 30


def test_the_truth_equals_the_composite_outside_the_matte_and_the_background_inside():
    background = _background()
    rgba = _disc_rgba()
    placement = place(rgba[..., 3], 200, 150, [], CompositeConfig(), np.random.default_rng(3))
    composite = make_composite(background, rgba, placement, 95)
    src = decode_rgb(composite.jpeg)
    outside = composite.matte == 0
    np.testing.assert_array_equal(composite.truth[outside], src[outside])
    np.testing.assert_array_equal(composite.truth[~outside], background[~outside])
    # The paste is there: red where alpha is full, and the soft edge made it to the matte.
    full = composite.matte == 255
    assert full.sum() > 100 and src[full][:, 0].mean() > 200
    assert ((composite.matte > 0) & (composite.matte < 255)).any()


def test_attempts_are_seeded_never_use_the_backgrounds_own_objects_and_all_end_accounted():
    background = _background()
    source = _source(background)
    own = Cutout("a" * 24 + "_o000", "cup", source.key, source.uri, Box(0, 0, 10, 10), _png(_disc_rgba()))
    other = Cutout("b" * 24 + "_o000", "cat", "b" * 24, "/images/b.jpg", Box(0, 0, 10, 10), _png(_disc_rgba(30)))
    config = CompositeConfig(per_image=5, seed=7)
    drawn = draw_cutouts(config, source, [own, other], {source.key: [Box(0, 0, 20, 20)]})
    assert [cutout.key for _, cutout in drawn.attempts] == [other.key] * 5
    assert drawn.known_boxes == (Box(0, 0, 20, 20),)
    first = list(_make_composites(config, {"job": "test"}, drawn))
    again = list(_make_composites(config, {"job": "test"}, drawn))
    assert len(first) == 1 and isinstance(first[0], ImageComposites)
    outcomes = first[0].composites
    assert [o.key for o in outcomes] == [composite_key(source.key, i) for i in range(5)]
    assert all(isinstance(o, EncodedSample) for o in outcomes)
    assert [o.fields for o in outcomes] == [o.fields for o in again[0].composites]
    sample = composite_from_sample(outcomes[0].key, outcomes[0].fields, "x.tar#k")
    assert sample.meta["object"]["label"] == "cat" and sample.meta["background"]["key"] == source.key
    matte = decode_matte_png(sample.fields[Field.MASK])
    assert matte.max() == 255 and matte.dtype == np.uint8


def test_a_background_with_only_its_own_cutouts_is_rejected_with_every_attempt():
    source = _source(_background())
    own = Cutout("a" * 24 + "_o000", "cup", source.key, source.uri, Box(0, 0, 10, 10), _png(_disc_rgba()))
    config = CompositeConfig(per_image=3)
    outputs = list(_make_composites(config, {}, draw_cutouts(config, source, [own], {})))
    rejection = outputs[-1]
    assert rejection.reason.value == "no_cutout" and rejection.key == source.key
    assert [r.reason.value for r in outputs[0].value.composites] == ["no_cutout"] * 3


@pytest.mark.parametrize("settings", [{"per_image": 0}, {"area_fraction_range": (0.2, 0.1)},
                                      {"area_fraction_range": (0.0, 0.1)}, {"max_upscale": 0.5}, {"seed": -1},
                                      {"jpeg_quality": 20}, {"max_tries": 0}])
def test_config_mistakes_fail_at_once(settings):
    with pytest.raises(ValueError):
        CompositeConfig(**settings)
