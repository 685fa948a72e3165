"""The bootstrap graph on the local runner with stand-in models: outcomes, ledgers, dead letters.

The detector "detects" what the bundled COCO file annotates, the segmenter fills each box:
every outcome is then known in advance, so the test can check that each image and each
object lands exactly where it should, and that one poisoned record in a batch takes
nobody else down with it. The remover is the real classical one.
"""
from __future__ import annotations

import io
import json
import pathlib
from typing import Any, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
import webdataset
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions
from PIL import Image

from pipeline.bootstrap import FUNNEL_STEPS, OBJECTS, BootstrapConfig, build_bootstrap
from pipeline.finalize import RunInfo, check_ledgers
from pipeline.runners import ThreadSafeFnApiRunner
from pipeline.sources import AnnotationSource, SourcesConfig
from review.contact_sheet import CAPTION_PX, candidate_sheet
from schemas import Detection, ObjectMask, SourceImage, object_key
from schemas.sample import CANDIDATE_METADATA_SCHEMA, SCORE_NAMES, removed_field
from tests.chaos import dead_letters, drop_in_stage, fail_stage, injected_dead_letters
from transforms.io.decode import decode_rgb
from transforms.ledger import LedgerError
from transforms.io.shards import ShardWriterConfig
from transforms.mask_quality import MaskQualityConfig
from transforms.masks import decode_mask_png, dilate, encode_mask_png
from transforms.models.removal import ClassicalRemovalHandler, ClassicalRemover, RemovalConfig
from transforms.models.segmentation import SegmentationRequest
from transforms.quality import QualityConfig
from transforms.selection import SelectionConfig

BATCH = 5  # every image of the COCO sample in one detector batch


class _NoWeights:
    """What the stand-in models load (Beam keeps a weak reference to a loaded model)."""


class AnnotationDetector(ModelHandler[SourceImage, PredictionResult, _NoWeights]):
    """Returns the image's annotations as detections; a batch holding ``poisoned`` raises."""

    def __init__(self, poisoned: str) -> None:
        super().__init__(min_batch_size=BATCH, max_batch_size=BATCH)
        self._poisoned = poisoned

    def load_model(self) -> _NoWeights:
        return _NoWeights()

    def run_inference(self, batch: Sequence[SourceImage], model: Any,
                      inference_args: Optional[dict] = None) -> list[PredictionResult]:
        if any(source.uri.endswith(self._poisoned) for source in batch):
            raise RuntimeError(f"detector crashed on a batch holding {self._poisoned}")
        return [PredictionResult(source, tuple(
            Detection(label=a.label, class_id=0, score=0.9, box=a.box, detector="annotations")
            for a in source.annotations), "annotations") for source in batch]


class BoxSegmenter(ModelHandler[SegmentationRequest, PredictionResult, _NoWeights]):
    """Fills each box; images named ``empty`` get empty masks, images named ``corrupt`` masks that are no PNG."""

    def __init__(self, empty: str, corrupt: str = "") -> None:
        super().__init__()
        self._empty = empty
        self._corrupt = corrupt

    def load_model(self) -> _NoWeights:
        return _NoWeights()

    def run_inference(self, batch, model, inference_args=None):
        results = []
        for request in batch:
            source = request.source
            masks = []
            for index, detection in zip(request.object_indices, request.detections):
                mask = np.zeros((source.height, source.width), bool)
                if not source.uri.endswith(self._empty):
                    box = detection.box.clipped(source.width, source.height)
                    mask[int(box.y0):int(box.y1), int(box.x0):int(box.x1)] = True
                png = b"not a png" if self._corrupt and source.uri.endswith(self._corrupt) else encode_mask_png(mask)
                masks.append(ObjectMask(object_key(source.key, index), source.key, index, detection, png, 0.95,
                                        "boxes"))
            results.append(PredictionResult(request, tuple(masks), "boxes"))
        return results


