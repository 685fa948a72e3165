"""Review latency: "next sample" and a filtered queue page of the review app, against reading the same
sample straight from its tar with webdataset, on a synthetic 100,000-object candidate set.

The set is in the real candidate format (schemas/sample.py, the real shard writer); to
make 100,000 objects in minutes, a few hundred objects are encoded for real and the rest
are copies of them under their own keys, labels and random scores (the member bytes of a
copy are its template's; sizes and the tar layout are what the format gives). The server
is ``counterfactory review`` in its own process, measured over HTTP from one client:

* next sample: ``GET /api/next`` (the reviewer's next undecided object of the
  near-threshold queue) + ``GET /api/sample/KEY`` + every picture the page shows, cold
  (source, mask overlay, chosen removal, its region overlay, each candidate's thumbnail,
  the cut-out), after ``POST /api/decide`` recorded the decision on the previous one;
* queue page: ``GET /queue`` of one label, 50 rows from a random position (keyset paging);
* baseline: ``webdataset.WebDataset(shard)`` iterated to the same key (its shard given).

    python benchmarks/review_latency.py --objects 100000 --samples 300
"""
from __future__ import annotations

import argparse
import json
import logging
import pathlib
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import webdataset
from _common import quiet_logging, timed

from pipeline.finalize import LINEAGE, MANIFEST, STATS, content_digest
from pipeline.testing import MODELS, object_candidates
from schemas.keys import candidate_key, content_sha256, object_key, source_key
from schemas.sample import CANDIDATE_METADATA_SCHEMA, SCORE_NAMES, Field
from transforms.candidates import CandidateSampleEncoder
from transforms.io.shards import EncodedSample, ShardWriterConfig, manifest, write_shard

REPO = pathlib.Path(__file__).resolve().parents[1]
LABELS = ("person", "car", "cup", "dog", "chair", "bottle", "cat", "bicycle")
PER_SHARD = 1000


def _scores(rng: np.random.Generator, candidates: int) -> list[dict]:
    return [{"ssim_outside": float(rng.uniform(0.9, 1.0)), "change_inside": float(rng.uniform(0.0, 0.4)),
             "redetect_score": float(rng.choice([0.0, rng.uniform(0.1, 0.7)])), "clip_object_gone": None,
             "seam": float(rng.uniform(0.2, 0.6))} for _ in range(candidates)]


