"""``counterfactory ingest``: raw image folders, tar shards or annotated datasets -> source shards.

With no input given it ingests the bundled sample images (real photos, frames of real
clips, and deliberately broken files), so ``counterfactory ingest --output DIR`` shows
every outcome on a fresh machine.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import pathlib
import posixpath
from typing import Optional, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions
from apache_beam.runners.runner import PipelineResult

from pipeline.finalize import RunInfo, read_stats
from pipeline.ingest import FUNNEL_STEPS, AnnotationSource, IngestConfig, build_ingest
from pipeline.ledger import Ledger
from pipeline.options import ConfigError, RunOptions, parse_options, resolved_config
from pipeline.provenance import code_version
from schemas.sample import SOURCE_METADATA_SCHEMA
from transforms.io.decode import DecodeConfig
from transforms.io.files import list_files
from transforms.io.readers import expand_pattern
from transforms.io.shards import ShardWriterConfig

LOG = logging.getLogger(__name__)

SAMPLES = pathlib.Path(__file__).resolve().parent / "samples"
DEFAULT_INPUTS = (str(SAMPLES / "images"), str(SAMPLES / "broken"))
DESCRIPTION = "Raw image folders, tar shards or annotated datasets -> normalised, deduplicated source shards."


class IngestOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--input", action="append", default=None,
            help="Image folder (read recursively), file or glob; repeatable. Default: the bundled samples.",
        )
        parser.add_argument("--shards", action="append", default=None, help="WebDataset tar glob to read; repeatable.")
        parser.add_argument("--annotations", action="append", default=None, help="COCO JSON or OpenImages box CSV; repeatable.")
        parser.add_argument("--images_root", help="Folder the annotation files' image paths are relative to.")
        parser.add_argument("--annotation_format", default="auto", choices=["auto", "coco", "openimages"])
        parser.add_argument("--class_descriptions", help="OpenImages class-descriptions CSV (MID -> name).")
        parser.add_argument("--max_pixels", type=int, default=DecodeConfig.max_pixels, help="Reject images with more pixels.")
        parser.add_argument("--jpeg_quality", type=int, default=DecodeConfig.jpeg_quality, help="Quality of re-encoded JPEGs.")


def _check_matches(patterns: Sequence[str], what: str) -> None:
    """Fail before building the graph when a pattern, read the way the readers read it, finds nothing."""
    for pattern in patterns:
        if not list_files(expand_pattern(pattern)):
            raise ConfigError(f"{what} {pattern!r} matches no file")


def ingest_config(options: PipelineOptions) -> IngestConfig:
    """Typed stage configs from the parsed options (validated by each config)."""
    run_options = options.view_as(RunOptions)
    ingest = options.view_as(IngestOptions)
    annotations = tuple(
        AnnotationSource(path, ingest.images_root or posixpath.dirname(path), ingest.annotation_format, ingest.class_descriptions)
        for path in ingest.annotations or ()
    )
    images = tuple(ingest.input or ())
    if not (images or ingest.shards or annotations):
        images = DEFAULT_INPUTS
        LOG.info("no input given: ingesting the bundled samples in %s", SAMPLES)
    _check_matches(images, "--input")
    _check_matches(ingest.shards or (), "--shards")
    _check_matches([a.path for a in annotations], "--annotations")
    output = run_options.output.rstrip("/")
    config = resolved_config(options, IngestOptions)
    try:
        return IngestConfig(
            images=images,
            shards=tuple(ingest.shards or ()),
            annotations=annotations,
            decode=DecodeConfig(max_pixels=ingest.max_pixels, jpeg_quality=ingest.jpeg_quality),
            writer=ShardWriterConfig(
                output_dir=output,
                metadata_schema=SOURCE_METADATA_SCHEMA,
                prefix=run_options.shard_prefix,
                max_count=run_options.max_shard_count,
                max_size=run_options.max_shard_bytes,
            ),
            run=RunInfo(
                job="ingest",
                dataset_name=run_options.name or posixpath.basename(output),
                code_version=code_version(),
                inputs=images + tuple(ingest.shards or ()) + tuple(a.path for a in annotations),
                config=config,
                funnel=FUNNEL_STEPS,
                started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            ),
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error


def run(argv: Optional[Sequence[str]] = None) -> PipelineResult:
    """Build and run the ingest pipeline; raises ``LedgerError`` if its ledger does not close."""
    options = parse_options(argv, "counterfactory ingest", DESCRIPTION, IngestOptions)
    options.view_as(SetupOptions).save_main_session = False
    config = ingest_config(options)
    pipeline = beam.Pipeline(options=options)
    build_ingest(pipeline, config)
    result = pipeline.run()
    result.wait_until_finish()
    Ledger.from_json(read_stats(config.writer.output_dir)["ledger"]).check()
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry: exit 0 when the run finished with a closed ledger, 2 on a config error."""
    try:
        run(argv)
    except ConfigError as error:
        LOG.error("%s", error)
        return 2
    return 0
