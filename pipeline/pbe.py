"""The self-reference graphs (Paint-by-Example): boxes -> (target crop, mask, reference) shards.

    ReadSources -> boxes (the image's annotations, or the detector's) -> per image: box
      filters, then per kept box a square target crop, a box or Bezier mask and an
      augmented reference crop -> write shards -> finalize

The benchmark graph (COCOEE-style evaluation set) keeps images with exactly one
qualifying box whose mask covers less than half the image, and takes each one's
reference from a *different* image of the same class.

Two ledgers close: images (``written`` when at least one of its boxes became a pair,
else rejected ``no_boxes`` / ``no_suitable_box`` / a reading reason, or a dead letter) and
boxes (``written``, or rejected with the box filter's reason). An image is processed in
one step, all of its pairs made before any is emitted, so an error leaves one dead
letter for the image and none of its boxes half-counted.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.pvalue import TaggedOutput

from pipeline.finalize import FUNNEL, FinalizeInputs, FinalizeRun, RunInfo
from pipeline.inference import RunModel
from pipeline.ledger import INPUTS, REJECTED, WRITTEN, Tally, count_as, count_dead_letters, count_rejections
from pipeline.sources import SOURCE_FUNNEL_STEPS, ReadSources, SourcesConfig, flatten
from pipeline.stage import StageDoFn, apply_stage, apply_tagged_stage
from schemas import Reason, Rejection, SourceImage, object_key
from schemas.keys import derived_seed
from schemas.sample import LabelledBox, pbe_fields, pbe_metadata_row
from transforms.checks import is_integral
from transforms.io.decode import decode_rgb, encode_jpeg
from transforms.io.shards import EncodedSample, ShardWriterConfig, WriteShards
from transforms.masks import encode_mask_png
from transforms.pbe import PbeConfig, check_box, crop_and_resize, make_pair, object_mask, reference_crop, square_crop

#: Counters of the box ledger are ``boxes.<counter>``.
BOXES = "boxes"
FUNNEL_STEPS = (*SOURCE_FUNNEL_STEPS, "with_boxes", "boxes", "boxes_kept", "pairs_written")
_BOX_COUNTS = "box_counts"
_BOX_REJECTED = "box_rejected"


@dataclasses.dataclass(frozen=True)
class PairSettings:
    """Per-job pair settings: at most ``max_boxes`` pairs per image (largest boxes first),
    seeds derived from ``seed`` and each box's key, JPEG quality of target and reference."""

    max_boxes: int = 8
    seed: int = 0
    jpeg_quality: int = 95

    def __post_init__(self) -> None:
        if not is_integral(self.max_boxes) or self.max_boxes < 1:
            raise ValueError(f"max_boxes must be an integer >= 1, got {self.max_boxes!r}")
        if not is_integral(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not is_integral(self.jpeg_quality) or not 50 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be an integer in [50, 100], got {self.jpeg_quality!r}")


@dataclasses.dataclass(frozen=True)
class PbeJobConfig:
    """The job's configs; ``detector`` is ``None`` when boxes come only from annotations."""

    sources: SourcesConfig
    pbe: PbeConfig
    pairs: PairSettings
    writer: ShardWriterConfig
    run: RunInfo
    detector: Optional[ModelHandler] = None


def box_seed(base_seed: int, key: str) -> int:
    """The seed of one box's pair: the same for the same image, box and base seed on any worker."""
    return derived_seed(base_seed, key)


def annotation_boxes(source: SourceImage) -> tuple[LabelledBox, ...]:
    """The boxes an annotation file gave; crowd boxes (many objects in one box) are left out."""
    return tuple(LabelledBox(a.label, a.box, a.source or "annotation") for a in source.annotations if not a.is_crowd)


def detected_boxes(result: PredictionResult) -> tuple[SourceImage, tuple[LabelledBox, ...]]:
    return result.example, tuple(LabelledBox(d.label, d.box, d.detector, d.score) for d in result.inference)


class _PairsFn(StageDoFn):
    stage = "pbe_pairs"

    def __init__(self, config: PbeConfig, settings: PairSettings, provenance: dict[str, Any]) -> None:
        super().__init__()
        self._config = config
        self._settings = settings
        self._provenance = provenance

    def _sample(self, source: SourceImage, rgb, key: str, box: LabelledBox) -> EncodedSample:
        quality = self._settings.jpeg_quality
        pair = make_pair(rgb, box.box, self._config, box_seed(self._settings.seed, key))
        fields = pbe_fields(source, key, box, pair.record, encode_jpeg(pair.target, quality),
                            encode_mask_png(pair.mask), encode_jpeg(pair.reference, quality), self._provenance)
        return EncodedSample(key=key, fields=fields, metadata=pbe_metadata_row(source, key, box, pair.record))

    def process_record(self, element: tuple[SourceImage, tuple[LabelledBox, ...]]) -> Iterator[Any]:
        source, boxes = element
        if not boxes:
            yield Rejection(source.uri, self.stage, Reason.NO_BOXES, "no annotation or detection", source.key)
            return
        outputs: list[Any] = [TaggedOutput(_BOX_COUNTS, ((f"{BOXES}.{INPUTS}", ""), len(boxes)))]
        kept = []
        for index, box in enumerate(boxes):
            key = object_key(source.key, index)
            failure = check_box(box.box, source.width, source.height, self._config.boxes)
            if failure is None:
                kept.append((key, box))
            else:
                outputs.append(TaggedOutput(_BOX_REJECTED, Rejection(source.uri, self.stage, failure[0], failure[1], key)))
        kept.sort(key=lambda item: (-item[1].box.area, item[0]))
        for key, _ in kept[self._settings.max_boxes:]:
            outputs.append(TaggedOutput(_BOX_REJECTED, Rejection(
                source.uri, self.stage, Reason.TOO_MANY_OBJECTS, f"max_boxes {self._settings.max_boxes}", key)))
        kept = kept[: self._settings.max_boxes]
        if not kept:
            yield from outputs
            yield Rejection(source.uri, self.stage, Reason.NO_SUITABLE_BOX, f"{len(boxes)} boxes rejected", source.key)
            return
        rgb = decode_rgb(source.jpeg)
        outputs += [self._sample(source, rgb, key, box) for key, box in kept]
        outputs.append(TaggedOutput(_BOX_COUNTS, ((WRITTEN, ""), 1)))
        yield from outputs


def build_pbe(p: beam.Pipeline, config: PbeJobConfig) -> beam.PCollection:
    """Add the self-reference graph to ``p``; returns the PCollection holding the run's stats dict."""
    sources, images, dead = _boxed_images(p, config.sources, config.detector)
    pairs, tagged = apply_tagged_stage(images, "Pairs", _PairsFn(config.pbe, config.pairs, config.run.provenance),
                                       (_BOX_COUNTS, _BOX_REJECTED))
    shards = pairs.main | "WriteShards" >> WriteShards(config.writer)
    rejected = flatten("ImageRejected", [sources.rejected, pairs.rejected])
    dead_letters = flatten("AllDeadLetters", [*dead, pairs.dead_letters])
    box_rejected = tagged[_BOX_REJECTED]
    counts = [
        sources.counts,
        tagged[_BOX_COUNTS],
        count_rejections(rejected, "CountRejected"),
        count_dead_letters(dead_letters, "CountDeadLetters"),
        count_rejections(box_rejected, "CountBoxesRejected", counter=f"{BOXES}.{REJECTED}"),
        shards | "CountBoxesWritten" >> beam.Map(lambda shard: ((f"{BOXES}.{WRITTEN}", ""), shard.nsamples)),
        images | "FunnelWithBoxes" >> beam.FlatMap(lambda image: [((FUNNEL, "with_boxes"), 1)] if image[1] else []),
        images | "FunnelBoxes" >> beam.Map(lambda image: ((FUNNEL, "boxes"), len(image[1]))),
        count_as(pairs.main, "FunnelBoxesKept", FUNNEL, lambda _: "boxes_kept"),
        shards | "FunnelWritten" >> beam.Map(lambda shard: ((FUNNEL, "pairs_written"), shard.nsamples)),
    ]
    tally = flatten("AllCounts", counts) | "Tally" >> Tally()
    all_rejected = flatten("AllRejected", [rejected, sources.boxes_rejected, box_rejected])
    return FinalizeInputs(shards, tally, all_rejected, dead_letters) | "Finalize" >> FinalizeRun(config.run, config.writer)


# --------------------------------------------------------------------------- benchmark (COCOEE-style)

BENCHMARK_FUNNEL_STEPS = (*SOURCE_FUNNEL_STEPS, "with_boxes", "single_object", "pairs_written")


@dataclasses.dataclass(frozen=True)
class BenchmarkConfig(PbeJobConfig):
    """``max_mask_fraction``: a mask covering this share of the image or more is rejected (COCOEE: 0.5)."""

    max_mask_fraction: float = 0.5


class BenchmarkItem(NamedTuple):
    """One image's single object, ready to be paired with another image's reference."""

    label: str
    key: str
    source: SourceImage
    box: LabelledBox
    record: dict
    target_jpeg: bytes
    mask_png: bytes
    object_jpeg: bytes  # this object's own crop: the reference of another image's pair


class _BenchmarkItemFn(StageDoFn):
    stage = "pbe_benchmark"

    def __init__(self, config: PbeConfig, settings: PairSettings, max_mask_fraction: float) -> None:
        super().__init__()
        self._config = config
        self._settings = settings
        self._max_mask_fraction = max_mask_fraction

    def process_record(self, element: tuple[SourceImage, tuple[LabelledBox, ...]]) -> Iterator[Any]:
        source, boxes = element
        qualifying = [(index, box) for index, box in enumerate(boxes)
                      if check_box(box.box, source.width, source.height, self._config.boxes) is None]
        if len(qualifying) != 1:
            reason = Reason.MULTIPLE_OBJECTS if qualifying else (Reason.NO_SUITABLE_BOX if boxes else Reason.NO_BOXES)
            yield Rejection(source.uri, self.stage, reason, f"{len(qualifying)} of {len(boxes)} boxes qualify", source.key)
            return
        index, box = qualifying[0]
        key = object_key(source.key, index)
        seed = box_seed(self._settings.seed, key)
        config, width, height = self._config, source.width, source.height
        mask, mask_record = object_mask(box.box, width, height, config.masks, np.random.default_rng([seed, 0]))
        if mask.mean() >= self._max_mask_fraction:
            yield Rejection(source.uri, self.stage, Reason.MASK_TOO_LARGE,
                            f"mask covers {mask.mean():.3f} of the image (max {self._max_mask_fraction})", key)
            return
        rgb = decode_rgb(source.jpeg)
        crop_box = square_crop(box.box, width, height, config.crop, np.random.default_rng([seed, 1]))
        target, target_mask = crop_and_resize(rgb, mask, crop_box, config.crop.size)
        reference, reference_record = reference_crop(rgb, box.box, config.reference, seed)
        quality = self._settings.jpeg_quality
        record = {"crop_box": list(crop_box), "mask": mask_record, "reference": reference_record, "seed": seed}
        yield BenchmarkItem(box.label, key, source, box, record, encode_jpeg(target, quality),
                            encode_mask_png(target_mask), encode_jpeg(reference, quality))


def pair_with_other_images(label_and_items: tuple[str, Any], provenance: dict[str, Any]) -> Iterator[Any]:
    """Each item of a class gets the object crop of the next one (in key order) as its reference.

    A class with a single image has no other image to take a reference from: rejected.
    """
    _, items = label_and_items
    items = sorted(items, key=lambda item: item.key)
    if len(items) == 1:
        item = items[0]
        yield Rejection(item.source.uri, "pbe_benchmark", Reason.NO_REFERENCE_IMAGE,
                        f"the only qualifying image of class {item.label!r}", item.key)
        return
    for position, item in enumerate(items):
        other = items[(position + 1) % len(items)]
        fields = pbe_fields(item.source, item.key, item.box, item.record, item.target_jpeg, item.mask_png,
                            other.object_jpeg, provenance, reference_key=other.key)
        yield EncodedSample(key=item.key, fields=fields,
                            metadata=pbe_metadata_row(item.source, item.key, item.box, item.record, other.key))


class _PairWithOtherImagesFn(StageDoFn):
    stage = "pbe_benchmark_pairing"

    def __init__(self, provenance: dict[str, Any]) -> None:
        super().__init__()
        self._provenance = provenance

    def process_record(self, label_and_items: tuple[str, Any]) -> Iterator[Any]:
        yield from pair_with_other_images(label_and_items, self._provenance)


def _boxed_images(p: beam.Pipeline, sources_config: SourcesConfig, detector: Optional[ModelHandler]):
    """(sources outputs, (image, boxes) PCollection, detector dead letters)."""
    sources = p | "ReadSources" >> ReadSources(sources_config)
    annotated = sources.sources | "SplitAnnotated" >> beam.Partition(
        lambda source, _: 0 if annotation_boxes(source) or detector is None else 1, 2)
    boxed = [annotated[0] | "AnnotationBoxes" >> beam.Map(lambda source: (source, annotation_boxes(source)))]
    dead = [sources.dead_letters]
    if detector is not None:
        detected = annotated[1] | "Detect" >> RunModel(detector, "detect")
        boxed.append(detected.main | "DetectedBoxes" >> beam.Map(detected_boxes))
        dead.append(detected.dead_letters)
    return sources, flatten("BoxedImages", boxed), dead


def build_pbe_benchmark(p: beam.Pipeline, config: BenchmarkConfig) -> beam.PCollection:
    """Add the benchmark graph to ``p``; returns the PCollection holding the run's stats dict."""
    sources, images, dead = _boxed_images(p, config.sources, config.detector)
    items = apply_stage(images, "Items", _BenchmarkItemFn(config.pbe, config.pairs, config.max_mask_fraction))
    by_label = items.main | "ByLabel" >> beam.Map(lambda item: (item.label, item)) | "GroupByLabel" >> beam.GroupByKey()
    paired = apply_stage(by_label, "Pair", _PairWithOtherImagesFn(config.run.provenance))
    shards = paired.main | "WriteShards" >> WriteShards(config.writer)
    rejected = flatten("AllRejected", [sources.rejected, items.rejected, paired.rejected])
    dead_letters = flatten("AllDeadLetters", [*dead, items.dead_letters, paired.dead_letters])
    counts = [
        sources.counts,
        count_rejections(rejected, "CountRejected"),
        count_dead_letters(dead_letters, "CountDeadLetters"),
        shards | "CountWritten" >> beam.Map(lambda shard: ((WRITTEN, ""), shard.nsamples)),
        images | "FunnelWithBoxes" >> beam.FlatMap(lambda image: [((FUNNEL, "with_boxes"), 1)] if image[1] else []),
        count_as(items.main, "FunnelSingle", FUNNEL, lambda _: "single_object"),
        shards | "FunnelWritten" >> beam.Map(lambda shard: ((FUNNEL, "pairs_written"), shard.nsamples)),
    ]
    tally = flatten("AllCounts", counts) | "Tally" >> Tally()
    all_rejected = flatten("AllRejectedAndBoxes", [rejected, sources.boxes_rejected])
    return FinalizeInputs(shards, tally, all_rejected, dead_letters) | "Finalize" >> FinalizeRun(config.run, config.writer)
