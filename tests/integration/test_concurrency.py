"""Local worker threads lose no record: Beam's timed output flush races with bundle threads.

With several local workers Beam's data planes also flush output streams on a timer thread
that clears what another thread wrote meanwhile (pipeline/runners.py). Its period is a
second there; these tests set it to a millisecond, so that a loss that takes minutes of a
real run to show (issue 14: 136 of 972 objects) shows in every run of a few seconds.
"""
from __future__ import annotations

import hashlib
import pathlib
import threading
import time

import apache_beam as beam
import numpy as np
import pytest
import webdataset
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers
from apache_beam.runners.worker import data_plane
from PIL import Image

from pipeline.bootstrap import FUNNEL_STEPS, OBJECTS, BootstrapConfig, build_bootstrap
from pipeline.finalize import RunInfo, check_ledgers
from pipeline.runners import ThreadSafeFnApiRunner, new_pipeline, uses_local_workers
from pipeline.sources import SourcesConfig
from pipeline.testing import build_random_inpainting_pipeline
from schemas import Box, Detection, ObjectMask, SourceImage, object_key
from schemas.sample import CANDIDATE_METADATA_SCHEMA, removed_field
from transforms.io.decode import decode_rgb
from transforms.io.shards import ShardWriterConfig
from transforms.mask_quality import MaskQualityConfig
from transforms.masks import decode_mask_png, encode_mask_png
from transforms.models.diffusion import (
    DiffusionRemovalConfig,
    DiffusionRemovalHandler,
    DiffusionRemover,
)
from transforms.models.segmentation import SegmentationRequest
from transforms.quality import QualityConfig
from transforms.selection import SelectionConfig

THREADS = 4
INPUTS, PER_INPUT = 8, 6000
#: Plain Beam loses records in about 5 runs of 6 at these sizes; this many runs make a clean streak unlikely.
PLAIN_RUNS = 5


@pytest.fixture
def millisecond_timed_flush(monkeypatch):
    """Beam's in-process workers flush on a timer every millisecond instead of every second.

    The timer thread also takes a millisecond to hand each flushed buffer on, as it does on
    a loaded machine: that is the window in which what a bundle thread writes is cleared.
    """
    monkeypatch.setattr(worker_handlers, "DATA_BUFFER_TIME_LIMIT_MS", 1)
    enqueue = data_plane._GrpcDataChannel._enqueue_to_send

    def slow_on_the_timer_thread(self, element):
        if isinstance(threading.current_thread(), data_plane.PeriodicThread):
            time.sleep(0.001)
        return enqueue(self, element)

    monkeypatch.setattr(data_plane._GrpcDataChannel, "_enqueue_to_send", slow_on_the_timer_thread)


def _threaded_options() -> PipelineOptions:
    return PipelineOptions(["--runner=FnApiRunner", f"--direct_num_workers={THREADS}",
                            "--direct_running_mode=multi_threading"])


def _count_through_a_shuffle(pipeline: beam.Pipeline, tmp_path: pathlib.Path) -> int:
    """Bundles that keep writing 1 KB records for longer than a flush period, counted after a shuffle."""
    counted = tmp_path / "count.txt"

    def emit(seed: int):
        for index in range(PER_INPUT):
            yield seed * PER_INPUT + index, b"x" * 1000

    _ = (pipeline
         | beam.Create(range(INPUTS)) | beam.Reshuffle() | beam.FlatMap(emit)
         | "ByBucket" >> beam.Map(lambda record: (record[0] % 7, record)) | "Shuffle" >> beam.GroupByKey()
         | "Sizes" >> beam.Map(lambda bucket: (0, len(bucket[1]))) | "All" >> beam.GroupByKey()
         | beam.Map(lambda total: counted.write_text(str(sum(total[1])))))
    pipeline.run().wait_until_finish()
    return int(counted.read_text())


@pytest.mark.xfail(strict=True, raises=AssertionError, reason="Beam's timed flush loses records; when this passes, Beam is fixed "
                                       "and ThreadSafeFnApiRunner can go")
def test_beams_own_threaded_runner_keeps_every_record(millisecond_timed_flush, tmp_path):
    for _ in range(PLAIN_RUNS):
        assert _count_through_a_shuffle(beam.Pipeline(options=_threaded_options()), tmp_path) == INPUTS * PER_INPUT


@pytest.mark.parametrize("attempt", range(3))
def test_our_threaded_runner_keeps_every_record(millisecond_timed_flush, tmp_path, attempt):
    pipeline = new_pipeline(_threaded_options())
    assert isinstance(pipeline.runner, ThreadSafeFnApiRunner)
    assert _count_through_a_shuffle(pipeline, tmp_path) == INPUTS * PER_INPUT


def test_only_several_local_workers_get_the_thread_safe_runner():
    assert uses_local_workers(_threaded_options())
    assert uses_local_workers(PipelineOptions(["--runner=DirectRunner", "--direct_num_workers=4",
                                               "--direct_running_mode=multi_processing"]))
    assert not uses_local_workers(PipelineOptions(["--runner=FnApiRunner"]))
    assert not uses_local_workers(PipelineOptions(["--runner=DataflowRunner", "--direct_running_mode=multi_threading",
                                                   "--direct_num_workers=4"]))


