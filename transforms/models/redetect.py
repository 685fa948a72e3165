"""Re-detection score: does the detector still find the removed object where it was?

A removal that leaves a faint ghost, or paints a new object of the same class in the
hole, fools pixel metrics but not the detector that found the object in the first place.
Every candidate of an object is run through that detector (the whole batch in one call)
and scored with the highest confidence of a detection of the object's class whose box
overlaps the object's box with IoU >= ``min_iou``; 0 when there is none above the
detector's threshold. Lower is better.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from schemas import Box, ObjectCandidates
from transforms.checks import is_number
from transforms.io.decode import decode_rgb
from transforms.models.detection import DetectorConfig, LoadedDetector, RawDetections, make_detector_handler


@dataclasses.dataclass(frozen=True)
class RedetectConfig:
    """The detector to ask (usually the one that selected the objects, at a lower threshold)."""

    detector: DetectorConfig
    min_iou: float = 0.3

    def __post_init__(self) -> None:
        if not is_number(self.min_iou) or not 0 < self.min_iou <= 1:
            raise ValueError(f"min_iou must be a number in (0, 1], got {self.min_iou!r}")


def box_iou(box: Box, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each row of an ``[N, 4]`` xyxy array."""
    width = np.clip(np.minimum(boxes[:, 2], box.x1) - np.maximum(boxes[:, 0], box.x0), 0, None)
    height = np.clip(np.minimum(boxes[:, 3], box.y1) - np.maximum(boxes[:, 1], box.y0), 0, None)
    inter = width * height
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(areas + box.area - inter, 1e-9)


def redetect_score(detections: RawDetections, labels: Sequence[str], label: str, box: Box, min_iou: float) -> float:
    """The highest score of a ``label`` detection overlapping ``box`` by ``min_iou``; 0.0 if none."""
    boxes, scores, class_ids = detections
    if not len(scores):
        return 0.0
    same_class = np.array([int(c) < len(labels) and labels[int(c)] == label for c in class_ids])
    overlapping = box_iou(box, np.asarray(boxes, dtype=np.float64)) >= min_iou
    hits = np.asarray(scores)[same_class & overlapping]
    return float(hits.max()) if hits.size else 0.0


class RedetectHandler(ModelHandler[ObjectCandidates, PredictionResult, LoadedDetector]):
    """``ObjectCandidates`` -> the same with ``redetect_score`` set on every candidate."""

    def __init__(self, config: RedetectConfig) -> None:
        super().__init__(min_batch_size=1, max_batch_size=max(1, config.detector.max_batch_size // 4))
        self._config = config
        self._detector = make_detector_handler(config.detector)

    def load_model(self) -> LoadedDetector:
        return self._detector.load_model()

    def run_inference(self, batch: Sequence[ObjectCandidates], model: LoadedDetector,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        images = [decode_rgb(candidate.removed_png) for record in batch for candidate in record.candidates]
        detections = model.detect(images)
        if len(detections) != len(images):  # scores would land on the wrong candidates
            raise RuntimeError(f"{model.name()} returned {len(detections)} results for {len(images)} candidates")
        raw = iter(detections)
        labels, model_id = model.labels(), f"{model.name()}@sha256:{model.sha256()}"
        results = []
        for record in batch:
            detection = record.mask.detection
            scores = [redetect_score(next(raw), labels, detection.label, detection.box, self._config.min_iou)
                      for _ in record.candidates]
            results.append(PredictionResult(record, record.with_scores(redetect_score=scores), model_id))
        return results

    def get_num_bytes(self, batch: Sequence[ObjectCandidates]) -> int:
        return sum(len(c.removed_png) for record in batch for c in record.candidates)

    def get_metrics_namespace(self) -> str:
        return "counterfactory.redetect"

    def share_model_across_processes(self) -> bool:
        return self._config.detector.on_gpu
