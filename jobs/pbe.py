"""``counterfactory pbe-pairs`` and ``pbe-benchmark``: images with boxes -> Paint-by-Example pairs.

    counterfactory pbe-pairs --output out/pbe
    counterfactory pbe-pairs --annotations coco.json --images_root images/ --boxes annotations --output out/pbe

Boxes come from the images' annotations (COCO JSON, OpenImages CSV) or from the detector
(``--boxes auto``: annotations where an image has them, the detector elsewhere). Each
box that passes the filters gives one sample: the square target crop (``src.jpg``), a box
or Bezier mask (``mask.png``) and the augmented reference crop (``ref.jpg``), each sample
reproducible from its recorded seed.

``pbe-benchmark`` builds a COCOEE-style evaluation set from the same inputs: images with
exactly one qualifying box whose mask covers less than half the image, each paired with
the object crop of a *different* image of the same class as its reference (box masks
and unaugmented references unless ``--mask`` / ``--reference`` say otherwise).
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from jobs.common import (
    SAMPLE_IMAGES,
    BoxOptions,
    BoxSource,
    DetectorOptions,
    InputOptions,
    box_source,
    build_config,
    cli_main,
    detector_config,
    output_dir,
    parse_job_options,
    resolve_model_ids,
    run_info,
    run_pipeline,
    sources_config,
    writer_config,
)
from pipeline.options import ConfigError, mapping_option
from pipeline.pbe import (
    BENCHMARK_FUNNEL_STEPS,
    FUNNEL_STEPS,
    BenchmarkConfig,
    PbeJobConfig,
    build_pbe,
    build_pbe_benchmark,
)
from schemas.sample import PBE_METADATA_SCHEMA
from transforms.models.detection import make_detector_handler
from transforms.pbe import BOXES, BoxFilterConfig, CropConfig, MaskConfig, PairSettings, PbeConfig, ReferenceConfig

DESCRIPTION = "Images with boxes -> Paint-by-Example pairs: target crop, box or Bezier mask, augmented reference."
BENCHMARK_DESCRIPTION = ("Images with boxes -> a COCOEE-style evaluation set: one object per image, its reference "
                         "from another image of the same class.")


class PbeOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--box_filters", type=mapping_option, default={},
                            help="BoxFilterConfig, e.g. '{min_area_fraction: 0.02, max_area_fraction: 0.8}'.")
        parser.add_argument("--mask", type=mapping_option, default={},
                            help="MaskConfig, e.g. '{extend_fraction: 0.4, bezier_probability: 0.5}'.")
        parser.add_argument("--crop", type=mapping_option, default={}, help="CropConfig, e.g. '{size: 512}'.")
        parser.add_argument("--reference", type=mapping_option, default={},
                            help="ReferenceConfig, e.g. '{size: 224, rotate_limit_deg: 20}'.")
        parser.add_argument("--pairs", type=mapping_option, default={},
                            help="PairSettings: '{max_boxes: 8, seed: 0, jpeg_quality: 95}'.")


class BenchmarkOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--max_mask_fraction", type=float, default=BenchmarkConfig.max_mask_fraction,
                            help="Reject an image whose mask covers this share of it or more (COCOEE: 0.5).")


#: What ``pbe-benchmark`` changes in the defaults: evaluation pairs have box masks and plain references.
BENCHMARK_DEFAULTS = {
    "mask": {"bezier_probability": 0.0},
    "reference": {"flip_p": 0.0, "rotate_limit_deg": 0, "blur_p": 0.0, "elastic_p": 0.0, "color_jitter_p": 0.0},
}


def pbe_settings(options: PbeOptions, defaults: Optional[Mapping[str, Mapping[str, Any]]] = None) -> PbeConfig:
    """The pair geometry configs from their option groups, over ``defaults`` per group."""
    defaults = defaults or {}
    groups = {name: {**defaults.get(name, {}), **getattr(options, name)} for name in ("mask", "reference")}
    try:
        return PbeConfig(
            boxes=build_config(BoxFilterConfig, options.box_filters, "box_filters"),
            masks=build_config(MaskConfig, groups["mask"], "mask"),
            crop=build_config(CropConfig, options.crop, "crop"),
            reference=build_config(ReferenceConfig, groups["reference"], "reference"),
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error


def detector_handler(options: PipelineOptions):
    """The detector's handler and lineage ids, or ``(None, {})`` when boxes come only from annotations."""
    if box_source(options) is BoxSource.ANNOTATIONS:
        return None, {}
    detector = detector_config(options)
    return make_detector_handler(detector), resolve_model_ids({"detector": detector.model})


def pbe_config(options: PipelineOptions) -> PbeJobConfig:
    job = options.view_as(PbeOptions)
    sources = sources_config(options, (SAMPLE_IMAGES,))
    detector, models = detector_handler(options)
    return PbeJobConfig(
        sources=sources,
        pbe=pbe_settings(job),
        pairs=build_config(PairSettings, job.pairs, "pairs"),
        writer=writer_config(options, PBE_METADATA_SCHEMA),
        run=run_info(options, "pbe-pairs", [InputOptions, DetectorOptions, BoxOptions, PbeOptions], sources.inputs,
                     FUNNEL_STEPS, sub_ledgers=(BOXES,), models=models),
        detector=detector,
    )


def run(argv: Optional[Sequence[str]] = None) -> Mapping[str, Any]:
    """Make self-reference pairs; returns the stats, raises ``LedgerError`` if a ledger does not close."""
    options = parse_job_options(argv, "pbe-pairs", DESCRIPTION, InputOptions, DetectorOptions, BoxOptions, PbeOptions)
    config = pbe_config(options)
    return run_pipeline(options, lambda pipeline: build_pbe(pipeline, config), output_dir(options))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)


def benchmark_config(options: PipelineOptions) -> BenchmarkConfig:
    job, benchmark = options.view_as(PbeOptions), options.view_as(BenchmarkOptions)
    sources = sources_config(options, (SAMPLE_IMAGES,))
    detector, models = detector_handler(options)
    if not 0.0 < benchmark.max_mask_fraction <= 1.0:
        raise ConfigError(f"--max_mask_fraction must be in (0, 1], got {benchmark.max_mask_fraction}")
    return BenchmarkConfig(
        sources=sources,
        pbe=pbe_settings(job, BENCHMARK_DEFAULTS),
        pairs=build_config(PairSettings, job.pairs, "pairs"),
        writer=writer_config(options, PBE_METADATA_SCHEMA),
        run=run_info(options, "pbe-benchmark",
                     [InputOptions, DetectorOptions, BoxOptions, PbeOptions, BenchmarkOptions], sources.inputs,
                     BENCHMARK_FUNNEL_STEPS, models=models),
        detector=detector,
        max_mask_fraction=benchmark.max_mask_fraction,
    )


def run_benchmark(argv: Optional[Sequence[str]] = None) -> Mapping[str, Any]:
    """Build a COCOEE-style evaluation set; returns the stats, raises ``LedgerError`` if the ledger does not close."""
    options = parse_job_options(argv, "pbe-benchmark", BENCHMARK_DESCRIPTION, InputOptions, DetectorOptions,
                                BoxOptions, PbeOptions, BenchmarkOptions)
    config = benchmark_config(options)
    return run_pipeline(options, lambda pipeline: build_pbe_benchmark(pipeline, config), output_dir(options))


def benchmark_main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run_benchmark, argv)
