"""Detection and segmentation throughput: our handlers against the bare model and the old per-image path.

Both models have random weights (the real architectures' compute; no weights are needed) and
see synthetic photo-like JPEG ``SourceImage`` records, 640x480 by default.

Detector: a YOLOv8x-architecture model built from ultralytics' ``yolov8x.yaml``, saved as a
``.pt`` and loaded through :class:`UltralyticsDetectorHandler` at image size 640 (fp16 on
CUDA). The handler figure is end to end, as a Beam worker sees it: JPEG decode, ultralytics'
letterbox/upload, forward, NMS and the records. The baseline (the ceiling) is the bare fused
fp16 ``DetectionModel`` forward on the same images, already letterboxed and on the GPU.
Random weights score every anchor at about the head's class-bias prior (at most ~1.6e-4),
so with ``--score-threshold`` 0.25 (the handler's default) no candidate reaches NMS and NMS
cannot dominate the figure; real weights add NMS over the few hundred candidates an image
that pass the threshold, on the GPU. The detections per image are printed so this can be
checked; a threshold near 0 would instead send all 80 classes of every anchor to NMS.

Segmenter: a SAM vit_h-architecture model through :class:`SegmentAnythingHandler` (bf16
autocast), ``--boxes`` boxes an image: the image encoder runs on stacks of
``--encoder-batch`` images, then all of an image's boxes go through one decoder call; the
figure includes JPEG decode and PNG encoding of every mask. It is compared with the
previous per-image path (``SamPredictor.set_image``, the encoder at batch 1, then the same
single decoder call) run through the same handler on the same model, and with the bare
encoder forward on a stack of ``--encoder-batch`` preprocessed images (the ceiling). The
encoder's FLOPs are counted once with ``FlopCounterMode``; the fraction of peak is that
count times images/s over the GPU's dense bf16 peak (looked up by device name, or
``--peak-tflops``).

    python benchmarks/detect_segment_gpu.py                  # CUDA; about 2 minutes on an H100
    python benchmarks/detect_segment_gpu.py --device cpu --tiny   # yolov8n + a tiny SAM: checks the script
"""
from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from _common import quiet_logging, synthetic_source, timed_calls

from schemas import Box, Detection, SourceImage
from transforms.io.decode import decode_rgb
from transforms.masks import encode_mask_png
from transforms.models.detection import DetectorConfig, UltralyticsDetectorHandler
from transforms.models.segmentation import (
    SegmentationRequest,
    SegmenterConfig,
    segmentation_handler,
)

LOG = logging.getLogger("benchmark")

#: Dense bf16 tensor-core peaks (TFLOP/s), most specific name first.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))


