"""NanoDet (GFL head) pre- and post-processing in numpy and OpenCV, apart from its runtime.

Kept free of onnxruntime so the decoding can be tested with synthetic tensors and reused
by any runtime that produces the same six head outputs.

Pre-processing is NanoDet's own (``warp.py``, ``get_resize_matrix``) for the v0.x configs
this model belongs to (``keep_ratio: True``): scale by the smaller of ``S / w`` and ``S / h``,
centre on an ``S x S`` black canvas (here on whole pixels, with area averaging when
shrinking). On the bundled wide frames this finds the cars that a plain stretch (what the
TF.js ``human`` library does) misses or mislabels, and it labels chelsea a cat rather than
a person; ``keep_ratio=False`` gives the stretch.

Post-processing follows NanoDet's GFL head: each cell of a stride-``s`` level predicts,
for every class, a sigmoid score, and for each side (left, top, right, bottom) a
distribution over ``reg_max + 1`` distance bins; the distance is the softmax expectation
of the bin index times ``s``, measured from the cell centre ``((col + 0.5) s, (row + 0.5) s)``.
Every (cell, class) pair above the score threshold is a candidate (one cell may propose
several classes), then NMS runs per class.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import cv2
import numpy as np

#: Kinds of head output: per-class scores and per-side distance distributions.
SCORES = "scores"
BOXES = "boxes"
#: Candidates kept per level before NMS, highest score first (NanoDet's ``nms_pre``).
PRE_NMS_TOP_K = 1000


@dataclasses.dataclass(frozen=True)
class NanoDetParams:
    """What the weights imply for their handler; defaults are those of the 416 COCO model.

    ``outputs`` maps an output tensor name to ``(stride, kind)``: runtimes list outputs in
    arbitrary order, so they are matched by name, never by position.
    """

    input_name: str = "input_1:0"
    input_size: int = 416
    keep_ratio: bool = True
    channel_order: str = "BGR"
    mean: tuple[float, float, float] = (103.53, 116.28, 123.675)
    std: tuple[float, float, float] = (57.375, 57.12, 58.395)
    strides: tuple[int, ...] = (8, 16, 32)
    reg_max: int = 10
    outputs: tuple[tuple[str, tuple[int, str]], ...] = (
        ("Identity:0", (8, SCORES)),
        ("Identity_1:0", (16, SCORES)),
        ("Identity_2:0", (32, SCORES)),
        ("Identity_3:0", (8, BOXES)),
        ("Identity_4:0", (16, BOXES)),
        ("Identity_5:0", (32, BOXES)),
    )

    def __post_init__(self) -> None:
        # Values from the catalog arrive frozen as nested tuples; normalise them.
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        outputs = dict(self.outputs)
        object.__setattr__(self, "outputs", tuple(sorted((str(k), (int(v[0]), str(v[1]))) for k, v in outputs.items())))
        if not isinstance(self.keep_ratio, bool):
            raise ValueError(f"keep_ratio must be true or false, got {self.keep_ratio!r}")
        if self.channel_order not in ("BGR", "RGB"):
            raise ValueError(f"channel_order must be BGR or RGB, got {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise ValueError(f"mean and std need three values each, std positive: {self.mean}, {self.std}")
        if self.reg_max < 1:
            raise ValueError(f"reg_max must be positive, got {self.reg_max}")
        if not self.strides or any(s <= 0 or self.input_size % s for s in self.strides):
            raise ValueError(f"strides {self.strides} must be positive divisors of input_size {self.input_size}")
        wanted = {(s, kind) for s in self.strides for kind in (SCORES, BOXES)}
        given = [v for _, v in self.outputs]
        if sorted(given) != sorted(wanted):
            raise ValueError(f"outputs must name one scores and one boxes tensor per stride {self.strides}, got {given}")

    @classmethod
    def from_catalog(cls, params: Mapping[str, Any]) -> "NanoDetParams":
        """From a catalog entry's ``params`` (``dict(spec.params)``); unknown keys are ignored."""
        shape = params.get("input_shape")
        if shape is not None and (len(shape) != 4 or shape[2] != shape[3]):
            raise ValueError(f"NanoDet expects a square NCHW input, the catalog says {shape}")
        fields = {
            "input_name": params.get("input_name"),
            "input_size": None if shape is None else int(shape[2]),
            "keep_ratio": params.get("keep_ratio"),
            "channel_order": params.get("channel_order"),
            "mean": params.get("mean"),
            "std": params.get("std"),
            "strides": params.get("strides"),
            "reg_max": params.get("reg_max"),
            "outputs": None if params.get("outputs") is None else tuple(dict(params["outputs"]).items()),
        }
        return cls(**{k: v for k, v in fields.items() if v is not None})


