"""Object detection behind Beam ``ModelHandler`` s, one handler per model format.

A stage applies ``RunInference(make_detector_handler(config))`` to ``SourceImage`` records
and gets one ``PredictionResult`` per image whose ``inference`` is a tuple of
:class:`~schemas.Detection` (boxes in source pixels, highest score first) and whose
``model_id`` is ``<model>@sha256:<digest>`` for provenance.

Weights are resolved (:func:`~transforms.models.catalog.resolve_model`) and loaded in
``load_model``, on the worker. The loaded model returns plain arrays and the handler builds
the records, so a model shared across processes (GPU) is only asked for numbers and the
record building, with its metrics, stays in the DoFn.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Iterable, Mapping, Optional, Sequence

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult

from schemas import Box, Detection, SourceImage
from transforms.checks import check_device, is_int, is_number
from transforms.io.decode import decode_rgb
from transforms.models import nanodet
from transforms.models.catalog import ModelSpec, ResolvedModel, cache_root, load_catalog, resolve_model
from transforms.models.cpu import cpu_map
from transforms.models.gpus import on_claimed_device

LOG = logging.getLogger(__name__)

METRICS_NAMESPACE = "counterfactory.detect"

#: Per image: boxes ``[K, 4]`` (x0, y0, x1, y1 in source pixels), scores ``[K]``, class ids ``[K]``.
RawDetections = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class DetectorConfig:
    """Which detector runs and how.

    ``model`` is a catalog id or a path (local, ``gs://``…). ``format`` picks the handler
    (a key of :data:`DETECTOR_HANDLERS`); ``None`` takes the catalog entry's format, and
    ``ultralytics`` for paths, since ultralytics loads ``.pt``, exported ``.onnx``/``.engine``
    and model ``.yaml`` alike. ``image_size`` ``None`` is the model's own (catalog
    ``imgsz``/input shape; 640 for ultralytics paths). ``cache_dir`` ``None`` is the
    default model cache.
    """

    model: str
    format: Optional[str] = None
    score_threshold: float = 0.25
    iou_threshold: float = 0.45
    image_size: Optional[int] = None
    device: str = "cpu"
    min_batch_size: int = 1
    max_batch_size: int = 16
    max_detections: int = 100
    cache_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model.strip():
            raise ValueError(f"model must name a catalog id or a path, got {self.model!r}")
        if self.format is not None and self.format not in DETECTOR_HANDLERS:
            raise ValueError(f"format {self.format!r} has no detector handler; known: {sorted(DETECTOR_HANDLERS)}")
        for name in ("score_threshold", "iou_threshold"):
            value = getattr(self, name)
            if not is_number(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
        if self.image_size is not None and (not is_int(self.image_size) or self.image_size < 32 or self.image_size % 32):
            raise ValueError(f"image_size must be a positive multiple of 32, got {self.image_size!r}")
        check_device(self.device)
        for name in ("min_batch_size", "max_batch_size", "max_detections"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.min_batch_size > self.max_batch_size:
            raise ValueError(f"min_batch_size {self.min_batch_size} > max_batch_size {self.max_batch_size}")

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


class LoadedDetector(abc.ABC):
    """A model in memory. Only methods cross process boundaries when Beam shares it (GPU)."""

    def __init__(self, name: str, sha256: str, labels: Sequence[str]) -> None:
        self._name = name
        self._sha256 = sha256
        self._labels = tuple(labels)

    def name(self) -> str:
        """What :attr:`Detection.detector` says: the catalog id, or the file name of a path."""
        return self._name

    def sha256(self) -> str:
        return self._sha256

    def labels(self) -> tuple[str, ...]:
        """Label of each class id."""
        return self._labels

    @abc.abstractmethod
    def detect(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        """Detections of each ``HxWx3`` uint8 RGB image, highest score first."""


def to_detections(source: SourceImage, detections: RawDetections, labels: Sequence[str],
                  name: str) -> tuple[Detection, ...]:
    """Records of one image; boxes with nothing left inside the image are dropped and counted."""
    records = []
    for (x0, y0, x1, y1), score, class_id in zip(*detections):
        x0, x1 = max(0.0, float(x0)), min(float(source.width), float(x1))
        y0, y1 = max(0.0, float(y0)), min(float(source.height), float(y1))
        if not (x1 > x0 and y1 > y0):
            Metrics.counter(METRICS_NAMESPACE, "degenerate_box_count").inc()
            continue
        class_id = int(class_id)
        label = labels[class_id] if class_id < len(labels) else f"class{class_id}"
        records.append(Detection(label=label, class_id=class_id, score=float(score),
                                 box=Box(x0, y0, x1, y1), detector=name))
    Metrics.distribution(METRICS_NAMESPACE, "detections_per_image_count").update(len(records))
    return tuple(records)


class _DetectorHandler(ModelHandler[SourceImage, PredictionResult, LoadedDetector]):
    """What every detector handler shares: config, batching, resolution, record building."""

    #: The model format this handler loads; its key in :data:`DETECTOR_HANDLERS`.
    format: ClassVar[str]

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__(min_batch_size=config.min_batch_size, max_batch_size=config.max_batch_size)
        self.config = config

    def load_model(self) -> LoadedDetector:
        config = on_claimed_device(self.config)
        resolved = resolve_model(config.model, config.cache_dir)
        spec = resolved.spec
        if spec is not None and (spec.task != "detection" or spec.format != self.format):
            raise ValueError(f"{self.config.model!r} is a {spec.task} model in format {spec.format!r}; "
                             f"{type(self).__name__} loads detection models in format {self.format!r}")
        name = spec.id if spec is not None else Path(resolved.path).name
        detector = self._load(resolved, name, config)
        LOG.info("detector %s loaded on %s (sha256 %s)", name, config.device, resolved.sha256)
        return detector

    @abc.abstractmethod
    def _load(self, resolved: ResolvedModel, name: str, config: DetectorConfig) -> LoadedDetector:
        """Build the model from resolved local files."""

    def run_inference(self, batch: Sequence[SourceImage], model: LoadedDetector,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        # Decoding on the CPU pool: inline, it was a third of a YOLOv8x batch's time on an H100.
        images = cpu_map(decode_rgb, [source.jpeg for source in batch])
        raw = model.detect(images)
        name, labels = model.name(), model.labels()
        if len(raw) != len(batch):  # zip would drop the images past the end, in no ledger
            raise RuntimeError(f"{name} returned {len(raw)} results for {len(batch)} images")
        model_id = f"{name}@sha256:{model.sha256()}"
        return [PredictionResult(source, to_detections(source, detections, labels, name), model_id)
                for source, detections in zip(batch, raw)]

    def validate_inference_args(self, inference_args: Optional[dict[str, Any]]) -> None:
        if inference_args:
            raise ValueError(f"detectors take their settings from DetectorConfig, not inference_args {inference_args}")

    def get_num_bytes(self, batch: Sequence[SourceImage]) -> int:
        return sum(len(source.jpeg) for source in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def share_model_across_processes(self) -> bool:
        # One copy per GPU rather than one per SDK worker process.
        return self.config.on_gpu


# --------------------------------------------------------------------------- ultralytics


def _ultralytics_offline() -> None:
    """Keep ultralytics off the network: no auto-install, no hub, config (fonts) in a writable dir.

    Set before ultralytics is first imported, which reads them at import; values a user
    set are kept.
    """
    os.environ.setdefault("YOLO_OFFLINE", "1")
    os.environ.setdefault("YOLO_AUTOINSTALL", "0")
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_root() / "ultralytics")))
    config_dir.mkdir(parents=True, exist_ok=True)


class _UltralyticsDetector(LoadedDetector):
    def __init__(self, model: Any, name: str, sha256: str, config: DetectorConfig, image_size: int) -> None:
        names = model.names
        super().__init__(name, sha256, [names[i] for i in range(len(names))])
        self._model = model
        self._predict_args = {
            "imgsz": image_size,
            "conf": config.score_threshold,
            "iou": config.iou_threshold,
            "max_det": config.max_detections,
            "device": config.device,
            "verbose": False,
        }
        if config.on_gpu:
            # ultralytics 8.4 replaced half=True with quantize=16 (and warns on half).
            from ultralytics.cfg import DEFAULT_CFG_DICT

            self._predict_args.update({"quantize": 16} if "quantize" in DEFAULT_CFG_DICT else {"half": True})

    def detect(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        # ultralytics reads numpy images as BGR (OpenCV's order); the whole batch is one forward pass.
        bgr = [np.ascontiguousarray(image[..., ::-1]) for image in images]
        results = self._model.predict(bgr, **self._predict_args)
        out = []
        for result in results:
            boxes = result.boxes
            out.append((boxes.xyxy.float().cpu().numpy(), boxes.conf.float().cpu().numpy(),
                        boxes.cls.cpu().numpy().astype(np.int64)))
        return out


class UltralyticsDetectorHandler(_DetectorHandler):
    """Any checkpoint ``ultralytics.YOLO`` loads: ``.pt``, exported ``.onnx``/``.engine``, a model ``.yaml``.

    Labels are the checkpoint's own ``names``. Results are never plotted (plotting fetches
    a font from GitHub).
    """

    format = "ultralytics"

    def _load(self, resolved: ResolvedModel, name: str, config: DetectorConfig) -> LoadedDetector:
        _ultralytics_offline()
        from ultralytics import YOLO  # worker-side: the pipeline builder never imports torch

        spec = resolved.spec
        image_size = config.image_size or (spec.param("imgsz", 640) if spec is not None else 640)
        return _UltralyticsDetector(YOLO(resolved.path, task="detect"), name, resolved.sha256, config,
                                    image_size)


# --------------------------------------------------------------------------- NanoDet on onnxruntime


class _NanoDetDetector(LoadedDetector):
    def __init__(self, session: Any, params: nanodet.NanoDetParams, name: str, sha256: str,
                 labels: Sequence[str], config: DetectorConfig) -> None:
        super().__init__(name, sha256, labels)
        self._session = session
        self._params = params
        self._config = config
        self._output_names = [output.name for output in session.get_outputs()]
        shapes = {i.name: i.shape for i in session.get_inputs()}
        if params.input_name not in shapes:
            raise ValueError(f"{name} has no input {params.input_name!r}; it has {sorted(shapes)}")
        batch_dim = shapes[params.input_name][0]
        # The converted model declares batch 1; a model with a dynamic batch axis takes a stack.
        self._stack = not isinstance(batch_dim, int)

    def detect(self, images: Sequence[np.ndarray]) -> list[RawDetections]:
        inputs = [nanodet.preprocess(image, self._params) for image in images]
        if self._stack:
            stacked = np.concatenate([tensor for tensor, _ in inputs])
            arrays = self._session.run(self._output_names, {self._params.input_name: stacked})
            per_image = [[array[i:i + 1] for array in arrays] for i in range(len(images))]
        else:
            per_image = [self._session.run(self._output_names, {self._params.input_name: tensor})
                         for tensor, _ in inputs]
        config = self._config
        return [
            nanodet.postprocess(dict(zip(self._output_names, arrays)), self._params, transform,
                                (image.shape[1], image.shape[0]), config.score_threshold, config.iou_threshold,
                                config.max_detections)
            for image, (_, transform), arrays in zip(images, inputs, per_image)
        ]


def _onnx_providers(device: str) -> list[Any]:
    if device == "cpu":
        return ["CPUExecutionProvider"]
    device_id = int(device.partition(":")[2] or 0)
    return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]


class NanoDetOnnxHandler(_DetectorHandler):
    """NanoDet (GFL head, COCO-80) exported to ONNX, on onnxruntime; see :mod:`transforms.models.nanodet`.

    Pre/post-processing parameters come from the catalog entry's ``params`` (a model given
    by path gets the 416 COCO defaults and, lacking a catalog, generic ``classN`` labels).
    """

    format = "onnx"

    def _load(self, resolved: ResolvedModel, name: str, config: DetectorConfig) -> LoadedDetector:
        import onnxruntime

        spec: Optional[ModelSpec] = resolved.spec
        params = nanodet.NanoDetParams.from_catalog(dict(spec.params)) if spec is not None else nanodet.NanoDetParams()
        if config.image_size not in (None, params.input_size):
            raise ValueError(f"{name} takes {params.input_size}x{params.input_size} inputs; "
                             f"image_size {config.image_size} cannot apply")
        labels = spec.labels if spec is not None else ()
        if not labels:
            LOG.warning("%s has no labels in the catalog; detections are labelled by class id", name)
        session = onnxruntime.InferenceSession(resolved.path, providers=_onnx_providers(config.device))
        if config.on_gpu and "CUDAExecutionProvider" not in session.get_providers():
            raise RuntimeError(f"device {config.device} asked for, but onnxruntime has no CUDA provider here "
                               f"(available: {onnxruntime.get_available_providers()}); install onnxruntime-gpu")
        return _NanoDetDetector(session, params, name, resolved.sha256, labels, config)


#: Model format (the catalog's ``format``) -> the handler that loads it.
DETECTOR_HANDLERS: Mapping[str, type[_DetectorHandler]] = {
    handler.format: handler for handler in (UltralyticsDetectorHandler, NanoDetOnnxHandler)
}


def detector_format(config: DetectorConfig) -> str:
    """The format whose handler runs ``config.model``: explicit, else the catalog's, else ``ultralytics``.

    Reads the catalog the workers will read (shipped YAML and ``$COUNTERFACTORY_CATALOG``);
    nothing is fetched, so it is cheap at graph construction.
    """
    if config.format is not None:
        return config.format
    spec = load_catalog().get(config.model)
    if spec is None:
        return UltralyticsDetectorHandler.format
    if spec.task != "detection":
        raise ValueError(f"catalog model {spec.id!r} is a {spec.task} model, not a detector")
    if spec.format not in DETECTOR_HANDLERS:
        raise ValueError(f"catalog model {spec.id!r} has format {spec.format!r}; detectors exist for "
                         f"{sorted(DETECTOR_HANDLERS)}")
    return spec.format


def make_detector_handler(config: DetectorConfig) -> _DetectorHandler:
    """The handler for ``config``; nothing is loaded until a worker calls ``load_model``."""
    return DETECTOR_HANDLERS[detector_format(config)](config)


__all__ = [
    "DETECTOR_HANDLERS",
    "METRICS_NAMESPACE",
    "DetectorConfig",
    "LoadedDetector",
    "NanoDetOnnxHandler",
    "RawDetections",
    "UltralyticsDetectorHandler",
    "detector_format",
    "make_detector_handler",
    "to_detections",
]