def test_the_timer_is_off_during_a_run_and_back_after_it(millisecond_timed_flush, tmp_path):
    seen = tmp_path / "period.txt"
    pipeline = new_pipeline(_threaded_options())
    _ = pipeline | beam.Create([0]) | beam.Map(lambda _: seen.write_text(str(worker_handlers.DATA_BUFFER_TIME_LIMIT_MS)))
    pipeline.run().wait_until_finish()
    assert int(seen.read_text()) > 24 * 3600 * 1000  # the runner's side and the in-process workers' read it
    assert worker_handlers.DATA_BUFFER_TIME_LIMIT_MS == 1


# --------------------------------------------------------------------------- the bootstrap graph, many threads


class _NoWeights:
    """What the stand-in models load (Beam keeps a weak reference to a loaded model)."""


class _ThreeBoxDetector(ModelHandler[SourceImage, PredictionResult, _NoWeights]):
    """Three side-by-side boxes per image, in batches of up to three images."""

    def __init__(self) -> None:
        super().__init__(min_batch_size=1, max_batch_size=3)

    def load_model(self) -> _NoWeights:
        return _NoWeights()

    def run_inference(self, batch, model, inference_args=None):
        return [PredictionResult(source, tuple(
            Detection(label="cat", class_id=0, score=0.9, box=Box(8 + 36 * i, 8, 38 + 36 * i, 48), detector="boxes")
            for i in range(OBJECTS_PER_IMAGE)), "boxes") for source in batch]


class _BoxSegmenter(ModelHandler[SegmentationRequest, PredictionResult, _NoWeights]):
    """Fills each box, in batches of up to two images."""

    def __init__(self) -> None:
        super().__init__(min_batch_size=1, max_batch_size=2)

    def load_model(self) -> _NoWeights:
        return _NoWeights()

    def run_inference(self, batch, model, inference_args=None):
        results = []
        for request in batch:
            source, masks = request.source, []
            for index, detection in zip(request.object_indices, request.detections):
                mask = np.zeros((source.height, source.width), bool)
                box = detection.box
                mask[int(box.y0):int(box.y1), int(box.x0):int(box.x1)] = True
                masks.append(ObjectMask(object_key(source.key, index), source.key, index, detection,
                                        encode_mask_png(mask), 0.95, "boxes"))
            results.append(PredictionResult(request, tuple(masks), "boxes"))
        return results


def key_colour(object_key_: str, candidate_index: int) -> list[int]:
    """The colour the key-painting remover fills an object's candidate with."""
    return list(hashlib.md5(f"{object_key_}/{candidate_index}".encode()).digest()[:3])


class _KeyPaintingRemover(DiffusionRemover):
    """The real remover (rows of every waiting call in one model batch, GPU thread, CPU pool), painting keys.

    Each row's pixels are its object's key and candidate index as a colour, so a candidate
    that ends up with another object's pixels is caught, not only one that goes missing.
    """

    def _generate(self, chunk):
        side = self._config.resolution
        return np.stack([np.full((side, side, 3), key_colour(row.request.mask.key, row.candidate_index), np.uint8)
                         for row in chunk])


class _KeyPaintingHandler(DiffusionRemovalHandler):
    def load_model(self) -> _KeyPaintingRemover:
        return _KeyPaintingRemover(build_random_inpainting_pipeline("tiny"), self.config, "key-painter")


OBJECTS_PER_IMAGE = 3
CANDIDATES = 2


def test_bootstrap_with_many_threads_writes_every_object_once_with_its_own_candidates(
        millisecond_timed_flush, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(48):
        Image.fromarray(rng.integers(0, 255, (64, 128, 3), np.uint8)).save(images / f"image_{index:03d}.png")
    output = tmp_path / "candidates"
    remover = _KeyPaintingHandler(DiffusionRemovalConfig(
        model="key-painter", device="cpu", num_candidates=CANDIDATES, max_batch_size=3, max_model_batch=4,
        resolution=64, mask_dilation_px=0, feather_px=0, share_across_processes=False))
    config = BootstrapConfig(
        sources=SourcesConfig(images=(str(images),)),
        selection=SelectionConfig(max_area_fraction=1.0, max_overlap=1.0, min_image_side=32),
        detector=_ThreeBoxDetector(), segmenter=_BoxSegmenter(), masks=MaskQualityConfig(), remover=remover,
        quality=QualityConfig(),
        writer=ShardWriterConfig(output_dir=str(output), metadata_schema=CANDIDATE_METADATA_SCHEMA, max_count=20),
        run=RunInfo("bootstrap", "threads", "test", (str(images),), {}, FUNNEL_STEPS, "now", sub_ledgers=(OBJECTS,)))
    pipeline = new_pipeline(PipelineOptions(["--runner=FnApiRunner", "--direct_num_workers=8",
                                             "--direct_running_mode=multi_threading"]))
    build_bootstrap(pipeline, config)
    pipeline.run().wait_until_finish()
    stats = check_ledgers(str(output))
    assert stats["objects_ledger"]["written"] == 48 * OBJECTS_PER_IMAGE
    assert all(row["closed"] for row in stats["stages"])

    samples = list(webdataset.WebDataset(sorted(str(p) for p in output.glob("*.tar")), shardshuffle=False))
    keys = [sample["__key__"] for sample in samples]
    assert len(keys) == len(set(keys)) == 48 * OBJECTS_PER_IMAGE
    for sample in samples:
        src = decode_rgb(sample["src.jpg"])
        mask = decode_mask_png(sample["mask.png"], src.shape[1], src.shape[0])
        for index in range(CANDIDATES):
            removed = decode_rgb(sample[removed_field(index)])
            assert (removed[mask] == key_colour(sample["__key__"], index)).all(), (sample["__key__"], index)
