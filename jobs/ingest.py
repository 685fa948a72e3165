"""``counterfactory ingest``: raw image folders, tar shards or annotated datasets -> source shards.

With no input given it ingests the bundled sample images, broken files included, so
``counterfactory ingest --output DIR`` shows every outcome on a fresh machine.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from jobs.common import (
    SAMPLE_BROKEN,
    SAMPLE_IMAGES,
    InputOptions,
    cli_main,
    output_dir,
    parse_job_options,
    run_info,
    run_pipeline,
    sources_config,
    writer_config,
)
from pipeline.ingest import FUNNEL_STEPS, IngestConfig, build_ingest
from schemas.sample import SOURCE_METADATA_SCHEMA

DESCRIPTION = "Raw image folders, tar shards or annotated datasets -> normalised, deduplicated source shards."
DEFAULT_INPUTS = (SAMPLE_IMAGES, SAMPLE_BROKEN)


def ingest_config(options) -> IngestConfig:
    """Typed stage configs from the parsed options (validated by each config)."""
    sources = sources_config(options, DEFAULT_INPUTS)
    return IngestConfig(
        sources=sources,
        writer=writer_config(options, SOURCE_METADATA_SCHEMA),
        run=run_info(options, "ingest", [InputOptions], sources.inputs, FUNNEL_STEPS),
    )


def run(argv: Optional[Sequence[str]] = None) -> Mapping[str, Any]:
    """Run the ingest pipeline; returns its stats, raises ``LedgerError`` if its ledger does not close."""
    options = parse_job_options(argv, "ingest", DESCRIPTION, InputOptions)
    config = ingest_config(options)
    return run_pipeline(options, lambda pipeline: build_ingest(pipeline, config), output_dir(options))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)
