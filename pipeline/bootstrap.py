"""The bootstrap-mining graph (ObjectDrop stage 1): images -> candidate shards.

    ReadSources -> image size -> detect | annotated objects -> select objects
      -> segment [-> annotated masks] -> check masks
      -> remove (K candidates) -> scores (SSIM/change/seam) [-> re-detection] [-> CLIP]
      -> encode -> write candidate shards -> finalize

Where objects come from is ``BootstrapConfig.boxes`` (:class:`~transforms.annotated.BoxSource`):
the detector, the images' annotations (boxes skip detection, masks skip segmentation), or
annotations where an image has them and the detector elsewhere (``auto``).

Two ledgers close for every run (docs/FORMAT.md):

* images: every input ends as ``written`` (at least one of its objects is in a shard),
  ``rejected`` with a reason (decoding, ``no_detections``, ``no_suitable_object``,
  ``no_object_kept`` when every object's mask failed ...) or a dead letter;
* objects (selected detections): ``written``, ``rejected`` by a mask check, or a dead
  letter of removal, scoring or encoding.

Objects left out before the object ledger (a rejected detection, a crowd or
undecodable annotation) are recorded with their object keys as ``detections_rejected``.
With annotations (``boxes`` not ``detector``) a third ledger closes,
:data:`ANNOTATED`: every annotation of an image that reached object selection ends
``written``, ``rejected`` by its reason (``crowd_box``, a selection rule,
``invalid_mask``, a mask check) or a dead letter (its own, or its image's). Annotations
rejected when the file is parsed never get an object: they are ``boxes_rejected``.

Nothing is thresholded after the mask checks: every candidate is scored and kept, so
that choosing thresholds later (``counterfactory build``) never re-runs a model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.pvalue import TaggedOutput

from pipeline.finalize import FinalizeRun, RunInfo
from pipeline.sources import SOURCE_FUNNEL_STEPS, ReadSources, SourcesConfig, flatten
from schemas import Reason, Rejection, SourceImage, object_key, source_of
from transforms.annotated import AnnotatedObjects, AnnotationMasks, BoxSource, needs_segmenter
from transforms.candidates import OBJECTS, CandidateSampleEncoder, CheckMasks, ScoreCandidates
from transforms.encode import EncodeSamples
from transforms.io.shards import ShardWriterConfig, WriteShards
from transforms.ledger import (
    DEAD_LETTER,
    INPUTS,
    MAIN_LEDGER,
    REJECTED,
    WRITTEN,
    RunAccounts,
    count_funnel,
    counter_name,
)
from transforms.mask_quality import MaskQualityConfig
from transforms.models.removal import RemovalHandler
from transforms.models.run_model import RunModel
from transforms.quality import QualityConfig
from transforms.selection import FilterImageSize, ImageObjects, SelectionConfig, SelectObjects

FUNNEL_STEPS = (*SOURCE_FUNNEL_STEPS, "with_detections", "with_objects", "objects", "annotated_masks", "masks_kept",
                "objects_removed", "objects_written", "candidates_written")
#: The dead-letter label of an image all of whose objects ended as dead letters.
ALL_OBJECTS_DEAD = "objects"
#: The ledger of annotated objects, kept when objects come from annotations.
ANNOTATED = "annotated_objects"


@dataclasses.dataclass(frozen=True)
class BootstrapConfig:
    """Every stage's config (each validated itself when built) and the model handlers.

    Models come as Beam ``ModelHandler`` s, built from their configs by the job: nothing
    is loaded until a worker runs, and tests can give handlers of their own. ``detector``
    is ``None`` only when ``boxes`` is ``annotations`` (it never runs then). The
    detector's predictions are ``PredictionResult(SourceImage, tuple[Detection])``, the
    segmenter's ``PredictionResult(SegmentationRequest, tuple[ObjectMask])``, and each
    optional scorer's ``PredictionResult(ObjectCandidates, re-scored ObjectCandidates)``.
    """

    sources: SourcesConfig
    selection: SelectionConfig
    detector: Optional[ModelHandler]
    segmenter: ModelHandler
    masks: MaskQualityConfig
    remover: RemovalHandler
    quality: QualityConfig
    writer: ShardWriterConfig
    run: RunInfo
    redetect: Optional[ModelHandler] = None
    clip: Optional[ModelHandler] = None
    boxes: BoxSource = BoxSource.DETECTOR

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", BoxSource(self.boxes))
        if self.detector is None and self.boxes is not BoxSource.ANNOTATIONS:
            raise ValueError(f"boxes {self.boxes.value!r} needs a detector")


_IMAGE_REJECTED = "image_rejected"


def _image_outcome(source_key_and_events: tuple[str, Any]) -> Iterator[Any]:
    """The outcome of an image from its objects' outcomes: any written wins, then any dead letter."""
    source_key, events = source_key_and_events
    events = list(events)
    outcomes = {outcome for outcome, _, _ in events}
    if WRITTEN in outcomes:
        yield (WRITTEN, ""), 1
    elif DEAD_LETTER in outcomes:
        yield (DEAD_LETTER, ALL_OBJECTS_DEAD), 1
    else:
        reasons = sorted(label for _, label, _ in events)
        uri = next(uri for _, _, uri in events)
        # Counted where it is registered with the main ledger, like every rejection.
        yield TaggedOutput(_IMAGE_REJECTED, Rejection(
            uri, "bootstrap", Reason.NO_OBJECT_KEPT, f"{len(events)} objects rejected: {', '.join(reasons)}",
            source_key))


