"""``counterfactory composites``: object cut-outs pasted onto other real images -> ground-truth removal shards.

    counterfactory composites --objects out/candidates --output out/composites
    counterfactory composites --objects out/candidates --input 'photos/*.jpg' --composites '{per_image: 10}'

Each sample's ``src.jpg`` is the composite, ``mask.png`` the pasted object's 8-bit matte
and ``removed.png`` the exact removal target (the photo before the paste). Cut-outs come
from candidate shards (``object.png``), never pasted onto the image they came from, and
placed clear of the objects those shards know in the background. Backgrounds default to
the bundled samples. ``counterfactory evaluate`` judges removers and scores on them.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from jobs.common import (
    SAMPLE_IMAGES,
    InputOptions,
    build_config,
    cli_main,
    output_dir,
    parse_job_options,
    run_info,
    run_pipeline,
    sources_config,
    writer_config,
)
from pipeline.build import load_candidate_set
from pipeline.composites import FUNNEL_STEPS, CompositesJobConfig, build_composites
from pipeline.options import ConfigError, mapping_option
from schemas.sample import COMPOSITE_METADATA_SCHEMA
from transforms.composites import COMPOSITES, CompositeConfig

DESCRIPTION = "Object cut-outs pasted onto other real images -> removal shards whose target is exactly known."


class CompositesOptions(PipelineOptions):
    INPUTS = ("objects",)  # checked by pipeline.preflight

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--objects", action="append", default=None,
                            help="A bootstrap output folder whose cut-outs (object.png) are pasted; repeatable.")
        parser.add_argument("--composites", type=mapping_option, default={},
                            help="CompositeConfig, e.g. '{per_image: 6, area_fraction_range: [0.01, 0.12], seed: 0}'.")


def composites_config(options: PipelineOptions) -> CompositesJobConfig:
    job = options.view_as(CompositesOptions)
    if not job.objects:
        raise ConfigError("--objects is required (a bootstrap output folder whose cut-outs are pasted)")
    try:
        objects = tuple(load_candidate_set(path) for path in job.objects)
    except ValueError as error:
        raise ConfigError(f"--objects: {error}") from error
    sources = sources_config(options, (SAMPLE_IMAGES,))
    return CompositesJobConfig(
        objects=objects,
        sources=sources,
        composites=build_config(CompositeConfig, job.composites, "composites"),
        writer=writer_config(options, COMPOSITE_METADATA_SCHEMA),
        run=run_info(options, "composites", [InputOptions, CompositesOptions],
                     (*sources.inputs, *(candidate_set.path for candidate_set in objects)), FUNNEL_STEPS,
                     sub_ledgers=(COMPOSITES,)),
    )


def run(argv: Optional[Sequence[str]] = None) -> Mapping[str, Any]:
    """Make composites; returns the stats, raises ``LedgerError`` if a ledger does not close."""
    options = parse_job_options(argv, "composites", DESCRIPTION, InputOptions, CompositesOptions)
    config = composites_config(options)
    return run_pipeline(options, lambda pipeline: build_composites(pipeline, config), output_dir(options))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)