@dataclasses.dataclass(frozen=True)
class InputTransform:
    """The affine map from source pixels to input pixels: ``x_in = sx * x + tx`` (and y alike)."""

    sx: float
    sy: float
    tx: float
    ty: float

    @classmethod
    def fit(cls, width: int, height: int, size: int, keep_ratio: bool) -> "InputTransform":
        """Stretch to ``size`` x ``size``, or (``keep_ratio``) scale the longer side to ``size`` and centre."""
        if not keep_ratio:
            return cls(size / width, size / height, 0.0, 0.0)
        ratio = min(size / width, size / height)
        new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
        return cls(new_w / width, new_h / height, float((size - new_w) // 2), float((size - new_h) // 2))

    def to_source(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``[K, 4]`` in input pixels -> source pixels."""
        scale = np.array([self.sx, self.sy, self.sx, self.sy])
        shift = np.array([self.tx, self.ty, self.tx, self.ty])
        return (boxes - shift) / scale


def preprocess(rgb: np.ndarray, params: NanoDetParams) -> tuple[np.ndarray, InputTransform]:
    """An ``HxWx3`` uint8 RGB image -> the normalised ``[1, 3, S, S]`` float32 input and its transform."""
    height, width = rgb.shape[:2]
    size = params.input_size
    transform = InputTransform.fit(width, height, size, params.keep_ratio)
    new_w, new_h = round(transform.sx * width), round(transform.sy * height)
    # Area averaging when shrinking: large photos would alias with bilinear sampling.
    shrinking = new_w < width or new_h < height
    resized = cv2.resize(rgb, (new_w, new_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    warped = np.zeros((size, size, 3), np.uint8)
    left, top = int(transform.tx), int(transform.ty)
    warped[top:top + new_h, left:left + new_w] = resized
    if params.channel_order == "BGR":
        warped = warped[..., ::-1]
    # mean and std are given in the model's channel order.
    normalised = (warped.astype(np.float32) - np.asarray(params.mean, np.float32)) / np.asarray(params.std, np.float32)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1)[None]), transform


def decode_level(scores: np.ndarray, distributions: np.ndarray, stride: int, input_size: int,
                 reg_max: int) -> np.ndarray:
    """Boxes ``[N, 4]`` (x0, y0, x1, y1 in input pixels) of one level's ``N`` cells.

    ``distributions`` is ``[N, 4 * (reg_max + 1)]`` logits, sides in the order left, top,
    right, bottom; ``scores`` is only checked for its cell count.
    """
    grid = input_size // stride
    cells = grid * grid
    if scores.shape[0] != cells or distributions.shape != (cells, 4 * (reg_max + 1)):
        raise ValueError(f"stride {stride}: expected {cells} cells with {4 * (reg_max + 1)} bins, "
                         f"got scores {scores.shape} and distributions {distributions.shape}")
    logits = distributions.reshape(cells, 4, reg_max + 1).astype(np.float64)
    logits -= logits.max(axis=2, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=2, keepdims=True)
    distances = (weights @ np.arange(reg_max + 1, dtype=np.float64)) * stride  # [N, 4]
    index = np.arange(cells)
    cx = (index % grid + 0.5) * stride
    cy = (index // grid + 0.5) * stride
    return np.stack([cx - distances[:, 0], cy - distances[:, 1], cx + distances[:, 2], cy + distances[:, 3]], axis=1)


def candidates(outputs: Mapping[str, np.ndarray], params: NanoDetParams,
               score_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (box, score, class) triples above ``score_threshold`` across levels, before NMS.

    ``outputs`` maps output names to arrays of one image (a leading batch axis of 1 is
    dropped). Boxes are in input pixels.
    """
    by_level: dict[int, dict[str, np.ndarray]] = {}
    for name, (stride, kind) in params.outputs:
        if name not in outputs:
            raise KeyError(f"the model has no output {name!r}; it has {sorted(outputs)}")
        array = np.asarray(outputs[name])
        by_level.setdefault(stride, {})[kind] = array[0] if array.ndim == 3 else array
    all_boxes, all_scores, all_classes = [], [], []
    for stride in params.strides:
        level = by_level[stride]
        boxes = decode_level(level[SCORES], level[BOXES], stride, params.input_size, params.reg_max)
        cells, classes = np.nonzero(level[SCORES] >= score_threshold)
        scores = level[SCORES][cells, classes]
        if scores.size > PRE_NMS_TOP_K:
            top = np.argpartition(-scores, PRE_NMS_TOP_K)[:PRE_NMS_TOP_K]
            cells, classes, scores = cells[top], classes[top], scores[top]
        all_boxes.append(boxes[cells])
        all_scores.append(scores)
        all_classes.append(classes)
    return np.concatenate(all_boxes), np.concatenate(all_scores).astype(np.float64), np.concatenate(all_classes)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float,
        max_detections: Optional[int] = None) -> np.ndarray:
    """Indices kept by greedy per-class NMS, highest score first.

    Boxes of different classes never suppress each other: each class is shifted to its own
    region of the plane (torchvision's ``batched_nms`` trick), so one pass does all classes.
    """
    if boxes.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    boxes = boxes.astype(np.float64)
    offset = classes.astype(np.float64)[:, None] * (boxes.max() - boxes.min() + 1.0)
    shifted = boxes + offset
    x0, y0, x1, y1 = shifted.T
    areas = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        if max_detections is not None and len(keep) >= max_detections:
            break
        w = np.clip(np.minimum(x1[best], x1[rest]) - np.maximum(x0[best], x0[rest]), 0, None)
        h = np.clip(np.minimum(y1[best], y1[rest]) - np.maximum(y0[best], y0[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def postprocess(outputs: Mapping[str, np.ndarray], params: NanoDetParams, transform: InputTransform,
                image_size: tuple[int, int], score_threshold: float, iou_threshold: float,
                max_detections: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head outputs of one image -> ``(boxes [K, 4] in source pixels, scores [K], classes [K])``.

    ``image_size`` is the source ``(width, height)``; boxes are mapped back through
    ``transform`` and clipped to the image, highest score first.
    """
    boxes, scores, classes = candidates(outputs, params, score_threshold)
    keep = nms(boxes, scores, classes, iou_threshold, max_detections)
    width, height = image_size
    boxes = np.clip(transform.to_source(boxes[keep]), 0, [width, height, width, height])
    return boxes, scores[keep], classes[keep]


__all__ = ["BOXES", "PRE_NMS_TOP_K", "SCORES", "InputTransform", "NanoDetParams", "candidates", "decode_level", "nms", "postprocess",
           "preprocess"]
