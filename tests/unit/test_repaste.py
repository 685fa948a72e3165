"""Object re-paste: exact outside the cut-out, the cut-out itself inside it, feathering only inward."""
from __future__ import annotations

import numpy as np
import pytest

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