def make_sources(count: int, width: int, height: int, seed: int = 0) -> list[SourceImage]:
    """Distinct photo-like JPEGs: smooth colour waves, a few bright blobs, sensor-like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
    sources = []
    for _ in range(count):
        phase = rng.uniform(0, 6.28, size=3)
        rgb = np.stack([np.sin(xx * 6 + yy * 3 + p) for p in phase], axis=-1) * 70 + 128
        for _ in range(3):
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
            blob = ((xx - cx * width / max(width, height)) ** 2 + (yy - cy * height / max(width, height)) ** 2) < r * r
            rgb[blob] = rng.uniform(0, 255, size=3)
        sources.append(synthetic_source(np.clip(rgb + rng.normal(0, 10, size=rgb.shape), 0, 255).astype(np.uint8)))
    return sources


def make_requests(sources: Sequence[SourceImage], boxes: int, seed: int = 0) -> list[SegmentationRequest]:
    """``boxes`` random boxes of 10-60 % of each side per image."""
    rng = np.random.default_rng(seed)
    requests = []
    for source in sources:
        detections = []
        for _ in range(boxes):
            w, h = rng.uniform(0.1, 0.6) * source.width, rng.uniform(0.1, 0.6) * source.height
            x, y = rng.uniform(0, source.width - w), rng.uniform(0, source.height - h)
            detections.append(Detection(label="object", class_id=0, score=1.0, box=Box(x, y, x + w, y + h),
                                        detector="synthetic"))
        requests.append(SegmentationRequest.numbered(source, detections))
    return requests




def batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[start:start + size] for start in range(0, len(items), size)]


# --------------------------------------------------------------------------- detector


def ultralytics_offline(config_dir: Path) -> None:
    """No downloads, no auto-install, settings and fonts in a scratch dir: set before ultralytics is imported."""
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "0"
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)


def bench_detector(args: argparse.Namespace, device: torch.device, scratch: Path) -> dict[str, Any]:
    from ultralytics import YOLO
    from ultralytics.data.augment import LetterBox

    architecture = "yolov8n.yaml" if args.tiny else "yolov8x.yaml"
    started = time.perf_counter()
    weights = scratch / architecture.replace(".yaml", "-random.pt")
    YOLO(architecture).save(str(weights))
    config = DetectorConfig(model=str(weights), format="ultralytics", device=args.device, image_size=args.image_size,
                            score_threshold=args.score_threshold, min_batch_size=1, max_batch_size=args.det_batch)
    handler = UltralyticsDetectorHandler(config)
    detector = handler.load_model()
    LOG.info("built %s with random weights and loaded it through the handler in %.1f s", architecture,
             time.perf_counter() - started)

    sources = make_sources(args.det_batch * args.det_calls, args.width, args.height)
    calls = batches(sources, args.det_batch)
    counts: list[int] = []

    def handler_call(index: int) -> None:
        results = handler.run_inference(calls[max(index, 0) % len(calls)], detector)
        if index >= 0:
            counts.extend(len(result.inference) for result in results)

    handler_s = timed_calls(handler_call, len(calls), device, warmup=2)

    # The ceiling: the same architecture, fused, fp16 on CUDA, on images already letterboxed as
    # ultralytics does for a batch of same-sized images, and already on the device.
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    model = YOLO(str(weights)).model.fuse().to(device=device, dtype=dtype).eval()
    letterbox = LetterBox(args.image_size, auto=True, stride=int(model.stride.max()))
    pixels = np.stack([letterbox(image=decode_rgb(source.jpeg)) for source in calls[0]])
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device=device, dtype=dtype) / 255

    def forward(index: int) -> None:
        with torch.inference_mode():
            model(tensor)

    forward_calls = args.det_calls * 2
    forward_s = timed_calls(forward, forward_calls, device, warmup=3)
    return {
        "architecture": architecture.removesuffix(".yaml"),
        "handler_rate": len(sources) / handler_s,
        "forward_rate": forward_calls * len(calls[0]) / forward_s,
        "input_shape": tuple(tensor.shape[2:]),
        "detections_per_image": float(np.mean(counts)) if counts else 0.0,
    }


# --------------------------------------------------------------------------- segmenter


class PerImagePredictorSegmenter:
    """The SAM handler's segmenter before batching: ``SamPredictor.set_image`` per image (the
    encoder at batch 1), then all of the image's boxes in one decoder call."""

    def __init__(self, sam: Any, name: str, bf16: bool) -> None:
        self._sam = sam
        self._name = name
        self._bf16 = bf16

    def name(self) -> str:
        return self._name

    def segment_batch(self, images: Sequence[np.ndarray],
                      boxes: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self._segment(rgb, image_boxes) for rgb, image_boxes in zip(images, boxes)]

    def _segment(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from segment_anything import SamPredictor

        predictor = SamPredictor(self._sam)
        device = predictor.device
        autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                    if self._bf16 and device.type == "cuda" else nullcontext())
        with torch.inference_mode(), autocast:
            predictor.set_image(rgb, image_format="RGB")
            prompts = predictor.transform.apply_boxes_torch(torch.as_tensor(boxes, device=device), rgb.shape[:2])
            masks, ious, _ = predictor.predict_torch(point_coords=None, point_labels=None, boxes=prompts,
                                                     multimask_output=False)
        return masks[:, 0].cpu().numpy(), ious[:, 0].float().cpu().numpy()


