"""Label precision and recall of the detector defaults against annotated images.

What ``bootstrap --boxes detector`` would take for objects, judged by an annotation file:
a detection is right when its box has IoU >= ``--min_iou`` (0.5) with an annotated box of
the same class (detector label == annotation label, after ``--label_map``), each
annotation matched at most once, highest score first (the COCO/VOC rule). Printed:

* precision: right detections / detections. Annotation files that name only some objects
  of an image (the bundled ones: the main object) make every detection of another object
  count as wrong, so on them this is a lower bound;
* label precision: right / detections that overlap *some* annotated box at IoU >= 0.5:
  of the objects the detector did localise, how often its label is the file's. This is
  the figure the issue's wrong labels (a helmet as ``chair``) are about, and incomplete
  annotations do not lower it;
* recall: annotations matched / annotations of classes the detector knows (the others,
  such as a rocket for COCO-80, are counted apart: no threshold can find them).

The detector runs once at ``--sweep_from`` (0.05); a higher threshold only drops
detections (NMS suppresses a box only by higher-scored ones), so the whole sweep comes
from one run. The headline is at the detector's default threshold (``DetectorConfig``,
the same as selection's ``min_score``), for the detector's output and for what
selection's class-agnostic duplicate rule leaves of it (a van as ``car`` 0.52 and
``truck`` 0.45 is one object: bootstrap keeps only the ``car``).

    python benchmarks/label_precision.py                       # the bundled coco-labels.json
    python benchmarks/label_precision.py --annotations coco.json --images_root images/ --json out.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import time
from typing import Mapping, Optional, Sequence

import yaml
from _common import LOG, quiet_logging

from jobs.common import SAMPLES
from schemas import Annotation, Detection, RawInput, SourceImage
from transforms.duplicates import iou
from transforms.io.annotations import PARSERS, AnnotatedImage, detect_format, load_class_descriptions
from transforms.io.decode import DecodeConfig, decode_source
from transforms.io.files import read_bytes
from transforms.models.detection import DetectorConfig, make_detector_handler
from transforms.selection import SelectionConfig, duplicates


@dataclasses.dataclass(frozen=True)
class Counts:
    """One threshold's tally over every image."""

    threshold: float
    detections: int
    right: int
    localised: int
    annotations: int
    found: int

    @property
    def precision(self) -> Optional[float]:
        return self.right / self.detections if self.detections else None

    @property
    def label_precision(self) -> Optional[float]:
        return self.right / self.localised if self.localised else None

    @property
    def recall(self) -> Optional[float]:
        return self.found / self.annotations if self.annotations else None

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "precision": self.precision, "label_precision": self.label_precision,
                "recall": self.recall}


def match(detections: Sequence[Detection], annotations: Sequence[Annotation], min_iou: float,
          label_map: Mapping[str, str]) -> tuple[int, int, int]:
    """(right, localised, found) for one image: greedy one-to-one by score, as COCO matches."""
    labels = [label_map.get(a.label, a.label) for a in annotations]
    taken = [False] * len(annotations)
    right = localised = 0
    for detection in sorted(detections, key=lambda d: -d.score):
        overlaps = [iou(detection.box, a.box) for a in annotations]
        if any(overlap >= min_iou for overlap in overlaps):
            localised += 1
        candidates = [(overlap, i) for i, overlap in enumerate(overlaps)
                      if overlap >= min_iou and not taken[i] and labels[i] == detection.label]
        if candidates:
            taken[max(candidates)[1]] = True
            right += 1
    return right, localised, sum(taken)


