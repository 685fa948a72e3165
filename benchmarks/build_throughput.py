"""Build throughput: pair samples/s through ``counterfactory build`` vs a plain loop doing the same work.

The candidate set is synthetic (pipeline/testing.py: the real candidate format,
random scores). The baseline is what a user would write by hand: webdataset reads each
candidate sample, the first candidate passing the default thresholds is re-pasted and
the pair written with ``webdataset.TarWriter``, one process. The ratio says what the
job's ranking, review, ledger, deterministic shards, Parquet and report cost.
img2dataset's published rate, for comparison, is about 100 samples/s per core
(download + resize + write).

    python benchmarks/build_throughput.py --objects 10000 --side 256
"""
from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import sys
import tempfile

import numpy as np
import webdataset
from _common import quiet_logging, timed
from PIL import Image

from jobs import build
from pipeline.testing import write_candidate_set
from transforms.io.decode import decode_rgb
from transforms.models.removal import encode_png
from transforms.repaste import repaste
from transforms.thresholds import Thresholds


def baseline(candidates: pathlib.Path, output: pathlib.Path) -> int:
    thresholds = Thresholds()
    output.mkdir(parents=True, exist_ok=True)
    written = 0
    with webdataset.TarWriter(str(output / "baseline.tar")) as writer:
        for sample in webdataset.WebDataset(sorted(map(str, candidates.glob("shard-*.tar"))), shardshuffle=False):
            meta = json.loads(sample["json"])
            passing = [c for c in meta["candidates"] if not thresholds.failures(c["scores"])]
            if not passing:
                continue
            removed = sample[passing[0]["field"]]
            with Image.open(io.BytesIO(sample["object.png"])) as cutout:
                rgba = np.array(cutout.convert("RGBA"))
            pasted = repaste(decode_rgb(removed), rgba, tuple(meta["object"]["box"]))
            writer.write({"__key__": sample["__key__"], "src.jpg": sample["src.jpg"], "mask.png": sample["mask.png"],
                          "region.png": sample[passing[0]["region"]], "removed.png": removed,
                          "pasted.png": encode_png(pasted),
                          "object.png": sample["object.png"], "json": meta})
            written += 1
    return written



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=10_000, help="Candidate objects (samples) in the set.")
    parser.add_argument("--side", type=int, default=256, help="Image width; height is 3/4 of it.")
    parser.add_argument("--candidates", type=int, default=4, help="Removal candidates per object.")
    parser.add_argument("--local_workers", type=int, default=1)
    args = parser.parse_args()
    quiet_logging()
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        made_s, _ = timed("synthetic candidate set", write_candidate_set, root / "candidates", args.objects,
                          width=args.side, height=args.side * 3 // 4, num_candidates=args.candidates)
        size = sum(path.stat().st_size for path in (root / "candidates").glob("*.tar"))
        baseline_s, baseline_written = timed("baseline (webdataset + repaste + TarWriter loop)", baseline,
                                             root / "candidates", root / "baseline")
        argv = ["--candidates", str(root / "candidates"), "--output", str(root / "datasets"), "--name", "bench",
                "--version", "v1", "--local_workers", str(args.local_workers)]
        build_s, stats = timed("counterfactory build", build.run, argv)
    cores = min(args.local_workers, os.cpu_count() or 1)
    written = stats["ledger"]["written"]
    report = sys.stdout
    report.write(f"candidate set: {args.objects} objects x {args.candidates} candidates at {args.side}x"
                 f"{args.side * 3 // 4}, {size / 1e6:.0f} MB of shards (made in {made_s:.0f} s)\n")
    report.write(f"baseline: {args.objects / baseline_s:.1f} candidate objects/s, {baseline_written} pairs (1 core)\n")
    report.write(f"build:    {args.objects / build_s:.1f} candidate objects/s ({args.objects / build_s / cores:.1f} "
                 f"per core, local_workers={args.local_workers}), {written} pairs, {build_s:.1f} s\n")
    report.write(f"ratio build/baseline: {baseline_s / build_s:.2f}\n")


if __name__ == "__main__":
    main()