class _PoisonedRemover(ClassicalRemover):
    def __init__(self, config: RemovalConfig, poisoned: str) -> None:
        super().__init__(config)
        self._poisoned = poisoned

    def __call__(self, requests):
        if any(request.source.uri.endswith(self._poisoned) for request in requests):
            raise MemoryError(f"remover ran out of memory on {self._poisoned}")
        return super().__call__(requests)


class PoisonedRemovalHandler(ClassicalRemovalHandler):
    poisoned = "astronaut.jpg"

    def load_model(self) -> ClassicalRemover:
        return _PoisonedRemover(self.config, self.poisoned)


def _config(samples_dir: pathlib.Path, output: pathlib.Path, segmenter: BoxSegmenter) -> BootstrapConfig:
    coco = samples_dir / "annotations" / "coco.json"
    return BootstrapConfig(
        sources=SourcesConfig(annotations=(AnnotationSource(str(coco), str(samples_dir / "images")),)),
        selection=SelectionConfig(max_area_fraction=1.0),
        detector=AnnotationDetector(poisoned="motorcycle.jpg"),
        segmenter=segmenter,
        masks=MaskQualityConfig(dilate_px=4),
        remover=PoisonedRemovalHandler(RemovalConfig(num_candidates=2)),
        quality=QualityConfig(),
        writer=ShardWriterConfig(output_dir=str(output), metadata_schema=CANDIDATE_METADATA_SCHEMA),
        run=RunInfo("bootstrap", "graph-test", "test", (str(coco),), {}, FUNNEL_STEPS, "now",
                    sub_ledgers=(OBJECTS,), models={"detector": "annotations"}),
    )


def _bootstrap(samples_dir: pathlib.Path, output: pathlib.Path, segmenter: BoxSegmenter):
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    build_bootstrap(pipeline, _config(samples_dir, output, segmenter))
    result = pipeline.run()
    result.wait_until_finish()
    return output, check_ledgers(str(output)), result


@pytest.fixture(scope="module")
def run(samples_dir, tmp_path_factory):
    return _bootstrap(samples_dir, tmp_path_factory.mktemp("bootstrap") / "candidates", BoxSegmenter(empty="coffee.jpg"))


