"""Object re-paste: exact outside the cut-out, the cut-out itself inside it, feathering only inward; the cut-out's
soft matte and the regions candidate samples record."""
from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
from PIL import Image

from schemas import Box, Detection, ObjectCandidates, ObjectMask, RemovalCandidate, SourceImage
from schemas.keys import candidate_key, object_key
from schemas.sample import Field, region_field
from transforms.candidates import CandidateSampleEncoder, object_cutout
from transforms.io.decode import decode_rgb, encode_jpeg
from transforms.masks import decode_mask_png, dilate, encode_mask_png, soft_matte
from transforms.models.removal import encode_png
from transforms.repaste import RepasteConfig, feathered_alpha, repaste

RNG = np.random.default_rng(3)


def scene(height=40, width=50, box=(10, 5, 30, 25)):
    removed = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    x0, y0, x1, y1 = box
    yy, xx = np.mgrid[0:y1 - y0, 0:x1 - x0]
    alpha = ((((xx - 9.5) / 10) ** 2 + ((yy - 9.5) / 10) ** 2) <= 1).astype(np.uint8) * 255
    rgba = np.dstack([RNG.integers(0, 256, (y1 - y0, x1 - x0, 3), dtype=np.uint8), alpha])
    return removed, rgba, box


def test_hard_edge_repaste_is_exact_outside_and_the_cutout_inside():
    removed, rgba, (x0, y0, x1, y1) = scene()
    pasted = repaste(removed, rgba, (x0, y0, x1, y1))
    inside = np.zeros(removed.shape[:2], bool)
    inside[y0:y1, x0:x1] = rgba[..., 3] == 255
    assert inside.sum() > 200
    np.testing.assert_array_equal(pasted[~inside], removed[~inside])
    np.testing.assert_array_equal(pasted[y0:y1, x0:x1][rgba[..., 3] == 255], rgba[..., :3][rgba[..., 3] == 255])
    assert not np.shares_memory(pasted, removed)


def test_partial_alpha_blends():
    removed = np.zeros((4, 4, 3), np.uint8)
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[255, 128], [0, 64]]
    pasted = repaste(removed, rgba, (1, 1, 3, 3))
    assert pasted[1:3, 1:3, 0].tolist() == [[200, 100], [0, 50]]


def test_feathering_ramps_alpha_inward_only():
    _, rgba, _ = scene()
    alpha = rgba[..., 3]
    feathered = feathered_alpha(alpha, 4)
    assert (feathered[alpha == 0] == 0).all()
    assert (feathered <= alpha).all()
    assert feathered.max() == 255  # the middle stays opaque
    assert ((feathered > 0) & (feathered < 255)).sum() > 50  # the edge ramps
    removed, rgba, box = scene()
    pasted = repaste(removed, rgba, box, feather_px=4)
    outside = np.ones(removed.shape[:2], bool)
    outside[box[1]:box[3], box[0]:box[2]] = rgba[..., 3] == 0
    np.testing.assert_array_equal(pasted[outside], removed[outside])


def test_a_cutout_that_does_not_fit_is_refused():
    removed, rgba, _ = scene()
    with pytest.raises(ValueError, match="outside"):
        repaste(removed, rgba, (40, 30, 60, 50))
    with pytest.raises(ValueError, match="does not fit"):
        repaste(removed, rgba, (0, 0, 21, 20))
    with pytest.raises(ValueError):
        RepasteConfig(feather_px=-1)


# --------------------------------------------------------------------------- the cut-out's soft matte and regions


def _object_record(width=60, height=50, dilations=(4, 6)):
    """A disc object on a gradient, and one candidate per dilation that repaints exactly that grown region."""
    yy, xx = np.mgrid[0:height, 0:width]
    src = np.dstack([xx * 4, yy * 5, np.full_like(xx, 90)]).astype(np.uint8)
    outline = (xx - 30) ** 2 + (yy - 24) ** 2 <= 10 ** 2
    src[outline] = (250, 20, 20)
    jpeg = encode_jpeg(src, 95)
    src = decode_rgb(jpeg)  # what every stage sees
    source = SourceImage(key="s" * 24, sha256="0" * 64, uri="mem://s.jpg", width=width, height=height, jpeg=jpeg)
    detection = Detection("disc", 0, 0.9, Box(20, 14, 41, 35), "test")
    mask = ObjectMask(object_key(source.key, 0), source.key, 0, detection, encode_mask_png(outline), 0.9, "test")
    candidates = []
    for k, dilation in enumerate(dilations):
        region = dilate(outline, dilation)
        removed = src.copy()
        removed[region] = (30, 200, 30)
        candidates.append(RemovalCandidate(candidate_key(mask.key, k), mask.key, k, k, "test", encode_png(removed),
                                           region_png=encode_mask_png(region)))
    return ObjectCandidates(source, mask, tuple(candidates)), src, outline


