"""Quality checks on object masks, before any GPU time is spent removing the object.

A removal model can only be as good as its mask: an empty or low-confidence mask, one
broken into specks, or one that fills too little of its box (the segmenter found a part) or
spills far beyond it (it found the background) makes a bad counterfactual. Each failure is
an expected rejection with its own :class:`~schemas.Reason`; a mask that passes may be
dilated so that the removal also covers the object's soft edges and contact shadow.

Pure numpy/OpenCV on boolean ``HxW`` arrays; no Beam here.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Union

import cv2
import numpy as np

from schemas import Box, Reason
from transforms.checks import is_int, is_number, is_unit
from transforms.masks import dilate


@dataclasses.dataclass(frozen=True)
class MaskQualityConfig:
    """Thresholds of the mask checks.

    ``min_box_fill``/``max_box_fill`` bound mask area / box area; the ratio exceeds 1 when
    the mask spills out of its box. ``min_largest_component_share`` is the share of the
    mask's pixels in its largest 8-connected component. ``dilate_px`` grows kept masks by
    that many pixels (elliptical kernel) to take in edges and shadows; 0 keeps them as is.
    """

    min_predicted_iou: float = 0.7
    min_largest_component_share: float = 0.8
    min_box_fill: float = 0.2
    max_box_fill: float = 1.2
    dilate_px: int = 0

    def __post_init__(self) -> None:
        for name in ("min_predicted_iou", "min_largest_component_share", "min_box_fill"):
            if not is_unit(getattr(self, name)):
                raise ValueError(f"{name} must be a number in [0, 1], got {getattr(self, name)!r}")
        fill = self.max_box_fill
        if not is_number(fill) or not math.isfinite(fill):
            raise ValueError(f"max_box_fill must be a finite number, got {fill!r}")
        if fill < self.min_box_fill:
            raise ValueError(f"max_box_fill {fill} is below min_box_fill {self.min_box_fill}")
        if not is_int(self.dilate_px) or self.dilate_px < 0:
            raise ValueError(f"dilate_px must be an integer >= 0, got {self.dilate_px!r}")


@dataclasses.dataclass(frozen=True)
class MaskStats:
    """What the checks measure; worth recording for histograms even when a mask passes."""

    area_px: int
    largest_component_share: float
    box_fill: float


@dataclasses.dataclass(frozen=True)
class MaskFailure:
    """Why a mask was refused, with the measured value in ``detail``."""

    reason: Reason
    detail: str


def mask_stats(mask: np.ndarray, box: Box) -> MaskStats:
    """Area, fragmentation and box fill of a boolean mask."""
    binary = _as_binary(mask)
    area = int(np.count_nonzero(binary))
    if area == 0:
        return MaskStats(area_px=0, largest_component_share=0.0, box_fill=0.0)
    count, _, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    largest = int(stats[1:count, cv2.CC_STAT_AREA].max())
    return MaskStats(area_px=area, largest_component_share=largest / area, box_fill=area / box.area)


def dilate_mask(mask: np.ndarray, pixels: int) -> np.ndarray:
    """The mask grown by ``pixels`` in every direction (a disc-shaped structuring element)."""
    return dilate(_as_binary(mask), pixels)


def check_mask(mask: np.ndarray, box: Box, predicted_iou: float,
               config: MaskQualityConfig) -> Union[np.ndarray, MaskFailure]:
    """The mask to use (dilated per ``config``), or the first check it fails.

    Checks run on the segmenter's mask, not the dilated one, in a fixed order: empty,
    predicted IoU, fragmentation, box fill.
    """
    stats = mask_stats(mask, box)
    if stats.area_px == 0:
        return MaskFailure(Reason.MASK_EMPTY, "no pixel set")
    if predicted_iou < config.min_predicted_iou:
        return MaskFailure(Reason.MASK_LOW_IOU,
                           f"predicted IoU {predicted_iou:.3f} < {config.min_predicted_iou}")
    if stats.largest_component_share < config.min_largest_component_share:
        return MaskFailure(Reason.MASK_FRAGMENTED,
                           f"largest component holds {stats.largest_component_share:.3f} of the mask "
                           f"< {config.min_largest_component_share}")
    if not config.min_box_fill <= stats.box_fill <= config.max_box_fill:
        return MaskFailure(Reason.MASK_BOX_FILL,
                           f"mask/box area {stats.box_fill:.3f} outside "
                           f"[{config.min_box_fill}, {config.max_box_fill}]")
    return dilate_mask(mask, config.dilate_px)


def _as_binary(mask: np.ndarray) -> np.ndarray:
    if mask.ndim != 2:
        raise ValueError(f"a mask is a 2-D array, got shape {mask.shape}")
    return (np.asarray(mask) != 0).astype(np.uint8)


__all__ = ["MaskFailure", "MaskQualityConfig", "MaskStats", "check_mask", "dilate_mask", "mask_stats"]
