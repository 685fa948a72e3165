"""Ingest peak memory against input bytes: 150 vs 1,200 large JPEGs through the whole job.

Each run is a fresh ``counterfactory ingest`` process; its peak resident memory is the
larger of the kernel's own figure for it (``wait4`` ru_maxrss) and the peak of the RSS
summed over its whole process tree (polled from /proc), so worker processes count too.
The baseline is the same job on the small input, in the same run: bounded memory means
the ratio large/small stays near 1 (target: within 20 %, and under 1.5 GB).

    python benchmarks/ingest_memory.py --small 150 --large 1200
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import multiprocessing
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import cv2
import numpy as np
import skimage.data

LOG = logging.getLogger("benchmark")
REPO = pathlib.Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")
#: 2400 x 1800 photos with sensor-like noise encode to about 1.2 MB at quality 90.
SIZE = (2400, 1800)
QUALITY = 90


def make_photo(args: tuple[pathlib.Path, int]) -> int:
    """One distinct large JPEG: a scikit-image photo upscaled, with seeded noise; returns its bytes."""
    folder, index = args
    photo = getattr(skimage.data, PHOTOS[index % len(PHOTOS)])()
    rng = np.random.default_rng(index)
    big = cv2.resize(photo[..., :3], SIZE, interpolation=cv2.INTER_CUBIC).astype(np.int16)
    noisy = np.clip(big + rng.normal(0, 7, big.shape), 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(noisy, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    assert ok
    path = folder / f"photo-{index:05d}.jpg"
    path.write_bytes(encoded.tobytes())
    return path.stat().st_size


def _tree_rss_bytes(root: int) -> int:
    """RSS of ``root`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, parent = int(entry), int(fields[1])
        children.setdefault(parent, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total


def peak_rss_of_ingest(inputs: pathlib.Path, output: pathlib.Path) -> dict:
    command = [sys.executable, "-m", "jobs.cli", "--log-level", "WARNING", "ingest", "--input", str(inputs),
               "--output", str(output)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss_bytes(process.pid))
            stop.wait(0.1)

    poller = threading.Thread(target=poll)
    poller.start()
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    stop.set()
    poller.join()
    if process.returncode != 0:
        raise RuntimeError(f"ingest failed ({process.returncode}): {stderr.decode()[-2000:]}")
    stats = json.loads((output / "stats.json").read_text())
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": max(peak[0], usage.ru_maxrss * 1024),
        "written": stats["ledger"]["written"],
        "output_bytes": sum(path.stat().st_size for path in output.glob("*.tar")),
    }


def _cpu_model() -> str:
    with open("/proc/cpuinfo") as cpuinfo:
        return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=150)
    parser.add_argument("--large", type=int, default=1200)
    parser.add_argument("--json", help="Write the figures here too.")
    parser.add_argument("--photos", help="Keep the generated JPEGs in this folder and reuse the ones already there "
                                         "(making 1,200 takes most of the time on 2 cores).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work = pathlib.Path(tempfile.mkdtemp(prefix="ingest-memory-"))
    try:
        photos = pathlib.Path(args.photos) if args.photos else work / "large"
        photos.mkdir(parents=True, exist_ok=True)
        missing = [(photos, index) for index in range(args.large) if not (photos / f"photo-{index:05d}.jpg").exists()]
        with multiprocessing.Pool(os.cpu_count()) as pool:
            pool.map(make_photo, missing)
        sizes = [(photos / f"photo-{index:05d}.jpg").stat().st_size for index in range(args.large)]
        small = work / "small"
        small.mkdir()
        for index in range(args.small):
            path = photos / f"photo-{index:05d}.jpg"
            os.link(path, small / path.name)
        LOG.info("inputs: %d JPEGs, mean %.2f MB", len(sizes), np.mean(sizes) / 1e6)
        large = work / "large-inputs"
        large.mkdir()
        for index in range(args.large):
            os.link(photos / f"photo-{index:05d}.jpg", large / f"photo-{index:05d}.jpg")
        runs = {}
        for name, folder, count in (("small", small, args.small), ("large", large, args.large)):
            runs[name] = {"images": count, "input_bytes": sum(sizes[:count]), **peak_rss_of_ingest(folder, work / f"out-{name}")}
            LOG.info("%5d images (%.2f GB): peak RSS %.2f GB, %.0f s", count, runs[name]["input_bytes"] / 1e9,
                     runs[name]["peak_rss_bytes"] / 1e9, runs[name]["seconds"])
        ratio = runs["large"]["peak_rss_bytes"] / runs["small"]["peak_rss_bytes"]
        LOG.info("peak RSS ratio large/small: %.2f (target <= 1.20, and under 1.5 GB)", ratio)
        result = {
            "benchmark": "ingest_memory",
            "date": datetime.date.today().isoformat(),
            "machine": f"{os.cpu_count()}-core {_cpu_model()} {platform.machine()} {platform.system()}",
            "command": "python benchmarks/ingest_memory.py " + " ".join(sys.argv[1:]),
            "mean_jpeg_bytes": int(np.mean(sizes)),
            "runs": runs,
            "peak_rss_ratio": round(ratio, 3),
        }
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
