"""What scoring costs in the bootstrap job: its share of the job's busy time, and against the old three scores.

Runs the embedded default (``counterfactory bootstrap`` on the bundled samples, CPU) on
the local runner and splits the busy time by stage from each stage's
``process_time_msec`` and each model's ``inference_batch_latency_micro_secs`` (summed over
threads: shares of busy time, not of wall time). The ``score`` stage computes every
model-free score and ``quality``. The baseline, measured in the same run on the same
candidates, is what scoring computed before ``quality`` existed: SSIM outside, change
inside and the seam, one candidate at a time.

    python benchmarks/scoring_cost.py --json benchmarks/results/scoring_cost_cpu.json
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import webdataset
from _common import metric_sums, quiet_logging

from jobs.bootstrap import BootstrapOptions, bootstrap_config
from jobs.common import DetectorOptions, InputOptions, parse_job_options
from pipeline.bootstrap import build_bootstrap
from pipeline.finalize import check_ledgers
from pipeline.runners import new_pipeline
from schemas.sample import Field
from transforms.io.decode import decode_rgb
from transforms.masks import decode_mask_png
from transforms.quality import (
    QualityConfig,
    at_scoring_size,
    change_inside,
    edit_region,
    score_candidates,
    seam,
    ssim_outside,
)

def legacy_scores(src, mask, removed, config: QualityConfig) -> None:
    """The three scores scoring computed before: SSIM outside, change inside, seam."""
    src, mask, (removed,) = at_scoring_size(src, mask, [removed], config.max_side)
    region = edit_region(src, removed, mask, config.outside_margin_px, config.change_tolerance)
    ssim_outside(src, removed, mask, margin_px=config.outside_margin_px)
    change_inside(src, removed, mask)
    seam(removed, region, band_px=config.seam_band_px, ring_px=config.seam_ring_px)


def rescore(candidates: Path, config: QualityConfig) -> tuple[float, float, int]:
    """(seconds now, seconds legacy, candidates) to score the written candidates again, outside Beam."""
    now = legacy = 0.0
    count = 0
    for sample in webdataset.WebDataset(sorted(str(p) for p in candidates.glob("shard-*.tar")), shardshuffle=False):
        meta = json.loads(sample[Field.JSON])
        src = decode_rgb(sample[Field.SRC])
        mask = decode_mask_png(sample[Field.MASK])
        removed = [decode_rgb(sample[c["field"]]) for c in meta["candidates"]]
        started = time.perf_counter()
        score_candidates(src, mask, removed, config)
        now += time.perf_counter() - started
        started = time.perf_counter()
        for candidate in removed:
            legacy_scores(src, mask, candidate, config)
        legacy += time.perf_counter() - started
        count += len(removed)
    return now, legacy, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="Write the figures here.")
    args = parser.parse_args()
    quiet_logging()
    work = Path(tempfile.mkdtemp(prefix="scoring-cost-"))
    options = parse_job_options(["--output", str(work / "candidates")], "bootstrap", "", InputOptions,
                                DetectorOptions, BootstrapOptions)
    config = bootstrap_config(options)
    pipeline = new_pipeline(options)
    build_bootstrap(pipeline, config)
    started = time.perf_counter()
    result = pipeline.run()
    result.wait_until_finish()
    wall = time.perf_counter() - started
    check_ledgers(str(work / "candidates"))
    busy = {f"{namespace} (inference)": total / 1e6 for namespace, (total, _) in
            metric_sums(result, "inference_batch_latency_micro_secs").items()}
    busy.update({namespace: total / 1e3 for namespace, (total, _) in metric_sums(result, "process_time_msec").items()})
    total = sum(busy.values())
    score_share = busy.get("counterfactory.score", 0.0) / total
    now, legacy, candidates = rescore(work / "candidates", config.quality)
    print(f"bootstrap (embedded default, bundled samples): {wall:.1f} s wall, {total:.1f} s busy")
    for stage, seconds in sorted(busy.items(), key=lambda item: -item[1]):
        print(f"  {stage:45} {seconds:8.1f} s busy  {seconds / total:6.1%}")
    print(f"scoring: {score_share:.1%} of busy time (target <= 30 %)")
    print(f"re-scoring {candidates} candidates: {now / candidates * 1e3:.1f} ms each with every score, "
          f"{legacy / candidates * 1e3:.1f} ms with the three old ones ({now / legacy:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "wall_s": wall, "busy_s": busy, "score_share": score_share, "candidates": candidates,
            "score_ms_per_candidate": now / candidates * 1e3, "legacy_ms_per_candidate": legacy / candidates * 1e3,
            "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
