"""Mask quality checks: one synthetic mask per reason, the passing case, and dilation."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from schemas import Box, Reason
from transforms.mask_quality import MaskFailure, MaskQualityConfig, check_mask, dilate_mask, mask_stats

SIZE = (100, 120)
BOX = Box(20.0, 10.0, 80.0, 70.0)  # 60 x 60 = 3600 px


def rectangle(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros(SIZE, bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_a_good_mask_passes_unchanged_without_dilation() -> None:
    mask = rectangle(25, 15, 75, 65)  # 2500 px, fill 0.69
    kept = check_mask(mask, BOX, 0.95, MaskQualityConfig())
    assert isinstance(kept, np.ndarray) and kept.dtype == bool
    assert np.array_equal(kept, mask)


def fragmented() -> np.ndarray:
    mask = np.zeros(SIZE, bool)
    mask[10:40, 20:50] = True  # 900 px
    mask[45:70, 55:80] = True  # 625 px, not touching: largest share 0.59
    return mask


@pytest.mark.parametrize("mask, iou, reason", [
    (np.zeros(SIZE, bool), 0.99, Reason.MASK_EMPTY),
    (rectangle(25, 15, 75, 65), 0.5, Reason.MASK_LOW_IOU),
    (fragmented(), 0.99, Reason.MASK_FRAGMENTED),
    (rectangle(45, 35, 55, 45), 0.99, Reason.MASK_BOX_FILL),   # 100 px: fill 0.03
    (rectangle(0, 0, 120, 100), 0.99, Reason.MASK_BOX_FILL),   # whole image: fill 3.3
])
def test_each_failure_has_its_reason(mask: np.ndarray, iou: float, reason: Reason) -> None:
    result = check_mask(mask, BOX, iou, MaskQualityConfig())
    assert isinstance(result, MaskFailure)
    assert result.reason is reason and result.detail


def test_empty_is_reported_before_a_low_iou() -> None:
    result = check_mask(np.zeros(SIZE, bool), BOX, 0.0, MaskQualityConfig())
    assert isinstance(result, MaskFailure) and result.reason is Reason.MASK_EMPTY


def test_diagonal_neighbours_are_one_component() -> None:
    mask = np.zeros(SIZE, bool)
    mask[20:40, 20:40] = True
    mask[40:60, 40:60] = True  # touches the first square only at a corner
    assert mask_stats(mask, BOX).largest_component_share == 1.0


def test_stats_measure_area_share_and_fill() -> None:
    stats = mask_stats(fragmented(), BOX)
    assert stats.area_px == 1525
    assert stats.largest_component_share == pytest.approx(900 / 1525)
    assert stats.box_fill == pytest.approx(1525 / 3600)


@pytest.mark.parametrize("pixels", [1, 3, 8])
def test_dilation_grows_the_mask_by_exactly_the_radius(pixels: int) -> None:
    mask = rectangle(40, 30, 60, 50)
    grown = check_mask(mask, BOX, 0.99, MaskQualityConfig(min_box_fill=0.1, dilate_px=pixels))
    assert isinstance(grown, np.ndarray)
    assert grown[mask].all()
    ys, xs = np.nonzero(grown)
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (40 - pixels, 59 + pixels, 30 - pixels, 49 + pixels)
    # Every added pixel lies within the radius of the mask, and everything closer is added.
    distance = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5)
    assert distance[grown].max() <= pixels + 0.5
    assert grown[distance <= pixels - 0.5].all()


def test_dilation_stops_at_the_image_border() -> None:
    mask = rectangle(0, 0, 10, 10)
    grown = dilate_mask(mask, 5)
    assert grown.shape == SIZE and grown[:15, :10].all() and grown[:10, :15].all()
    assert not grown[15:, :].any() and not grown[:, 15:].any()


@pytest.mark.parametrize("kwargs", [
    {"min_predicted_iou": 1.5},
    {"min_largest_component_share": -0.1},
    {"min_box_fill": 0.5, "max_box_fill": 0.4},
    {"max_box_fill": float("inf")},
    {"dilate_px": -1},
    {"dilate_px": 2.5},
    {"dilate_px": True},
])
def test_invalid_configs_are_refused(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MaskQualityConfig(**kwargs)
