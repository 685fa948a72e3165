"""What every job shares: input options -> SourcesConfig, output options -> writer and run info,
and running a pipeline to a checked ledger.

With no input given a job reads the bundled sample images (real photos, frames of real
clips, and deliberately broken files), so every job runs on a fresh machine as is.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import pathlib
import posixpath
from typing import Any, Callable, Mapping, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions

from jobs.console import RunConsole, run_started
from pipeline.finalize import RunInfo, check_ledgers, holds_finished_run, retire_finished_run
from pipeline.options import ConfigError, RunOptions, device_option, mapping_option, parse_options, resolved_config
from pipeline.preflight import preflight, refuse_finished_run
from pipeline.provenance import code_version
from pipeline.runners import new_pipeline, remove_temp_root
from pipeline.sources import AnnotationSource, SourcesConfig, shard_inputs
from transforms.annotated import BoxSource
from transforms.io.decode import DecodeConfig
from transforms.io.files import list_files, storage_failure
from transforms.io.readers import expand_pattern
from transforms.io.shards import ShardMismatch, ShardWriterConfig
from transforms.models.catalog import ModelError, resolve_model
from transforms.models.detection import DetectorConfig

LOG = logging.getLogger(__name__)

SAMPLES = pathlib.Path(__file__).resolve().parent / "samples"
SAMPLE_IMAGES = str(SAMPLES / "images")
SAMPLE_BROKEN = str(SAMPLES / "broken")


class InputOptions(PipelineOptions):
    """Where a job's images come from and how they are decoded."""

    INPUTS = ("input", "shards", "annotations", "class_descriptions")  # checked by pipeline.preflight
    FILE_INPUTS = ("annotations", "class_descriptions")

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--input", action="append", default=None,
            help="Image folder (read recursively), file or glob; repeatable. Default: the bundled samples.",
        )
        parser.add_argument("--shards", action="append", default=None,
                            help="WebDataset tars to read: a glob, or a folder (a run's: the shards its manifest "
                                 "lists, checked against it); repeatable.")
        parser.add_argument("--annotations", action="append", default=None, help="COCO JSON or OpenImages box CSV; repeatable.")
        parser.add_argument("--images_root", help="Folder the annotation files' image paths are relative to.")
        parser.add_argument("--annotation_format", default="auto", choices=["auto", "coco", "openimages"])
        parser.add_argument("--class_descriptions", help="OpenImages class-descriptions CSV (MID -> name).")
        parser.add_argument("--max_pixels", type=int, default=DecodeConfig.max_pixels, help="Reject images with more pixels.")
        parser.add_argument("--jpeg_quality", type=int, default=DecodeConfig.jpeg_quality, help="Quality of re-encoded JPEGs.")


class DetectorOptions(PipelineOptions):
    """Where models run and which detector finds objects: shared by every job that detects.

    Beam parses the options of every ``PipelineOptions`` subclass ever imported, so an
    option two jobs share must be declared once, here.
    """

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--device", default="cpu", type=device_option,
                            help="Where every model runs: cpu, cuda or cuda:N.")
        parser.add_argument("--detector", default="nanodet-coco80", help="Detector: catalog id or path (.pt/.onnx/.engine).")
        parser.add_argument("--detector_options", type=mapping_option, default={},
                            help="DetectorConfig settings, e.g. '{score_threshold: 0.3, max_batch_size: 32}'.")


class BoxOptions(PipelineOptions):
    """Where objects come from, for every job that takes boxes (declared once: see :class:`DetectorOptions`)."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--boxes", default=BoxSource.AUTO.value, choices=[source.value for source in BoxSource],
                            help="Where boxes come from: annotations, the detector, or annotations where an image "
                                 "has them and the detector elsewhere (auto; without annotations, the detector).")


def box_source(options: PipelineOptions) -> BoxSource:
    return BoxSource(options.view_as(BoxOptions).boxes)


def detector_config(options: PipelineOptions) -> DetectorConfig:
    """The detector's config from ``--detector``, ``--device`` and ``--detector_options``."""
    detection = options.view_as(DetectorOptions)
    return build_config(DetectorConfig, {"model": detection.detector, "device": detection.device,
                                         **detection.detector_options}, "detector_options")


def check_patterns(patterns: Sequence[str], what: str) -> None:
    """Fail before building the graph when a pattern, read the way the readers read it, finds nothing."""
    for pattern in patterns:
        if not list_files(expand_pattern(pattern)):
            raise ConfigError(f"{what} {pattern!r} matches no file")


