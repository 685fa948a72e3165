"""``counterfactory pull`` from a local nginx against ``curl`` of the same files, and a ``--where`` pull.

A synthetic version (random-bytes samples in the real tar layout, with Parquet rows that
locate and digest each one and a ``quality`` column uniform on [0, 1)) is published to a
folder nginx serves. In the same run, alternating, ``curl --parallel`` fetches every file of
the version with as many connections as the pull has workers, and ``pull`` fetches and
verifies it (sha256 of every file); target: pull at least 0.8x curl's rate. Then
``--where 'quality < 0.1'`` pulls about 10 % of the samples by byte range, against the
full pull's time and bytes (counted in nginx's access log). Everything lives in a
temporary folder, deleted at the end.

    python benchmarks/pull_throughput.py --size_mb 2000 --workers 8
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._common import quiet_logging  # noqa: E402
from pipeline.publish import REPOSITORY_MANIFEST, publish_version  # noqa: E402
from pipeline.pull import PullConfig, pull  # noqa: E402
from schemas.sample import LOCATION_COLUMNS, sample_digest  # noqa: E402
from tests.nginx import Nginx  # noqa: E402

LOG = logging.getLogger("benchmark")
SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), *LOCATION_COLUMNS,
                    pa.field("quality", pa.float64())])


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    tar.addfile(info, io.BytesIO(data))


def synthesise(version: pathlib.Path, size_mb: int, sample_mb: float, shard_mb: int, seed: int) -> int:
    """A finished version of random samples; returns the sample count."""
    rng = np.random.default_rng(seed)
    version.mkdir(parents=True)
    per_shard = max(1, int(shard_mb / sample_mb))
    samples = max(1, int(size_mb / sample_mb))
    shardlist, index, total_bytes = [], 0, 0
    for shard_number in range((samples + per_shard - 1) // per_shard):
        name = f"shard-{shard_number:06d}-00.tar"
        rows = []
        with open(version / name, "wb") as stream, tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for _ in range(min(per_shard, samples - index)):
                key = f"{index:024x}"
                members = {"bin": rng.bytes(int(sample_mb * 1e6)), "json": json.dumps({"key": key}).encode()}
                start = tar.offset
                for field in sorted(members):
                    _member(tar, f"{key}.{field}", members[field])
                rows.append({"key": key, "shard": name, "tar_offset": start, "tar_length": tar.offset - start,
                             "sample_sha256": sample_digest(members), "quality": float(rng.random())})
                index += 1
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), version / f"{name[:-4]}.parquet")
        size = (version / name).stat().st_size
        total_bytes += size
        shardlist.append({"url": name, "md5sum": "", "nsamples": len(rows), "filesize": size})
    (version / "shardindex.json").write_text(json.dumps({"__kind__": "wids-shard-index-v1", "wids_version": 1,
                                                         "name": "synthetic", "shardlist": shardlist}))
    (version / "lineage.json").write_text(json.dumps({"dataset": "synthetic-v1", "samples": samples}))
    (version / "stats.json").write_text(json.dumps({
        "job": "synthetic", "code_version": "benchmark", "finished_at": "2026-12-03T00:00:00+00:00",
        "shards": {"count": len(shardlist), "samples": samples, "bytes": total_bytes}}))
    return samples


def curl_all(url: str, files: list[str], target: pathlib.Path, connections: int) -> float:
    config = target.parent / "curl.config"
    config.write_text("".join(f'url = "{url}/{path}"\noutput = "{target / path}"\n' for path in files))
    started = time.perf_counter()
    subprocess.run(["curl", "--silent", "--no-progress-meter", "--show-error", "--fail", "--create-dirs", "--parallel",
                    "--parallel-max", str(connections), "--config", str(config)], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def sha256sum_all(files: list[str], target: pathlib.Path, processes: int) -> float:
    """What checking curl's files against the manifest costs (sha256sum, ``processes`` at once)."""
    started = time.perf_counter()
    subprocess.run(f"printf '%s\\0' {' '.join(files)} | xargs -0 -P {processes} -n 1 sha256sum > /dev/null",
                   shell=True, check=True, cwd=target)
    return time.perf_counter() - started


