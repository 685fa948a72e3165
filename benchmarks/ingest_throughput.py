"""Ingest throughput: images/s through the whole Beam job vs a plain loop doing the same work.

The baseline is what a user would write by hand without counterfactory: Pillow decode,
sha256, webdataset.TarWriter, one process. The ratio says what the job's safety
(rejections, dead letters, dedup, ledger, atomic deterministic shards) costs.

    python benchmarks/ingest_throughput.py --images 2000 --side 512
"""
from __future__ import annotations

import argparse
import hashlib
import io
import logging
import os
import pathlib
import tempfile
import time

import numpy as np
import webdataset
from PIL import Image

from jobs import ingest

LOG = logging.getLogger("benchmark")


def make_inputs(directory: pathlib.Path, count: int, side: int) -> None:
    """Distinct, realistic-size JPEGs: smooth gradients plus noise (compress like photos)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    for index in range(count):
        phase = rng.uniform(0, 6.28, size=3)
        base = np.stack([np.sin(xx * 6 + yy * 3 + p) for p in phase], axis=-1) * 90 + 128
        noisy = base + rng.normal(0, 12, size=base.shape)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(directory / f"img_{index:06d}.jpg", quality=90)


def baseline(inputs: pathlib.Path, output: pathlib.Path) -> None:
    output.mkdir(parents=True, exist_ok=True)
    with open(output / "baseline.tar", "wb") as stream:
        writer = webdataset.TarWriter(stream)
        for path in sorted(inputs.iterdir()):
            data = path.read_bytes()
            image = Image.open(io.BytesIO(data))
            image.load()
            rgb = image.convert("RGB")
            key = hashlib.sha256(data).hexdigest()[:24]
            writer.write({"__key__": key, "src.jpg": data, "json": {"w": rgb.width, "h": rgb.height}})
        writer.close()


def timed(label: str, function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    elapsed = time.perf_counter() - started
    LOG.info("%s: %.2f s", label, elapsed)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--local_workers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    logging.getLogger("transforms").setLevel(logging.WARNING)
    logging.getLogger("pipeline").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = pathlib.Path(tmp) / "inputs"
        inputs.mkdir()
        make_inputs(inputs, args.images, args.side)
        baseline_s = timed("baseline (Pillow + TarWriter loop)", baseline, inputs, pathlib.Path(tmp) / "baseline")
        job_argv = ["--input", str(inputs), "--output", str(pathlib.Path(tmp) / "job"), "--local_workers", str(args.local_workers)]
        job_s = timed("counterfactory ingest", ingest.run, job_argv)
    cores = min(args.local_workers, os.cpu_count() or 1)
    print(f"images: {args.images} at {args.side}x{args.side} JPEG, local_workers={args.local_workers}")
    print(f"baseline: {args.images / baseline_s:.1f} images/s (1 core)")
    print(f"ingest:   {args.images / job_s:.1f} images/s ({args.images / job_s / cores:.1f} images/s per core)")
    print(f"ratio ingest/baseline: {baseline_s / job_s:.2f}")


if __name__ == "__main__":
    main()
