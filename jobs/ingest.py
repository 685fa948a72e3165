"""``counterfactory ingest``: raw image folders, tar shards or annotated datasets -> source shards.

With no input given it ingests the bundled sample images, broken files included, so
``counterfactory ingest --output DIR`` shows every outcome on a fresh machine.
"""
from __future__ import annotations

import argparse
from typing import Any, Mapping, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from jobs.common import (
    SAMPLE_BROKEN,
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
from pipeline.ingest import FUNNEL_STEPS, MIN_IMAGE_SIDE, IngestConfig, build_ingest
from schemas.sample import SOURCE_METADATA_SCHEMA
from transforms.selection import SelectionConfig

DESCRIPTION = "Raw image folders, tar shards or annotated datasets -> normalised, deduplicated source shards."
DEFAULT_INPUTS = (SAMPLE_IMAGES, SAMPLE_BROKEN)


class IngestOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--min_image_side", type=int, default=MIN_IMAGE_SIDE,
                            help="Reject images whose shorter side is below this (image_too_small).")


def ingest_config(options) -> IngestConfig:
    """Typed stage configs from the parsed options (validated by each config)."""
    sources = sources_config(options, DEFAULT_INPUTS)
    min_side = options.view_as(IngestOptions).min_image_side
    return IngestConfig(
        sources=sources,
        writer=writer_config(options, SOURCE_METADATA_SCHEMA),
        run=run_info(options, "ingest", [InputOptions, IngestOptions], sources.inputs, FUNNEL_STEPS),
        image_size=build_config(SelectionConfig, {"min_image_side": min_side}, "min_image_side"),
    )


def run(argv: Optional[Sequence[str]] = None) -> Mapping[str, Any]:
    """Run the ingest pipeline; returns its stats, raises ``LedgerError`` if its ledger does not close."""
    options = parse_job_options(argv, "ingest", DESCRIPTION, InputOptions, IngestOptions)
    config = ingest_config(options)
    return run_pipeline(options, lambda pipeline: build_ingest(pipeline, config), output_dir(options))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)
