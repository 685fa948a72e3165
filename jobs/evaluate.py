"""``counterfactory evaluate``: how good are the removals and how well do the scores know it, against exact truth.

    counterfactory evaluate --truth out/composites --output out/evaluation
    counterfactory evaluate --truth out/composites --remover sd15-inpainting --device cuda --output out/eval-sd
    counterfactory evaluate --truth out/composites --output out/evaluation --fit

Runs bootstrap's remover and scorers (the same options: ``--remover``, ``--remover_options``,
``--masks``, ``--quality``, ``--skip_redetect``, ``--clip``) on composites made by
``counterfactory composites``, with the pasted object's matte as the mask (or, with
``--masks_from segmenter``, the segmenter's mask from its box, so that the removals carry
bootstrap's mask errors), and judges every
candidate against the photo before the paste. Writes a candidate set (``build`` reads it),
``truth/rows-*.parquet`` (one row per candidate: every score, PSNR and SSIM in the hole)
and ``evaluation.json``, and prints:

* per remover kind: median PSNR and SSIM in the hole, and the share of good candidates;
* per score, and for ``quality``: Spearman's rho against PSNR and SSIM, and ROC AUC for
  "PSNR >= --good_db" (scores oriented so that higher means better);
* precision and yield of the build defaults (and of keeping everything, and of a perfect
  chooser), and a precision-yield curve over the ``quality`` threshold.

``--fit`` also fits a new quality model (transforms/quality_model.py) on these rows and
reports it leave-one-background-out, so its figures are on backgrounds it never saw;
the model goes to ``quality_model.json`` in the output folder.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
from typing import Any, Callable, Mapping, Optional, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from jobs.bootstrap import BootstrapOptions, bootstrap_config
from jobs.common import (
    DetectorOptions,
    cli_main,
    output_dir,
    parse_job_options,
    run_info,
    run_pipeline,
    writer_config,
)
from pipeline.evaluate import FUNNEL_STEPS, EvaluateConfig, build_evaluate, read_rows
from pipeline.finalize import MANIFEST, STATS
from pipeline.options import ConfigError
from schemas.sample import CANDIDATE_METADATA_SCHEMA, SCORE_NAMES
from transforms.evaluation import GOOD_PSNR_DB, by_object, judge_selection, roc_auc, rows_chooser, spearman
from transforms.io.files import publish, read_json
from transforms.io.shards import verify_shards
from transforms.quality_model import QualityModel, fit
from transforms.thresholds import DEFAULT_THRESHOLDS, SCORES, Better, SelectionRules, Thresholds

LOG = logging.getLogger(__name__)

DESCRIPTION = "Removers and quality scores judged against composites' exact targets."
#: The ``quality`` thresholds of the precision-yield curve.
CURVE_THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class EvaluateOptions(PipelineOptions):
    INPUTS = ("truth",)  # checked by pipeline.preflight

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--truth", action="append", default=None,
                            help="A composites output folder (counterfactory composites); repeatable.")
        parser.add_argument("--good_db", type=float, default=GOOD_PSNR_DB,
                            help="PSNR in the hole (dB) from which a removal counts as good.")
        parser.add_argument("--masks_from", default="truth", choices=["truth", "segmenter"],
                            help="The removal mask: the pasted matte, or the segmenter's (--segmenter) from the "
                                 "pasted object's box, as bootstrap would mask it.")
        parser.add_argument("--fit", action="store_true",
                            help="Fit a quality model on these candidates (quality_model.json), reported "
                                 "leave-one-background-out.")


def composite_shards(path: str) -> tuple[str, ...]:
    """The shards of a finished composites run; raises ``ValueError`` if it is not one."""
    path = path.rstrip("/")
    if not FileSystems.exists(FileSystems.join(path, STATS)):
        raise ValueError(f"{path} is not a finished composites run (no {STATS})")
    job = read_json(FileSystems.join(path, STATS)).get("job")
    if job != "composites":
        raise ValueError(f"{path} was written by {job!r}, not by composites")
    shardlist = read_json(FileSystems.join(path, MANIFEST))["shardlist"]
    verify_shards(path, shardlist)  # a changed shard or a folder mixing two runs: ShardMismatch, a ValueError
    return tuple(FileSystems.join(path, entry["url"]) for entry in shardlist)


def evaluate_config(options: PipelineOptions) -> EvaluateConfig:
    job = options.view_as(EvaluateOptions)
    if not job.truth:
        raise ConfigError("--truth is required (a composites output folder)")
    if not 0 < job.good_db < 100:
        raise ConfigError(f"--good_db must be in (0, 100) dB, got {job.good_db}")
    try:
        shards = tuple(shard for path in job.truth for shard in composite_shards(path))
    except ValueError as error:
        raise ConfigError(f"--truth: {error}") from error
    bootstrap = bootstrap_config(options)
    with_segmenter = job.masks_from == "segmenter"
    models = {role: model for role, model in bootstrap.run.models.items() if with_segmenter or role != "segmenter"}
    return EvaluateConfig(
        shards=shards, masks=bootstrap.masks, remover=bootstrap.remover, quality=bootstrap.quality,
        writer=writer_config(options, CANDIDATE_METADATA_SCHEMA),
        run=run_info(options, "evaluate", [DetectorOptions, BootstrapOptions, EvaluateOptions], tuple(job.truth),
                     FUNNEL_STEPS, models=models),
        redetect=bootstrap.redetect, clip=bootstrap.clip, segmenter=bootstrap.segmenter if with_segmenter else None)


# --------------------------------------------------------------------------- report


def _oriented(name: str, value: Optional[float]) -> Optional[float]:
    if value is None:
        return None
    return value if SCORES[name].better is Better.HIGHER else -value


def _score_table(rows: Sequence[Mapping[str, Any]], good_db: float) -> dict[str, dict[str, Optional[float]]]:
    psnr = [row["psnr_db"] for row in rows]
    ssim = [row["ssim"] for row in rows]
    good = [value >= good_db for value in psnr]
    table = {}
    for name in SCORE_NAMES:
        values = [_oriented(name, row[name]) for row in rows]
        if all(value is None for value in values):
            continue
        table[name] = {"spearman_psnr": spearman(values, psnr), "spearman_ssim": spearman(values, ssim),
                       "roc_auc": roc_auc(values, good),
                       "computed": sum(value is not None for value in values)}
    return table


def _removers(rows: Sequence[Mapping[str, Any]], good_db: float) -> dict[str, dict[str, float]]:
    kinds: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        kinds.setdefault(":".join(row["remover"].split(":")[:2]), []).append(row)
    return {kind: {"candidates": len(group), "median_psnr_db": statistics.median(r["psnr_db"] for r in group),
                   "median_ssim": statistics.median(r["ssim"] for r in group if math.isfinite(r["ssim"])),
                   "good_share": sum(r["psnr_db"] >= good_db for r in group) / len(group)}
            for kind, group in sorted(kinds.items())}


def _selections(rows: Sequence[Mapping[str, Any]], good_db: float,
                quality_of: Callable[[Mapping[str, Any]], Optional[float]]) -> dict[str, Any]:
    objects = by_object(rows)

    def best(candidates: Sequence[Mapping[str, Any]]) -> int:
        return max(candidates, key=lambda row: row["psnr_db"])["candidate_index"]

    curve = [{"quality_min": t, **judge_selection(objects, rows_chooser(
        SelectionRules(thresholds=Thresholds({**DEFAULT_THRESHOLDS, "quality": t})), quality_of), good_db).to_json()}
        for t in CURVE_THRESHOLDS]
    return {
        "base_rate": sum(row["psnr_db"] >= good_db for row in rows) / len(rows),
        "defaults": judge_selection(objects, rows_chooser(SelectionRules(), quality_of), good_db).to_json(),
        "keep_all": judge_selection(objects, rows_chooser(SelectionRules(thresholds=Thresholds({})), quality_of),
                                    good_db).to_json(),
        "oracle_choice": judge_selection(objects, best, good_db).to_json(),
        "quality_curve": curve,
    }


def _quality_figures(rows: Sequence[Mapping[str, Any]], quality: Sequence[Optional[float]],
                     good_db: float) -> dict[str, Optional[float]]:
    psnr = [row["psnr_db"] for row in rows]
    return {"spearman_psnr": spearman(quality, psnr), "spearman_ssim": spearman(quality, [r["ssim"] for r in rows]),
            "roc_auc": roc_auc(quality, [value >= good_db for value in psnr])}


def cross_validated(rows: Sequence[Mapping[str, Any]], good_db: float) -> tuple[list[float], QualityModel]:
    """Leave-one-background-out ``quality`` of every row, and the model fitted on all of them."""
    backgrounds = sorted({row["background_key"] for row in rows})
    if len(backgrounds) < 3:
        raise ValueError(f"cross-validation needs candidates on 3 or more backgrounds, got {len(backgrounds)}")
    held_out: dict[str, float] = {}
    for background in backgrounds:
        train = [row for row in rows if row["background_key"] != background]
        model = fit(train, [row["psnr_db"] for row in train], good_db=good_db)
        held_out.update({row["key"]: model.quality(row) for row in rows if row["background_key"] == background})
    model = fit(rows, [row["psnr_db"] for row in rows], good_db=good_db, fitted_on={
        "candidates": len(rows), "objects": len({row["object_key"] for row in rows}), "backgrounds": len(backgrounds),
        "good_db": good_db})
    return [held_out[row["key"]] for row in rows], model


def evaluation_report(rows: Sequence[Mapping[str, Any]], good_db: float, fit_model: bool) -> dict[str, Any]:
    """Every figure ``evaluate`` prints, as JSON; with ``fit_model`` also the held-out figures and the model."""
    if not rows:
        raise ValueError("no candidate was judged")
    report: dict[str, Any] = {
        "good_db": good_db, "candidates": len(rows), "objects": len({row["object_key"] for row in rows}),
        "backgrounds": len({row["background_key"] for row in rows}),
        "removers": _removers(rows, good_db), "scores": _score_table(rows, good_db),
        "selection": _selections(rows, good_db, lambda row: row["quality"]),
        "uncomputed_thresholds": [name for name in DEFAULT_THRESHOLDS if all(row[name] is None for row in rows)],
    }
    if fit_model:
        held_out, model = cross_validated(rows, good_db)
        by_key = dict(zip((row["key"] for row in rows), held_out))
        report["fit"] = {"held_out": _quality_figures(rows, held_out, good_db),
                         "held_out_selection": _selections(rows, good_db, lambda row: by_key[row["key"]]),
                         "model": model.to_json()}
    return report


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def report_lines(report: Mapping[str, Any]) -> list[str]:
    """The printed summary of an evaluation report."""
    lines = [f"{report['candidates']} candidates of {report['objects']} objects on {report['backgrounds']} "
             f"backgrounds; good = PSNR >= {report['good_db']:g} dB in the hole"]
    lines.append(f"{'remover':<28}{'cands':>6}{'PSNR':>8}{'SSIM':>7}{'good':>7}")
    for kind, row in report["removers"].items():
        lines.append(f"{kind:<28}{row['candidates']:>6}{row['median_psnr_db']:>8.2f}{row['median_ssim']:>7.3f}"
                     f"{row['good_share']:>7.1%}")
    lines.append(f"{'score (higher = better)':<28}{'rho PSNR':>9}{'rho SSIM':>9}{'AUC':>7}")
    for name, row in report["scores"].items():
        lines.append(f"{name:<28}{_fmt(row['spearman_psnr']):>9}{_fmt(row['spearman_ssim']):>9}{_fmt(row['roc_auc']):>7}")
    selection = report["selection"]
    lines.append(f"base rate of good candidates {selection['base_rate']:.1%}")
    if report["uncomputed_thresholds"]:
        lines.append(f"the defaults threshold {', '.join(report['uncomputed_thresholds'])}, which this run did not "
                     "compute: they keep nothing (as a build would)")
    for name in ("defaults", "keep_all", "oracle_choice"):
        result = selection[name]
        lines.append(f"{name:<16} kept {result['kept']:>4}/{result['objects']:<4} yield {result['yield']:.1%}  "
                     f"precision {_fmt(result['precision'])}")
    lines.append("quality >= t (with the other defaults): " + ", ".join(
        f"{point['quality_min']:.1f}: {_fmt(point['precision'], 2)}@{point['yield']:.0%}"
        for point in selection["quality_curve"]))
    if "fit" in report:
        held = report["fit"]["held_out"]
        lines.append(f"fitted model, leave-one-background-out: rho PSNR {_fmt(held['spearman_psnr'])}, "
                     f"rho SSIM {_fmt(held['spearman_ssim'])}, AUC {_fmt(held['roc_auc'])}")
        curve = report["fit"]["held_out_selection"]["quality_curve"]
        lines.append("  held out, quality >= t (with the other defaults): " + ", ".join(
            f"{point['quality_min']:.1f}: {_fmt(point['precision'], 2)}@{point['yield']:.0%}" for point in curve))
    return lines


def run(argv: Optional[Sequence[str]] = None) -> Mapping[str, Any]:
    """Run the evaluation; returns the report (``evaluation.json``)."""
    options = parse_job_options(argv, "evaluate", DESCRIPTION, DetectorOptions, BootstrapOptions, EvaluateOptions)
    config = evaluate_config(options)
    output = output_dir(options)
    run_pipeline(options, lambda pipeline: build_evaluate(pipeline, config), output)
    job = options.view_as(EvaluateOptions)
    report = evaluation_report(read_rows(output), job.good_db, job.fit)
    publish(FileSystems.join(output, "evaluation.json"), json.dumps(report, indent=2, sort_keys=True).encode())
    if job.fit:
        publish(FileSystems.join(output, "quality_model.json"),
                    json.dumps(report["fit"]["model"], indent=2, sort_keys=True).encode())
    for line in report_lines(report):
        LOG.info("%s", line)
    return report


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)