def timed_pull(config: PullConfig) -> tuple[float, object]:
    started = time.perf_counter()
    result = pull(config)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size_mb", type=int, default=2000)
    parser.add_argument("--sample_mb", type=float, default=1.0)
    parser.add_argument("--shard_mb", type=int, default=100)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--where", default="quality < 0.1")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "benchmarks" / "results" /
                        f"pull_throughput_cpu_{datetime.date.today().isoformat()}.json")
    args = parser.parse_args()
    quiet_logging()
    base = pathlib.Path(tempfile.mkdtemp(prefix="pull_throughput_"))
    server = Nginx(base / "www", base / "nginx")
    try:
        samples = synthesise(base / "out" / "synthetic" / "v1", args.size_mb, args.sample_mb, args.shard_mb, seed=0)
        publish_version(str(base / "out" / "synthetic" / "v1"), str(base / "www"))
        shutil.rmtree(base / "out")
        manifest = json.loads((base / "www" / "synthetic" / "v1" / REPOSITORY_MANIFEST).read_text())
        files = [entry["path"] for entry in manifest["files"]]
        total = sum(entry["size"] for entry in manifest["files"])
        LOG.info("version: %d samples, %d files, %.1f MB", samples, len(files), total / 1e6)
        server.start()
        curl_s, check_s, pull_s = [], [], []
        for round_number in range(args.rounds):
            target = base / "curl"
            curl_s.append(curl_all(f"{server.url}/synthetic/v1", files, target, args.workers))
            check_s.append(sha256sum_all(files, target, os.cpu_count() or 1))
            shutil.rmtree(target)
            elapsed, _ = timed_pull(PullConfig("synthetic@v1", server.url, str(base / "pulled"), workers=args.workers))
            pull_s.append(elapsed)
            shutil.rmtree(base / "pulled")
            LOG.info("round %d: curl %.2f s (%.0f MB/s) + sha256sum %.2f s, pull %.2f s (%.0f MB/s)", round_number,
                     curl_s[-1], total / 1e6 / curl_s[-1], check_s[-1], pull_s[-1], total / 1e6 / pull_s[-1])
        server.stop()
        server.start()  # a fresh access log: count what the --where pull reads
        where_s, where_result = timed_pull(PullConfig("synthetic@v1", server.url, str(base / "where"),
                                                      where=args.where, workers=args.workers))
        where_bytes = server.bytes_served()
        LOG.info("--where %r: %d samples in %.2f s, %.1f MB served", args.where, where_result.samples, where_s,
                 where_bytes / 1e6)
        result = {
            "benchmark": "pull_throughput", "date": datetime.date.today().isoformat(),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "command": " ".join(["python", "benchmarks/pull_throughput.py", *sys.argv[1:]]),
            "version": {"samples": samples, "files": len(files), "bytes": total, "sample_mb": args.sample_mb},
            "workers": args.workers,
            "curl_parallel_s": curl_s, "sha256sum_after_curl_s": check_s, "pull_s": pull_s,
            "curl_mb_per_s": total / 1e6 / min(curl_s), "pull_mb_per_s": total / 1e6 / min(pull_s),
            "pull_over_curl": min(curl_s) / min(pull_s),
            "pull_over_curl_then_sha256sum": min(c + h for c, h in zip(curl_s, check_s)) / min(pull_s),
            "where": {"expression": args.where, "samples": where_result.samples, "fraction": where_result.samples / samples,
                      "seconds": where_s, "bytes_served": where_bytes,
                      "time_vs_full_pull": where_s / min(pull_s), "bytes_vs_full": where_bytes / total},
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        LOG.info("%s", json.dumps(result, indent=2))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