def encoder_flops(sam: Any, device: torch.device, autocast: Any) -> int:
    """FLOPs of one 1024x1024 image through the image encoder, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    size = sam.image_encoder.img_size
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), autocast, counter:
        sam.image_encoder(torch.zeros(1, 3, size, size, device=device))
    return counter.get_total_flops()


def bench_segmenter(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    architecture = "tiny" if args.tiny else "vit_h"
    config = SegmenterConfig(model=None, format="sam-checkpoint", architecture=architecture, device=args.device,
                             bf16=True, min_batch_size=1, max_batch_size=args.sam_batch,
                             encoder_batch_size=args.encoder_batch)
    handler = segmentation_handler(config)
    started = time.perf_counter()
    segmenter = handler.load_model()
    LOG.info("built SAM %s with random weights on %s in %.1f s", architecture, device, time.perf_counter() - started)
    # The handler's own module, so both paths run the very same weights.
    sam = segmenter._sam
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else nullcontext())
    flops = encoder_flops(sam, device, autocast)
    LOG.info("image encoder: %.3f TFLOP per %dx%d image", flops / 1e12, sam.image_encoder.img_size,
             sam.image_encoder.img_size)

    requests = make_requests(make_sources(args.sam_batch * args.sam_calls, args.width, args.height, seed=1), args.boxes)
    calls = batches(requests, args.sam_batch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    handler_s = timed_calls(lambda index: handler.run_inference(calls[max(index, 0) % len(calls)], segmenter),
                            len(calls), device)
    masks = [mask for masks, _ in segmenter.segment_batch([decode_rgb(r.source.jpeg) for r in calls[0][:2]],
                                                          [r.boxes_xyxy() for r in calls[0][:2]]) for mask in masks]
    started = time.perf_counter()
    for mask in masks:
        encode_mask_png(mask)
    png_ms = (time.perf_counter() - started) / len(masks) * 1000
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")

    # The bootstrap job's shape: many worker threads, one or two images a call. One caller at a time is what
    # each call got before calls shared encoder stacks; --sam-callers threads at once is what they share now.
    singles = requests[:args.single_images]

    def one_image_call(index: int) -> None:
        handler.run_inference([singles[max(index, 0) % len(singles)]], segmenter)

    one_caller_s = timed_calls(one_image_call, len(singles), device)
    with concurrent.futures.ThreadPoolExecutor(args.sam_callers) as callers:
        def every_image_at_once(index: int) -> None:  # the warm-up (index -1) is one call
            if index < 0:
                one_image_call(index)
            else:
                list(callers.map(one_image_call, range(len(singles))))

        many_callers_s = timed_calls(every_image_at_once, 1, device)
    old = PerImagePredictorSegmenter(sam, segmenter.name(), bf16=True)
    old_requests = requests[:args.predictor_images]
    predictor_s = timed_calls(lambda index: handler.run_inference([old_requests[max(index, 0) % len(old_requests)]],
                                                                  old),
                              len(old_requests), device)

    # The ceiling: the encoder alone on a stack of preprocessed images already on the device.
    size = sam.image_encoder.img_size
    pixels = torch.randn(args.encoder_batch, 3, size, size, device=device)

    def encode(index: int) -> None:
        with torch.inference_mode(), autocast:
            sam.image_encoder(pixels)

    encoder_calls = max(1, args.sam_calls)
    encoder_s = timed_calls(encode, encoder_calls, device)
    handler_rate = len(requests) / handler_s
    return {
        "architecture": architecture,
        "handler_rate": handler_rate,
        "predictor_rate": len(old_requests) / predictor_s,
        "one_caller_rate": len(singles) / one_caller_s,
        "many_callers_rate": len(singles) / many_callers_s,
        "encoder_rate": encoder_calls * args.encoder_batch / encoder_s,
        "flops": flops,
        "peak_gib": peak_gib,
        "png_ms": png_ms,
    }


# --------------------------------------------------------------------------- main


def peak_tflops(args: argparse.Namespace, device_name: str) -> Optional[float]:
    if args.peak_tflops is not None:
        return args.peak_tflops
    return next((peak for name, peak in PEAK_BF16_TFLOPS if name in device_name), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="yolov8n and a 2-block SAM, few images: checks the script (e.g. on CPU)")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--image-size", type=int, default=640, help="detector input size")
    parser.add_argument("--score-threshold", type=float, default=0.25, help="detector score threshold")
    parser.add_argument("--det-batch", type=int, help="images per detector handler call (default 32; tiny 4)")
    parser.add_argument("--det-calls", type=int, help="timed detector handler calls (default 8; tiny 1)")
    parser.add_argument("--sam-batch", type=int, help="images per SAM handler call, Beam's batch (default 16; tiny 3)")
    parser.add_argument("--encoder-batch", type=int, help="images per SAM encoder pass (default 8; tiny 2)")
    parser.add_argument("--sam-calls", type=int, help="timed SAM handler calls (default 6; tiny 1)")
    parser.add_argument("--predictor-images", type=int, help="timed images on the per-image path (default 32; tiny 2)")
    parser.add_argument("--single-images", type=int, help="images sent one a call (default 48; tiny 6)")
    parser.add_argument("--sam-callers", type=int, default=12, help="threads calling SAM at once, as a worker's do")
    parser.add_argument("--boxes", type=int, default=4, help="boxes per image for SAM")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: by device name)")
    parser.add_argument("--skip", choices=("detector", "segmenter"), help="leave one of the two out")
    args = parser.parse_args()
    defaults = {"det_batch": (32, 4), "det_calls": (8, 1), "sam_batch": (16, 3), "encoder_batch": (8, 2),
                "sam_calls": (6, 1), "predictor_images": (32, 2), "single_images": (48, 6)}
    for name, (full, tiny) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    quiet_logging()
    device = torch.device(args.device)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="detect_segment_gpu_") as scratch:
        ultralytics_offline(Path(scratch) / "ultralytics")
        if args.skip != "detector":
            det = bench_detector(args, device, Path(scratch))
            ratio = det["handler_rate"] / det["forward_rate"]
            rows += [
                (f"{det['architecture']} handler, batch {args.det_batch} (decode..NMS)", f"{det['handler_rate']:.1f}",
                 "", ""),
                (f"{det['architecture']} bare forward, {tuple(det['input_shape'])} fp16" if device.type == "cuda"
                 else f"{det['architecture']} bare forward, {tuple(det['input_shape'])} fp32",
                 f"{det['forward_rate']:.1f}", "", f"handler/bare {ratio:.2f}"),
            ]
            notes.append(f"detector: {det['detections_per_image']:.1f} detections per image at score threshold "
                         f"{args.score_threshold} (random weights)")
        if args.skip != "segmenter":
            sam = bench_segmenter(args, device)
            masks = args.boxes
            peak = peak_tflops(args, device_name)
            tflop = sam["flops"] / 1e12

            def mfu(rate: float) -> str:
                return f"{100 * rate * tflop / peak:.0f}% of bf16 peak" if peak else ""

            rows += [
                (f"SAM {sam['architecture']} handler, batch {args.sam_batch}, encoder stack {args.encoder_batch}",
                 f"{sam['handler_rate']:.1f}", f"{sam['handler_rate'] * masks:.1f}", mfu(sam["handler_rate"])),
                (f"SAM {sam['architecture']} handler, one image a call, one caller",
                 f"{sam['one_caller_rate']:.1f}", f"{sam['one_caller_rate'] * masks:.1f}", mfu(sam["one_caller_rate"])),
                (f"SAM {sam['architecture']} handler, one image a call, {args.sam_callers} callers (shared stacks)",
                 f"{sam['many_callers_rate']:.1f}", f"{sam['many_callers_rate'] * masks:.1f}",
                 f"x one caller {sam['many_callers_rate'] / sam['one_caller_rate']:.2f}"),
                (f"SAM {sam['architecture']} per-image SamPredictor (encoder at batch 1)",
                 f"{sam['predictor_rate']:.1f}", f"{sam['predictor_rate'] * masks:.1f}",
                 f"handler/per-image {sam['handler_rate'] / sam['predictor_rate']:.2f}"),
                (f"SAM {sam['architecture']} bare encoder, stack of {args.encoder_batch}", f"{sam['encoder_rate']:.1f}",
                 "", mfu(sam["encoder_rate"])),
            ]
            notes.append(f"SAM: {masks} boxes per image, image encoder {tflop:.3f} TFLOP per image (FlopCounterMode)"
                         + (f", peak {peak:g} TFLOP/s" if peak else ", peak unknown (--peak-tflops)")
                         + (f", {sam['peak_gib']:.1f} GiB peak GPU memory in the handler" if device.type == "cuda"
                            else ""))
            notes.append(f"SAM: PNG encoding {sam['png_ms']:.1f} ms a mask on one thread (random weights give "
                         "speckled masks, slower to compress than real ones; the handler encodes on a thread pool)")

    print(f"{device_name}, torch {torch.__version__}, {args.width}x{args.height} synthetic JPEGs")
    width = max(len(row[0]) for row in rows)
    print(f"{'':{width}}  {'images/s':>9}  {'masks/s':>8}")
    for label, images, masks_s, note in rows:
        print(f"{label:{width}}  {images:>9}  {masks_s:>8}  {note}")
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