def _by_file(rows: list[dict]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for row in rows:
        found.setdefault(pathlib.Path(row["uri"]).name, []).append(row["reason"])
    return found


def test_every_image_and_object_ends_where_it_should(run):
    output, stats, _ = run
    assert stats["ledger"] == {
        "inputs": 5, "written": 1, "closed": True,
        "rejected": {"no_detections": 1, "no_object_kept": 1}, "rejected_total": 2,
        "dead_letters": {"detect": 1, "objects": 1}, "dead_letters_total": 2,
    }
    assert stats["objects_ledger"] == {
        "inputs": 3, "written": 1, "closed": True,
        "rejected": {"mask_empty": 1}, "rejected_total": 1,
        "dead_letters": {"remove": 1}, "dead_letters_total": 1,
    }
    rejected = {name: sorted(reasons) for name, reasons in
                _by_file(pq.read_table(output / "rejected.parquet").to_pylist()).items()}
    # chelsea's second COCO box has zero width: the box is rejected, the image kept.
    assert rejected == {"rocket.jpg": ["no_detections"], "coffee.jpg": ["mask_empty", "no_object_kept"],
                        "chelsea.jpg": ["invalid_box"]}
    funnel = {step["step"]: step["count"] for step in stats["funnel"]}
    assert [funnel[step] for step in FUNNEL_STEPS] == [5, 5, 5, 5, 3, 3, 3, 0, 2, 1, 1, 2]


def test_every_stage_closes_record_by_record(run):
    _, stats, _ = run
    rows = {row["stage"]: row for row in stats["stages"]}
    assert list(rows) == ["read", "decode", "dedup", "image_size", "detect", "select", "segment", "mask_quality",
                          "remove", "score", "encode", "write"]
    assert all(row["closed"] and row["missing"] == row["extra"] == 0 for row in rows.values())
    # The fan-out from images to objects is checked: 3 objects reach the mask check from 3 images.
    assert (rows["mask_quality"]["in"], rows["mask_quality"]["out"], rows["mask_quality"]["rejected"]) == (3, 2, 1)
    assert (rows["remove"]["in"], rows["remove"]["out"], rows["remove"]["dead_letters"]) == (2, 1, 1)
    assert rows["write"]["out"] == stats["objects_ledger"]["written"] == 1


@pytest.mark.parametrize("stage", ["decode", "select", "mask_quality", "score", "encode"])
def test_a_record_a_stage_drops_without_an_error_fails_the_run_naming_the_stage(samples_dir, tmp_path, monkeypatch,
                                                                                 stage):
    drop_in_stage(monkeypatch, stage, lambda uri, key: uri.endswith("chelsea.jpg"))
    with pytest.raises(LedgerError, match=rf"stage {stage} does not close: .* 1 records missing \(e\.g\. "):
        _bootstrap(samples_dir, tmp_path / "candidates", BoxSegmenter(empty="coffee.jpg"))
    stats = json.loads((tmp_path / "candidates" / "stats.json").read_text())
    [broken] = [row for row in stats["stages"] if not row["closed"]]
    assert broken["stage"] == stage and len(broken["missing_keys"]) == 1


def test_the_model_stages_and_the_stages_between_them_are_one_fused_stage(samples_dir, tmp_path):
    # Beam's local runner runs its fused stages one after another, each over all its input. When every
    # model stage ended one (its retry path merged back through a Flatten), every image was detected before
    # any was segmented, and every object segmented before any was removed: the GPU models waited while the
    # CPU stages ran, and the CPU while the GPU did.
    pipeline = beam.Pipeline(runner=ThreadSafeFnApiRunner(), options=PipelineOptions(
        ["--direct_num_workers=2", "--direct_running_mode=multi_threading"]))
    build_bootstrap(pipeline, _config(samples_dir, tmp_path / "candidates", BoxSegmenter(empty="coffee.jpg")))
    _, stages = pipeline.runner.create_stages(pipeline.to_runner_api())
    hot_path = ("ImageSize/Records/", "Detect/Infer/BeamML_RunInference", "SelectObjects/Records/",
                "Segment/Infer/BeamML_RunInference", "CheckMasks/Records/", "Remove/Infer/BeamML_RunInference",
                "Score/Records/", "EncodeSamples/Records/")
    stage_of = {name: {index for index, stage in enumerate(stages)
                       for transform in stage.transforms if transform.unique_name.startswith(name)}
                for name in hot_path}
    assert all(len(indices) == 1 for indices in stage_of.values()), stage_of
    assert len(set.union(*stage_of.values())) == 1, stage_of


def test_a_poisoned_record_is_the_only_dead_letter_of_its_batch(run):
    output, _, result = run
    dead = dead_letters(output)
    assert sorted((pathlib.Path(d["uri"]).name, d["stage"], d["error_type"]) for d in dead) == [
        ("astronaut.jpg", "remove", "MemoryError"),
        ("motorcycle.jpg", "detect", "RuntimeError"),
    ]
    assert all("Traceback" in d["traceback"] for d in dead)
    retried = result.metrics().query(MetricsFilter().with_name("records_retried_count"))["counters"]
    by_stage = {c.key.metric.namespace: c.committed for c in retried}
    # The whole detector batch failed and was retried one by one: the four good images came through.
    assert by_stage["counterfactory.detect"] == BATCH


def test_a_mask_that_cannot_be_read_is_its_objects_dead_letter(samples_dir, tmp_path):
    # chelsea's one kept object gets a mask that is no PNG: that object is a dead letter of the
    # mask check, the image ends as "all its objects dead", and both ledgers still close.
    output, stats, _ = _bootstrap(samples_dir, tmp_path / "candidates",
                                  BoxSegmenter(empty="coffee.jpg", corrupt="chelsea.jpg"))
    assert stats["objects_ledger"]["dead_letters"] == {"mask_quality": 1, "remove": 1}
    assert stats["ledger"]["dead_letters"] == {"detect": 1, "objects": 2} and stats["ledger"]["written"] == 0
    dead = dead_letters(output)
    [mask_dead] = [d for d in dead if d["stage"] == "mask_quality"]
    assert pathlib.Path(mask_dead["uri"]).name == "chelsea.jpg" and mask_dead["key"].endswith("_o000")


@pytest.mark.parametrize("stage, level", [("read", "image"), ("decode", "image"), ("select", "image"),
                                          ("mask_quality", "object"), ("score", "object"), ("encode", "object")])
def test_an_exception_in_any_stage_is_one_dead_letter_and_both_ledgers_close(samples_dir, tmp_path, monkeypatch,
                                                                            stage, level):
    # Every record-level stage fails on the one image that would be written; nothing goes missing.
    fail_stage(monkeypatch, stage, lambda uri, key: uri.endswith("chelsea.jpg"))
    output, stats, _ = _bootstrap(samples_dir, tmp_path / "candidates", BoxSegmenter(empty="coffee.jpg"))
    assert [(pathlib.Path(d["uri"]).name, d["stage"]) for d in injected_dead_letters(output)] == [
        ("chelsea.jpg", stage)]
    assert stats["ledger"]["written"] == 0 and stats["objects_ledger"]["written"] == 0
    if level == "image":
        assert stats["ledger"]["dead_letters"] == {"detect": 1, "objects": 1, stage: 1}
        assert stats["objects_ledger"]["inputs"] == 2  # chelsea's object never reached segmentation
    else:
        assert stats["ledger"]["dead_letters"] == {"detect": 1, "objects": 2}
        assert stats["objects_ledger"]["dead_letters"] == {"remove": 1, stage: 1}


def test_candidate_sample_holds_source_mask_cutout_and_every_candidate(run):
    output, _, _ = run
    samples = list(webdataset.WebDataset(sorted(str(p) for p in output.glob("shard-*.tar")), shardshuffle=False))
    assert len(samples) == 1
    sample = samples[0]
    meta = json.loads(sample["json"])
    assert meta["kind"] == "candidates" and meta["detection"]["label"] == "cat"
    assert meta["models"] == {"detector": "annotations"}
    src = decode_rgb(sample["src.jpg"])
    height, width = src.shape[:2]
    mask = decode_mask_png(sample["mask.png"], width, height)
    assert meta["mask"]["grown"] is True
    # The classical remover grows the mask again, by at most the top of its dilation range.
    repainted = dilate(mask, RemovalConfig().dilation_px_range[1])
    for candidate in meta["candidates"]:
        removed = decode_rgb(sample[removed_field(candidate["index"])])
        assert removed.shape == src.shape
        assert np.array_equal(removed[~repainted], src[~repainted]), "the classical remover repaints only the mask"
        assert set(candidate["scores"]) == set(SCORE_NAMES)
        assert candidate["scores"]["redetect_score"] is None  # no re-detection in this graph
        assert 0.0 <= candidate["scores"]["quality"] <= 1.0 and candidate["scores"]["agreement"] is not None
    assert len({c["seed"] for c in meta["candidates"]}) == 2
    cutout = np.asarray(Image.open(io.BytesIO(sample["object.png"])))
    x0, y0, x1, y1 = meta["object"]["box"]
    assert cutout.shape == (y1 - y0, x1 - x0, 4)
    assert np.array_equal(cutout[..., :3][cutout[..., 3] > 0], src[y0:y1, x0:x1][cutout[..., 3] > 0])
    row = pq.read_table(output / "shard-000000-00.parquet").to_pylist()[0]
    assert row["key"] == sample["__key__"] and row["num_candidates"] == 2 and len(row["ssim_outside"]) == 2


def test_contact_sheet_shows_one_row_per_object(run):
    output, _, _ = run
    sheet = candidate_sheet(sorted(str(p) for p in output.glob("shard-*.tar")), side=64, candidates=2)
    assert sheet.size == (64 * 4, 64 + CAPTION_PX)
    assert np.asarray(sheet).std() > 10, "the tiles are drawn"