class _ImageOutcomes(beam.PTransform):
    """Object outcomes -> one ledger outcome per image that reached segmentation."""

    def expand(self, events: beam.PCollection):
        results = (
            events
            | "BySource" >> beam.GroupByKey()
            | "Decide" >> beam.FlatMap(_image_outcome).with_outputs(_IMAGE_REJECTED, main="counts")
        )
        return results.counts, results[_IMAGE_REJECTED]


def _event(outcome: str, label_of=lambda _: "", uri_of=lambda record: record.uri):
    def event(record: Any) -> tuple[str, tuple[str, str, str]]:
        return source_of(record.key), (outcome, label_of(record), uri_of(record))

    return event


def _scored(label: str, objects: beam.PCollection, handler: ModelHandler, stage: str) -> beam.PCollection:
    """Run a scorer handler whose predictions carry the re-scored record as inference."""
    predictions = objects | label >> RunModel(handler, stage, unit=OBJECTS)
    return predictions | f"{label}Records" >> beam.Map(lambda prediction: prediction.inference)



def _image_objects(sized: beam.PCollection,
                   config: BootstrapConfig) -> tuple[beam.PCollection, Optional[beam.PCollection]]:
    """Each image's objects to select from (detector predictions, annotated ``ImageObjects`` or both),
    and the images whose objects are their annotations (``None`` when none can be)."""
    if config.boxes is BoxSource.DETECTOR:
        return sized | "Detect" >> RunModel(config.detector, "detect"), None
    if config.boxes is BoxSource.ANNOTATIONS:
        return sized | "AnnotatedObjects" >> AnnotatedObjects(), sized
    parts = sized | "SplitAnnotated" >> beam.Partition(lambda source, _: 0 if source.annotations else 1, 2)
    annotated = parts[0] | "AnnotatedObjects" >> AnnotatedObjects()
    detected = parts[1] | "Detect" >> RunModel(config.detector, "detect")
    return flatten("ImageObjects", [annotated, detected]), parts[0]


def _segmented(requests: beam.PCollection, config: BootstrapConfig) -> beam.PCollection:
    """Segmenter predictions; with annotations, annotated masks in place of its masks (or of its run)."""
    if config.boxes is BoxSource.DETECTOR:
        return requests | "Segment" >> RunModel(config.segmenter, "segment")
    parts = requests | "SplitMasked" >> beam.Partition(lambda request, _: 0 if needs_segmenter(request) else 1, 2)
    segmented = parts[0] | "Segment" >> RunModel(config.segmenter, "segment")
    return flatten("SegmentedOrMasked", [segmented, parts[1]]) | "AnnotationMasks" >> AnnotationMasks()


_IN = "in"
_IMAGE_DEAD = "image_dead"


def _annotation_inputs(source: SourceImage) -> Iterator[tuple[str, tuple[str, str, str]]]:
    for index in range(len(source.annotations)):
        yield source.key, (_IN, object_key(source.key, index), "")


def _object_events(outcome: str, label_of):
    """``(source key, (outcome, object key, label))`` of a record that names an object (others are skipped)."""
    def events(record: Any) -> Iterator[tuple[str, tuple[str, str, str]]]:
        if record.key:  # a box rejected when its file was parsed has no object
            yield source_of(record.key), (outcome, record.key, label_of(record))

    return events


def _image_dead(dead: Any) -> Iterator[tuple[str, tuple[str, str, str]]]:
    if dead.key:
        yield dead.key, (_IMAGE_DEAD, "", dead.stage)


def _annotated_outcomes(source_key_and_events: tuple[str, Any]) -> Iterator[tuple[tuple[str, str], int]]:
    """The annotated ledger's counts for one image: each annotation's outcome, or its image's dead letter."""
    _, events = source_key_and_events
    inputs, outcomes, image_dead = [], {}, []
    for kind, key, label in events:
        if kind == _IN:
            inputs.append(key)
        elif kind == _IMAGE_DEAD:
            image_dead.append(label)
        else:
            outcomes.setdefault(key, []).append((kind, label))
    if not inputs:
        return  # a detector's image: its objects are the objects ledger's alone
    yield (counter_name(ANNOTATED, INPUTS), ""), len(inputs)
    for key in inputs:
        # None, or more than one, and the ledger does not close: an annotation lost or counted twice.
        for outcome, label in outcomes.get(key) or [(DEAD_LETTER, stage) for stage in image_dead[:1]]:
            yield (counter_name(ANNOTATED, outcome), label), 1


