"""The bootstrap-mining graph (ObjectDrop stage 1): images -> candidate shards.

    ReadSources -> image size -> detect -> select objects -> segment -> check masks
      -> remove (K candidates) -> scores (SSIM/change/seam) [-> re-detection] [-> CLIP]
      -> encode -> write candidate shards -> finalize

Two ledgers close for every run (docs/FORMAT.md):

* images: every input ends as ``written`` (at least one of its objects is in a shard),
  ``rejected`` with a reason (decoding, ``no_detections``, ``no_suitable_object``,
  ``no_object_kept`` when every object's mask failed ...) or a dead letter;
* objects (selected detections): ``written``, ``rejected`` by a mask check, or a dead
  letter of removal, scoring or encoding.

Nothing is thresholded after the mask checks: every candidate is scored and kept, so
that choosing thresholds later (``counterfactory build``) never re-runs a model.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Optional

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.pvalue import TaggedOutput

from pipeline.finalize import FUNNEL, FinalizeInputs, FinalizeRun, RunInfo
from pipeline.inference import RunModel
from pipeline.ledger import (
    DEAD_LETTER,
    INPUTS,
    REJECTED,
    WRITTEN,
    Tally,
    count_as,
    count_dead_letters,
    count_rejections,
)
from pipeline.sources import SOURCE_FUNNEL_STEPS, ReadSources, SourcesConfig, flatten
from schemas import Reason, Rejection, source_of
from transforms.candidates import CandidateSampleEncoder, CheckMasks, ScoreCandidates
from transforms.encode import EncodeSamples
from transforms.io.shards import ShardWriterConfig, WriteShards
from transforms.mask_quality import MaskQualityConfig
from transforms.models.removal import RemovalHandler
from transforms.quality import QualityConfig
from transforms.selection import FilterImageSize, SelectionConfig, SelectObjects

#: Counters of the object ledger are ``objects.<counter>``.
OBJECTS = "objects"
FUNNEL_STEPS = (*SOURCE_FUNNEL_STEPS, "with_detections", "with_objects", "objects", "masks_kept",
                "objects_removed", "objects_written", "candidates_written")
#: The dead-letter label of an image all of whose objects ended as dead letters.
ALL_OBJECTS_DEAD = "objects"


def _object_counter(counter: str) -> str:
    return f"{OBJECTS}.{counter}"


@dataclasses.dataclass(frozen=True)
class BootstrapConfig:
    """Every stage's config (each validated itself when built) and the model handlers.

    Models come as Beam ``ModelHandler`` s, built from their configs by the job: nothing
    is loaded until a worker runs, and tests can give handlers of their own. The
    detector's predictions are ``PredictionResult(SourceImage, tuple[Detection])``, the
    segmenter's ``PredictionResult(SegmentationRequest, tuple[ObjectMask])``, and each
    optional scorer's ``PredictionResult(ObjectCandidates, re-scored ObjectCandidates)``.
    """

    sources: SourcesConfig
    selection: SelectionConfig
    detector: ModelHandler
    segmenter: ModelHandler
    masks: MaskQualityConfig
    remover: RemovalHandler
    quality: QualityConfig
    writer: ShardWriterConfig
    run: RunInfo
    redetect: Optional[ModelHandler] = None
    clip: Optional[ModelHandler] = None


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
        yield (REJECTED, Reason.NO_OBJECT_KEPT.value), 1
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


def _scored(label: str, objects: beam.PCollection, handler: ModelHandler, stage: str, dead: list) -> beam.PCollection:
    """Run a scorer handler whose predictions carry the re-scored record as inference."""
    outputs = objects | label >> RunModel(handler, stage)
    dead.append(outputs.dead_letters)
    return outputs.main | f"{label}Records" >> beam.Map(lambda prediction: prediction.inference)


def build_bootstrap(p: beam.Pipeline, config: BootstrapConfig) -> beam.PCollection:
    """Add the bootstrap graph to ``p``; returns the PCollection holding the run's stats dict."""
    sources = p | "ReadSources" >> ReadSources(config.sources)
    sized = sources.sources | "ImageSize" >> FilterImageSize(config.selection)
    detected = sized.main | "Detect" >> RunModel(config.detector, "detect")
    selected = detected.main | "SelectObjects" >> SelectObjects(config.selection)
    segmented = selected.requests | "Segment" >> RunModel(config.segmenter, "segment")
    checked = segmented.main | "CheckMasks" >> CheckMasks(config.masks, config.remover.config.request)
    removed = checked.main | "Remove" >> RunModel(config.remover, "remove")
    scored = removed.main | "Score" >> ScoreCandidates(config.quality)

    objects = scored.main
    object_dead = [checked.dead_letters, removed.dead_letters, scored.dead_letters]
    if config.redetect is not None:
        objects = _scored("Redetect", objects, config.redetect, "redetect", object_dead)
    if config.clip is not None:
        objects = _scored("Clip", objects, config.clip, "clip", object_dead)
    encoder = CandidateSampleEncoder(config.run.provenance, config.run.models)
    encoded = objects | "EncodeSamples" >> EncodeSamples(encoder)
    object_dead.append(encoded.dead_letters)
    shards = encoded.main | "WriteShards" >> WriteShards(config.writer)
    object_dead_letters = flatten("ObjectDeadLetters", object_dead)

    image_outcomes, no_object_kept = flatten("ObjectEvents", [
        checked.rejected | "RejectedEvents" >> beam.Map(_event(REJECTED, lambda r: r.reason.value)),
        object_dead_letters | "DeadEvents" >> beam.Map(_event(DEAD_LETTER, lambda d: d.stage)),
        encoded.main | "WrittenEvents" >> beam.Map(_event(WRITTEN, uri_of=lambda sample: sample.metadata["uri"])),
    ]) | "ImageOutcomes" >> _ImageOutcomes()

    image_rejected = flatten("ImageRejected", [sources.rejected, sized.rejected, selected.rejected])
    image_dead_letters = flatten("ImageDeadLetters", [
        sources.dead_letters, sized.dead_letters, detected.dead_letters, selected.dead_letters,
        segmented.dead_letters])
    counts = [
        sources.counts,
        image_outcomes,
        count_rejections(image_rejected, "CountRejected"),
        count_dead_letters(image_dead_letters, "CountDeadLetters"),
        count_rejections(selected.detections_rejected, "CountDetectionsRejected", counter="detections_rejected"),
        segmented.main | "CountObjects" >> beam.Map(lambda result: ((_object_counter(INPUTS), ""), len(result.inference))),
        count_rejections(checked.rejected, "CountMasksRejected", counter=_object_counter(REJECTED)),
        count_as(object_dead_letters, "CountObjectDeadLetters", _object_counter(DEAD_LETTER), lambda d: d.stage),
        shards | "CountWritten" >> beam.Map(lambda shard: ((_object_counter(WRITTEN), ""), shard.nsamples)),
        # The funnel, in FUNNEL_STEPS order.
        detected.main | "FunnelDetections" >> beam.FlatMap(
            lambda result: [((FUNNEL, "with_detections"), 1)] if result.inference else []),
        count_as(selected.requests, "FunnelWithObjects", FUNNEL, lambda _: "with_objects"),
        selected.requests | "FunnelObjects" >> beam.Map(lambda request: ((FUNNEL, "objects"), len(request.detections))),
        count_as(checked.main, "FunnelMasksKept", FUNNEL, lambda _: "masks_kept"),
        count_as(removed.main, "FunnelRemoved", FUNNEL, lambda _: "objects_removed"),
        shards | "FunnelWritten" >> beam.Map(lambda shard: ((FUNNEL, "objects_written"), shard.nsamples)),
        encoded.main | "FunnelCandidates" >> beam.Map(
            lambda sample: ((FUNNEL, "candidates_written"), sample.metadata["num_candidates"])),
    ]
    tally = flatten("AllCounts", counts) | "Tally" >> Tally()
    rejected = flatten("AllRejected", [image_rejected, no_object_kept, sources.boxes_rejected,
                                       selected.detections_rejected, checked.rejected])
    dead_letters = flatten("AllDeadLetters", [image_dead_letters, object_dead_letters])
    return FinalizeInputs(shards, tally, rejected, dead_letters) | "Finalize" >> FinalizeRun(config.run, config.writer)
