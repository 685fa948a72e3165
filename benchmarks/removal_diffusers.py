"""Diffusers removal throughput: the handler's batched remover vs the stock pipeline, one image per call.

Both run the same components: an SD-1.5-inpainting-shaped pipeline with random weights
(the real model's compute; no weights are needed), DDIM, the same steps, guidance and
precision. The remover's figure is end to end, as a Beam worker sees it: JPEG/PNG
decoding, the composite back to source size and PNG encoding of every candidate are in
it; the stock pipeline returns arrays at model size and does none of that.

    python benchmarks/removal_diffusers.py --batch 8 --candidates 4            # CUDA, bf16, 512x512
    python benchmarks/removal_diffusers.py --tiny --device cpu --iterations 1   # checks the script, slowly
"""
from __future__ import annotations

import argparse
import io
import logging
import time
from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch
from PIL import Image

from schemas import (
    Box,
    Detection,
    ObjectMask,
    SourceImage,
    content_sha256,
    object_key,
    source_key,
)
from transforms.masks import encode_mask_png
from transforms.models.diffusion import (
    INPAINTING_PIPELINE_SHAPES,
    DiffusionRemovalConfig,
    DiffusionRemover,
    build_random_inpainting_pipeline,
)
from transforms.models.removal import RemovalRequest

LOG = logging.getLogger("benchmark")


def make_requests(config: DiffusionRemovalConfig, count: int, side: int) -> list[RemovalRequest]:
    """Distinct photo-like ``side`` x ``side`` JPEGs, each with one elliptical object of 5-20 % of the image."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    requests = []
    for _ in range(count):
        phase = rng.uniform(0, 6.28, size=3)
        base = np.stack([np.sin(xx * 6 + yy * 3 + p) for p in phase], axis=-1) * 90 + 128
        rgb = np.clip(base + rng.normal(0, 12, size=base.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
        jpeg = buffer.getvalue()
        key = source_key(content_sha256(jpeg))
        source = SourceImage(key=key, sha256=content_sha256(jpeg), uri=f"synthetic:{key}", width=side, height=side,
                             jpeg=jpeg)
        axes = rng.uniform(0.13, 0.25, size=2) * side
        center = rng.uniform(0.3, 0.7, size=2) * side
        mask = np.zeros((side, side), np.uint8)
        cv2.ellipse(mask, tuple(int(c) for c in center), tuple(int(a) for a in axes), 0, 0, 360, 255, -1)
        box = Box(*(center - axes), *(center + axes))
        detection = Detection(label="object", class_id=0, score=1.0, box=box, detector="synthetic")
        obj = ObjectMask(object_key(key, 0), key, 0, detection, encode_mask_png(mask > 0), 1.0, "synthetic")
        requests.append(config.request(source, obj))
    return requests


def timed_calls(call: Callable[[int], object], calls: int, device: torch.device) -> float:
    """Seconds for ``calls`` calls after one untimed warm-up call, with the device synchronised around them."""
    call(-1)
    synchronize(device)
    started = time.perf_counter()
    for index in range(calls):
        call(index)
    synchronize(device)
    return time.perf_counter() - started


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stock_call(pipe, config: DiffusionRemovalConfig, requests: Sequence[RemovalRequest]) -> Callable[[int], object]:
    """One ``StableDiffusionInpaintPipeline.__call__`` per image, on the first request's image and mask."""
    with Image.open(io.BytesIO(requests[0].source.jpeg)) as image:
        image = image.convert("RGB")
    with Image.open(io.BytesIO(requests[0].mask.mask_png)) as mask:
        mask = mask.convert("L")
    pipe.set_progress_bar_config(disable=True)
    device = torch.device(config.device)

    def call(index: int) -> object:
        return pipe(prompt=config.prompt, negative_prompt=config.negative_prompt, image=image, mask_image=mask,
                    height=config.resolution, width=config.resolution, num_inference_steps=config.num_inference_steps,
                    guidance_scale=config.guidance_scale, generator=torch.Generator(device).manual_seed(index),
                    output_type="np").images

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="objects per remover call")
    parser.add_argument("--candidates", type=int, default=4, help="candidates per object")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.0, help="above 1 needs --prompt (guidance doubles the UNet batch)")
    parser.add_argument("--prompt", default="")
    parser.add_argument("--resolution", type=int, help="model square and source size (default: the shape's, 512)")
    parser.add_argument("--iterations", type=int, default=3, help="timed remover calls")
    parser.add_argument("--stock-images", type=int, default=4, help="timed stock pipeline calls (one image each)")
    parser.add_argument("--max-model-batch", type=int, default=16, help="rows per UNet call")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tiny", action="store_true", help="a tiny random pipeline instead of SD-1.5's shape")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    shape = "tiny" if args.tiny else "sd15"
    resolution = args.resolution or INPAINTING_PIPELINE_SHAPES[shape].resolution
    config = DiffusionRemovalConfig(
        model=f"{shape}-random", device=args.device, dtype=args.dtype, num_inference_steps=args.steps,
        guidance_scale=args.guidance, prompt=args.prompt, resolution=resolution, num_candidates=args.candidates,
        max_batch_size=args.batch, max_model_batch=args.max_model_batch)
    device = torch.device(config.device)

    started = time.perf_counter()
    pipe = build_random_inpainting_pipeline(shape)
    remover = DiffusionRemover(pipe, config, config.model)
    LOG.info("built %s pipeline with random weights on %s (%s) in %.1f s", shape, device, config.effective_dtype,
             time.perf_counter() - started)
    requests = make_requests(config, args.batch, resolution)

    remover_s = timed_calls(lambda _: remover(requests), args.iterations, device)
    remover_images = args.iterations * args.batch * args.candidates
    LOG.info("batched remover: %d images in %.2f s", remover_images, remover_s)
    stock_s = timed_calls(stock_call(pipe, config, requests), args.stock_images, device)
    LOG.info("stock pipeline: %d images in %.2f s", args.stock_images, stock_s)

    remover_rate, stock_rate = remover_images / remover_s, args.stock_images / stock_s
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{shape} inpainting, random weights, {resolution}x{resolution}, {args.steps} DDIM steps, "
          f"guidance {args.guidance:g}, {config.effective_dtype} on {name}")
    print(f"batched remover: {remover_rate:.2f} images/s ({args.batch} objects x {args.candidates} candidates a call, "
          f"model batch <= {args.max_model_batch})")
    print(f"stock StableDiffusionInpaintPipeline, one image a call: {stock_rate:.2f} images/s")
    print(f"ratio batched/stock: {remover_rate / stock_rate:.2f}")


if __name__ == "__main__":
    main()