def sources_config(options: PipelineOptions, default_images: Sequence[str]) -> SourcesConfig:
    """The job's inputs; ``default_images`` when none is given."""
    inputs = options.view_as(InputOptions)
    annotations = tuple(
        AnnotationSource(path, inputs.images_root or posixpath.dirname(path), inputs.annotation_format,
                         inputs.class_descriptions)
        for path in inputs.annotations or ()
    )
    images = tuple(inputs.input or ())
    if not (images or inputs.shards or annotations):
        images = tuple(default_images)
        LOG.info("no input given: reading the bundled samples in %s", SAMPLES)
    check_patterns(images, "--input")
    check_patterns(inputs.shards or (), "--shards")
    check_patterns([a.path for a in annotations], "--annotations")
    try:
        shards = shard_inputs(inputs.shards or ())  # ours checked against their manifest, as build checks its own
    except ShardMismatch as error:
        raise ConfigError(f"--shards: {error}") from error
    if inputs.shards and not shards:
        raise ConfigError(f"--shards {' '.join(inputs.shards)}: no tar in it")
    try:
        return SourcesConfig(images=images, shards=shards, annotations=annotations,
                             decode=DecodeConfig(max_pixels=inputs.max_pixels, jpeg_quality=inputs.jpeg_quality),
                             spool_dir=output_dir(options))
    except ValueError as error:
        raise ConfigError(str(error)) from error


def output_dir(options: PipelineOptions) -> str:
    return options.view_as(RunOptions).output.rstrip("/")


def writer_config(options: PipelineOptions, metadata_schema: pa.Schema, directory: Optional[str] = None) -> ShardWriterConfig:
    """Shard settings from the run options; ``directory`` replaces ``--output`` (a build writes below it)."""
    run = options.view_as(RunOptions)
    try:
        return ShardWriterConfig(output_dir=directory or output_dir(options), metadata_schema=metadata_schema,
                                 prefix=run.shard_prefix, max_count=run.max_shard_count, max_size=run.max_shard_bytes,
                                 min_shards=run.min_shards)
    except ValueError as error:
        raise ConfigError(str(error)) from error


def build_config(config_type: type, settings: Mapping[str, Any], option: str) -> Any:
    """``config_type(**settings)``, with a mistake reported as the option that holds it."""
    known = {field.name for field in dataclasses.fields(config_type)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigError(f"--{option}: unknown settings {unknown}; {config_type.__name__} has {sorted(known)}")
    try:
        return config_type(**settings)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"--{option}: {error}") from error


def resolve_model_ids(models: Mapping[str, Optional[str]]) -> dict[str, str]:
    """Resolve (fetching once) every model the run uses: ``role -> id@sha256:digest``."""
    ids = {}
    for role, ref in models.items():
        if ref is None:
            continue
        try:
            resolved = resolve_model(ref)
        except ModelError as error:
            raise ConfigError(f"{role} model {ref!r}: {error}") from error
        ids[role] = f"{ref}@sha256:{resolved.sha256}"
        LOG.info("%s: %s", role, ids[role])
    return ids


def run_info(options: PipelineOptions, job: str, option_classes: Sequence[type[PipelineOptions]],
             inputs: Sequence[str], funnel: Sequence[str], **extra: Any) -> RunInfo:
    """The run's record of itself; ``extra`` fills :class:`RunInfo`'s optional fields."""
    return RunInfo(
        job=job,
        dataset_name=options.view_as(RunOptions).name or posixpath.basename(output_dir(options)),
        code_version=code_version(),
        inputs=tuple(inputs),
        config=resolved_config(options, *option_classes),
        funnel=tuple(funnel),
        started_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    )


def parse_job_options(argv: Optional[Sequence[str]], job: str, description: str,
                      *option_classes: type[PipelineOptions]) -> PipelineOptions:
    options = parse_options(argv, f"counterfactory {job}", description, *option_classes)
    options.view_as(SetupOptions).save_main_session = False
    preflight(options, option_classes)  # before any model resolves or input is listed
    return options


def run_pipeline(options: PipelineOptions, build: Callable[[beam.Pipeline], Any], output: str) -> Mapping[str, Any]:
    """Build with ``build(pipeline)``, run to the end, and return the stats once every ledger closes.

    A finished run already in ``output`` is refused unless ``--overwrite``, which retires it first.
    """
    refuse_finished_run(output, options.view_as(RunOptions).overwrite)
    if holds_finished_run(output):
        retire_finished_run(output)
    run_started(output)
    pipeline = new_pipeline(options, output)
    build(pipeline)
    pipeline.run().wait_until_finish()
    remove_temp_root(output)
    return check_ledgers(output)


def cli_main(run: Callable[[Optional[Sequence[str]]], object], argv: Optional[Sequence[str]]) -> int:
    """A job's CLI entry: exit 0 when the run finished with closed ledgers, 2 on a config error.

    The run's log goes to OUTPUT/run.log too, and a finished run ends with its summary table on stdout.
    """
    with RunConsole() as console:
        try:
            run(argv)
        except ConfigError as error:
            LOG.error("%s", error)
            return 2
        except Exception as error:  # noqa: BLE001 - only a full disk or a refused write is told in one line
            line = storage_failure(error)
            if line is None:
                raise
            LOG.error("%s", line)
            return 1
        console.finished()
    return 0