def test_soft_matte_ramps_across_the_outline_and_stays_zero_outside_every_region():
    record, _, outline = _object_record(dilations=(4, 1))
    cutout = object_cutout(record, matte_px=2)
    with Image.open(io.BytesIO(cutout.png)) as image:
        rgba = np.array(image.convert("RGBA"))
    x0, y0, x1, y1 = cutout.box
    alpha = np.zeros(outline.shape, np.uint8)
    alpha[y0:y1, x0:x1] = rgba[..., 3]
    edge = dilate(outline, 1) & dilate(~outline, 1)  # the pixels on either side of the outline
    assert ((alpha[edge] > 0) & (alpha[edge] < 255)).all()  # soft at the edge, not a staircase
    assert len(np.unique(alpha[dilate(outline, 2) & dilate(~outline, 2)])) >= 5  # a ramp of several levels
    assert (alpha[~dilate(outline, 2)] == 0).all() and (alpha[~dilate(outline, 1)] == 0).all()  # the narrowest region
    assert (alpha[outline & ~dilate(~outline, 3)] == 255).all()  # opaque three pixels in
    assert cutout.area_px == int(outline.sum()) and cutout.matte_px == 2
    hard = object_cutout(record, matte_px=0)
    with Image.open(io.BytesIO(hard.png)) as image:
        assert set(np.unique(np.array(image.convert("RGBA"))[..., 3])) == {0, 255}


def test_soft_matte_is_centred_on_the_outline():
    outline = np.zeros((20, 20), bool)
    outline[5:15, 5:15] = True
    alpha = soft_matte(outline, 2)
    assert alpha[10, 4:8].tolist() == [96, 159, 223, 255]  # 0.375, 0.625, 0.875, 1 across the left edge
    assert alpha[10, 2:4].tolist() == [0, 32]
    yy, xx = np.mgrid[0:40, 0:40]
    disc = (xx - 20) ** 2 + (yy - 20) ** 2 <= 10 ** 2
    assert abs(soft_matte(disc, 2).sum(dtype=int) / 255 - disc.sum()) < 0.03 * disc.sum()  # area kept (measured 1.6 %)
    with pytest.raises(ValueError, match="matte_px"):
        soft_matte(outline, -1)


def test_candidate_samples_record_each_candidates_region_and_refuse_one_that_misses_a_change():
    record, src, outline = _object_record()
    sample = CandidateSampleEncoder({"job": "test"}, {})(record)
    meta = json.loads(sample.fields[Field.JSON])
    assert [c["region"] for c in meta["candidates"]] == [region_field(0), region_field(1)]
    for candidate, dilation in zip(meta["candidates"], (4, 6)):
        region = decode_mask_png(sample.fields[candidate["region"]])
        assert np.array_equal(region, dilate(outline, dilation))
        removed = decode_rgb(sample.fields[candidate["field"]])
        assert np.array_equal(removed[~region], src[~region])
    assert meta["object"]["matte_px"] == 2

    bad = record.candidates[0]
    removed = decode_rgb(bad.removed_png)
    removed[0, 0] = 0  # a change far outside the region it claims
    wrong = dataclasses.replace(record, candidates=(dataclasses.replace(bad, removed_png=encode_png(removed)),))
    with pytest.raises(ValueError, match=r"1 changed pixels lie outside its region, e.g. at x=0 y=0"):
        CandidateSampleEncoder({"job": "test"}, {})(wrong)

    unrecorded = dataclasses.replace(record, candidates=tuple(
        dataclasses.replace(c, region_png=None) for c in record.candidates))
    derived = CandidateSampleEncoder({"job": "test"}, {})(unrecorded)
    changed = (decode_rgb(record.candidates[0].removed_png) != src).any(axis=2)
    assert np.array_equal(decode_mask_png(derived.fields[region_field(0)]), changed)
    with pytest.raises(ValueError, match="matte_px"):
        CandidateSampleEncoder({}, {}, matte_px=-1)
