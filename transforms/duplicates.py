"""One object under two labels: the duplicate rule of bootstrap's selection and of Paint-by-Example's boxes.

Detectors suppress overlapping boxes per class only, so a van is often both "car" and
"truck". A box whose IoU with a higher-scored box reaches ``min_iou`` is the same object
again and is rejected as ``duplicate_detection``, whichever job made the boxes. Two
annotated boxes are never duplicates: an annotator drew each for an object of its own (a
rider on a horse, a cup on a saucer), where a detector's two overlapping labels are one guess.
"""
from __future__ import annotations

from typing import Optional, Sequence

from schemas import Box

#: The IoU at which two boxes are one object (the default of both jobs).
DUPLICATE_IOU = 0.7


def intersection(box: Box, other: Box) -> float:
    """The area two boxes share."""
    width = min(box.x1, other.x1) - max(box.x0, other.x0)
    height = min(box.y1, other.y1) - max(box.y0, other.y0)
    return max(width, 0.0) * max(height, 0.0)


def iou(box: Box, other: Box) -> float:
    inter = intersection(box, other)
    return inter / (box.area + other.area - inter)


def duplicate_of(boxes: Sequence[Box], scores: Sequence[float], annotated: Sequence[bool],
                 min_iou: float) -> tuple[Optional[int], ...]:
    """Class-agnostic suppression: for each box, the index of the higher-scored box it repeats, or ``None``.

    Ties in score keep the earlier box. ``annotated[i]`` says box ``i`` was drawn by an annotator.
    """
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])
    primaries: list[int] = []
    repeats: list[Optional[int]] = [None] * len(boxes)
    for i in order:
        repeats[i] = next((j for j in primaries if not (annotated[i] and annotated[j])
                           and iou(boxes[i], boxes[j]) >= min_iou), None)
        if repeats[i] is None:
            primaries.append(i)
    return tuple(repeats)


def duplicate_detail(box: Box, other: Box, index: int, label: str, score: Optional[float]) -> str:
    """Why a box is a duplicate of box ``index`` (its ``label`` and ``score``): the rejection's detail."""
    scored = "" if score is None else f" {score:.2f}"
    return f"IoU {iou(box, other):.3f} with detection {index} ({label}{scored})"