def _annotated_ledger(annotated: beam.PCollection, encoded: beam.PCollection,
                      accounts: RunAccounts) -> beam.PCollection:
    """The counts of :data:`ANNOTATED`, from every record that names an annotated object or its image."""
    return flatten("AnnotatedEvents", [
        annotated | "AnnotatedInputs" >> beam.FlatMap(_annotation_inputs),
        *(rejected | f"AnnotatedRejected{i}" >> beam.FlatMap(_object_events(REJECTED, lambda r: r.reason.value))
          for i, rejected in enumerate(accounts.rejections(None) + accounts.rejections(OBJECTS))),
        *(dead | f"AnnotatedDead{i}" >> beam.FlatMap(_object_events(DEAD_LETTER, lambda d: d.stage))
          for i, dead in enumerate(accounts.dead_letters(OBJECTS))),
        *(dead | f"AnnotatedImageDead{i}" >> beam.FlatMap(_image_dead)
          for i, dead in enumerate(accounts.dead_letters(MAIN_LEDGER))),
        encoded | "AnnotatedWritten" >> beam.FlatMap(_object_events(WRITTEN, lambda _: "")),
    ]) | "AnnotatedBySource" >> beam.GroupByKey() | "AnnotatedOutcomes" >> beam.FlatMap(_annotated_outcomes)


def _with_detections(record) -> int:
    return int(bool(ImageObjects.of(record).detections))


def _annotated_masks(prediction) -> int:
    return sum(mask.mask_source == "annotation" for mask in prediction.inference)


def build_bootstrap(p: beam.Pipeline, config: BootstrapConfig) -> beam.PCollection:
    """Add the bootstrap graph to ``p``; returns the PCollection holding the run's stats dict."""
    sources = p | "ReadSources" >> ReadSources(config.sources)
    sized = sources | "ImageSize" >> FilterImageSize(config.selection)
    objects_in, annotated = _image_objects(sized, config)
    requests = objects_in | "SelectObjects" >> SelectObjects(config.selection)
    segmented = _segmented(requests, config)
    checked = segmented | "CheckMasks" >> CheckMasks(config.masks, config.remover.config.request)
    removed = checked | "Remove" >> RunModel(config.remover, "remove", unit=OBJECTS)
    objects = removed | "Score" >> ScoreCandidates(config.quality)
    if config.redetect is not None:
        objects = _scored("Redetect", objects, config.redetect, "redetect")
    if config.clip is not None:
        objects = _scored("Clip", objects, config.clip, "clip")
    encoder = CandidateSampleEncoder(config.run.provenance, config.run.models)
    encoded = objects | "EncodeSamples" >> EncodeSamples(encoder, unit=OBJECTS)
    shards = encoded | "WriteShards" >> WriteShards(config.writer, unit=OBJECTS)

    accounts = RunAccounts.of(p)
    # An image that reached segmentation ends as its objects did: written if any was, else dead or rejected.
    image_outcomes, no_object_kept = flatten("ObjectEvents", [
        *(rejected | f"RejectedEvents{i}" >> beam.Map(_event(REJECTED, lambda r: r.reason.value))
          for i, rejected in enumerate(accounts.rejections(OBJECTS))),
        *(dead | f"DeadEvents{i}" >> beam.Map(_event(DEAD_LETTER, lambda d: d.stage))
          for i, dead in enumerate(accounts.dead_letters(OBJECTS))),
        encoded | "WrittenEvents" >> beam.Map(_event(WRITTEN, uri_of=lambda sample: sample.metadata["uri"])),
    ]) | "ImageOutcomes" >> _ImageOutcomes()
    accounts.add_counts(image_outcomes)
    accounts.add_rejections(MAIN_LEDGER, no_object_kept)
    if annotated is not None:
        accounts.add_counts(_annotated_ledger(annotated, encoded, accounts))
    accounts.add_counts(flatten("FunnelCounts", [
        count_funnel(objects_in, "FunnelDetections", "with_detections", _with_detections),
        count_funnel(requests, "FunnelWithObjects", "with_objects"),
        count_funnel(requests, "FunnelObjects", "objects", lambda request: len(request.detections)),
        count_funnel(segmented, "FunnelAnnotatedMasks", "annotated_masks", _annotated_masks),
        count_funnel(checked, "FunnelMasksKept", "masks_kept"),
        count_funnel(removed, "FunnelRemoved", "objects_removed"),
        count_funnel(shards, "FunnelWritten", "objects_written", lambda shard: shard.nsamples),
        count_funnel(encoded, "FunnelCandidates", "candidates_written",
                     lambda sample: sample.metadata["num_candidates"]),
    ]))
    return shards | "Finalize" >> FinalizeRun(config.run, config.writer)