def synthetic_set(folder: pathlib.Path, objects: int, templates: int, side: int, candidates: int) -> int:
    """Write the candidate set; returns its size in bytes."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    encoder = CandidateSampleEncoder({"job": "bootstrap", "code_version": "benchmark", "dataset": folder.name}, MODELS)
    made = [encoder(object_candidates(rng, i, side, side * 3 // 4, candidates)) for i in range(templates)]
    config = ShardWriterConfig(output_dir=str(folder), metadata_schema=CANDIDATE_METADATA_SCHEMA, max_count=PER_SHARD)
    samples, shards = [], []
    for i in range(objects):
        template = made[i % templates]
        sha = content_sha256(b"review-benchmark" + i.to_bytes(8, "big"))
        key = object_key(source_key(sha), 0)
        meta = json.loads(template.fields[Field.JSON])
        meta["key"], meta["source"]["key"], meta["source"]["sha256"] = key, source_key(sha), sha
        meta["detection"]["label"] = LABELS[i % len(LABELS)]
        scores = _scores(rng, candidates)
        for candidate, values in zip(meta["candidates"], scores):
            candidate["key"], candidate["scores"] = candidate_key(key, candidate["index"]), values
        row = {**template.metadata, "key": key, "source_key": source_key(sha), "label": meta["detection"]["label"],
               **{name: [values.get(name) for values in scores] for name in SCORE_NAMES}}
        fields = {**template.fields, Field.JSON: json.dumps(meta, sort_keys=True).encode()}
        samples.append(EncodedSample(key=key, fields=fields, metadata=row))
        if len(samples) == PER_SHARD or i == objects - 1:
            samples.sort(key=lambda sample: sample.key)
            shards.append(write_shard(config, config.shard_name(0, len(shards)), samples))
            samples = []
    (folder / MANIFEST).write_text(json.dumps(manifest(shards, folder.name)))
    (folder / LINEAGE).write_text(json.dumps({"content_sha256": content_digest(shards), "models": MODELS}))
    (folder / STATS).write_text(json.dumps({"job": "bootstrap", "funnel": []}))
    return sum(shard.filesize for shard in shards)


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = sorted(1000 * s for s in seconds)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2),
            "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 2), "max_ms": round(ms[-1], 2)}


def measure(folder: pathlib.Path, db: pathlib.Path, samples: int, pages: int) -> dict:
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "jobs.cli", "--log-level", "WARNING", "review", str(folder),
                               "--db", str(db)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        url = server.stdout.readline().strip()
        ready_s = time.perf_counter() - started
        client = httpx.Client(base_url=url.split("/?")[0], timeout=60)
        client.get(url)
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/login").text).group(1)
        headers = {"X-CSRF-Token": csrf}
        client.post("/api/login", json={"reviewer": "bench"}, headers=headers)
        decide, json_only, whole, keys = [], [], [], []
        key = None
        for step in range(samples):
            if key is not None:
                t0 = time.perf_counter()
                client.post("/api/decide", json={"key": key, "action": "accept"}, headers=headers).raise_for_status()
                decide.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            key = client.get("/api/next", params={"after": key} if key else {}).json()["key"]
            view = client.get(f"/api/sample/{key}").json()
            t1 = time.perf_counter()
            chosen = next((c for c in view["candidates"] if c["chosen"]), view["candidates"][0])
            for picture in [view["source"], view["mask"], chosen["full"], chosen["region"],
                            *(c["thumb"] for c in view["candidates"]), *(p["url"] for p in view["panels"])]:
                client.get(picture).raise_for_status()
            t2 = time.perf_counter()
            json_only.append(t1 - t0)
            whole.append(t2 - t0)
            keys.append(key)
        queue_pages = []
        rng = random.Random(0)
        for _ in range(pages):
            after = rng.choice(keys)
            t0 = time.perf_counter()
            response = client.get("/queue", params={"queue": "label", "label": rng.choice(LABELS), "after": after})
            response.raise_for_status()
            queue_pages.append(time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(timeout=30)
    shard_of = {}
    for entry in json.loads((folder / MANIFEST).read_text())["shardlist"]:
        for row_key in pq.read_table(folder / entry["url"].replace(".tar", ".parquet"), columns=["key"]).column(0):
            shard_of[row_key.as_py()] = str(folder / entry["url"])
    baseline = []
    for key in keys:
        t0 = time.perf_counter()
        found = next(s for s in webdataset.WebDataset(shard_of[key], shardshuffle=False) if s["__key__"] == key)
        assert found[Field.SRC]
        baseline.append(time.perf_counter() - t0)
    return {"ready_s": round(ready_s, 1), "next_sample": _percentiles(whole), "next_sample_json": _percentiles(json_only),
            "decide": _percentiles(decide), "queue_page": _percentiles(queue_pages),
            "webdataset_same_sample": _percentiles(baseline)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--templates", type=int, default=300, help="Objects encoded for real; the rest copy them.")
    parser.add_argument("--side", type=int, default=96, help="Image width; height is 3/4 of it.")
    parser.add_argument("--candidates", type=int, default=4)
    parser.add_argument("--samples", type=int, default=300, help="Next-sample steps (one decision each).")
    parser.add_argument("--pages", type=int, default=200, help="Queue pages.")
    parser.add_argument("--json", help="Also write the figures to this file.")
    args = parser.parse_args()
    quiet_logging()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        made_s, size = timed("synthetic candidate set", synthetic_set, root / "candidates", args.objects,
                             args.templates, args.side, args.candidates)
        first = measure(root / "candidates", root / "review.sqlite", args.samples, args.pages)
        again = measure(root / "candidates", root / "review.sqlite", args.samples, args.pages)
    figures = {"objects": args.objects, "candidates": args.candidates, "side": args.side, "shard_bytes": size,
               "set_made_s": round(made_s, 1), "first_run (index built)": first, "second_run (index reused)": again}
    sys.stdout.write(json.dumps(figures, indent=2) + "\n")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