def read_annotated(path: str, images_root: str, class_descriptions: Optional[str]) -> list[tuple[SourceImage, tuple]]:
    """Each decodable image the file names with its non-crowd annotations in pixels."""
    fmt = detect_format(path)
    options = {}
    if fmt == "openimages" and class_descriptions:
        options["class_descriptions"] = load_class_descriptions(read_bytes(class_descriptions))
    images = []
    for parsed in PARSERS[fmt](read_bytes(path), images_root, **options):
        if not isinstance(parsed, AnnotatedImage) or not pathlib.Path(parsed.path).exists():
            continue
        source = decode_source(RawInput(parsed.path, read_bytes(parsed.path)), DecodeConfig())
        if not isinstance(source, SourceImage):
            continue
        annotations = tuple(a for a in parsed.in_pixels(source.width, source.height) if not a.is_crowd)
        images.append((source, annotations))
    return images


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotations", default=str(SAMPLES / "annotations" / "coco-labels.json"))
    parser.add_argument("--images_root", default=str(SAMPLES / "images"))
    parser.add_argument("--class_descriptions", help="OpenImages MID -> name CSV.")
    parser.add_argument("--label_map", type=yaml.safe_load, default={},
                        help="Annotation label -> detector label, e.g. '{Coffee cup: cup, Person: person}'.")
    parser.add_argument("--detector", default="nanodet-coco80")
    parser.add_argument("--min_iou", type=float, default=0.5)
    parser.add_argument("--sweep_from", type=float, default=0.05)
    parser.add_argument("--json", help="Write the figures here too.")
    args = parser.parse_args(argv)
    quiet_logging()

    default = DetectorConfig(model=args.detector)
    handler = make_detector_handler(dataclasses.replace(default, score_threshold=args.sweep_from))
    images = read_annotated(args.annotations, args.images_root, args.class_descriptions)
    model = handler.load_model()
    known = set(model.labels())
    started = time.perf_counter()
    predictions = handler.run_inference([source for source, _ in images], model)
    seconds = time.perf_counter() - started
    unknown = sum(1 for _, annotations in images for a in annotations
                  if args.label_map.get(a.label, a.label) not in known)

    thresholds = sorted({default.score_threshold, SelectionConfig.min_score,
                         *(round(args.sweep_from + 0.05 * i, 2) for i in range(19))})
    def tally(threshold: float, deduplicated: bool) -> Counts:
        right = localised = found = detections = annotated = 0
        for (source, annotations), prediction in zip(images, predictions):
            kept = [d for d in prediction.inference if d.score >= threshold]
            if deduplicated:
                kept = [d for d, of in zip(kept, duplicates(kept, SelectionConfig.duplicate_iou)) if of is None]
            findable = [a for a in annotations if args.label_map.get(a.label, a.label) in known]
            r, l, f = match(kept, findable, args.min_iou, args.label_map)
            right, localised, found = right + r, localised + l, found + f
            detections, annotated = detections + len(kept), annotated + len(findable)
        return Counts(threshold, detections, right, localised, annotated, found)

    sweep = [tally(threshold, False) for threshold in thresholds if threshold >= args.sweep_from]
    selected = tally(default.score_threshold, True)
    headline = next(c for c in sweep if c.threshold == default.score_threshold)
    LOG.info("%s on %d images of %s (%d annotations of its classes, %d of others), IoU >= %.2f, %.1f s",
             args.detector, len(images), args.annotations, headline.annotations, unknown, args.min_iou, seconds)
    LOG.info("%9s %10s %6s %9s %10s %15s %7s", "threshold", "detections", "right", "localised", "precision",
             "label_precision", "recall")
    for c in sweep:
        LOG.info("%9.2f %10d %6d %9d %10s %15s %7s", c.threshold, c.detections, c.right, c.localised,
                 _fraction(c.precision), _fraction(c.label_precision), _fraction(c.recall))
    for what, c in (("detector", headline), ("after selection's duplicate rule", selected)):
        LOG.info("default threshold %.2f, %s: precision %s (%d/%d), label precision %s (%d/%d), recall %s (%d/%d)",
                 c.threshold, what, _fraction(c.precision), c.right, c.detections, _fraction(c.label_precision),
                 c.right, c.localised, _fraction(c.recall), c.found, c.annotations)
    result = {"detector": args.detector, "annotations": args.annotations, "images": len(images),
              "min_iou": args.min_iou, "unknown_class_annotations": unknown, "machine": platform.platform(),
              "default": headline.to_json(), "default_deduplicated": selected.to_json(),
              "sweep": [c.to_json() for c in sweep]}
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _fraction(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
