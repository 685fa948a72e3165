"""The CLIP "object gone" scorer: configs, crop windows, scores from a tiny random open_clip
model (directly and through RunInference), the text cache, and loading weights from a
checkpoint path or a catalog entry.
"""
from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skimage_data

from schemas import (
    Box,
    CandidateScores,
    Detection,
    ObjectCandidates,
    ObjectMask,
    RawInput,
    RemovalCandidate,
    SourceImage,
    candidate_key,
    object_key,
)
from transforms.io.decode import DecodeConfig, decode_rgb, decode_source
from transforms.masks import encode_mask_png
from transforms.models import catalog as cat
from transforms.models.clip import (
    TINY_ARCHITECTURE,
    ClipScorerConfig,
    ClipScorerHandler,
    crop_window,
    register_extra_architectures,
)
from transforms.models.removal import encode_png

torch = pytest.importorskip("torch")
open_clip = pytest.importorskip("open_clip")

TINY = ClipScorerConfig(model=None, architecture=TINY_ARCHITECTURE, max_batch_size=4)
TINY_NAME = f"open-clip-{TINY_ARCHITECTURE}@random"
#: Objects of the astronaut photo: label, box.
OBJECTS = (("person", Box(22, 15, 363, 512)), ("rocket", Box(360, 0, 470, 280)), ("person", Box(140, 40, 300, 220)))


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def astronaut() -> SourceImage:
    buffer = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(buffer, format="PNG")
    source = decode_source(RawInput("skimage://astronaut.png", buffer.getvalue()), DecodeConfig())
    assert isinstance(source, SourceImage)
    return source


def make_record(source: SourceImage, index: int, label: str, box: Box) -> ObjectCandidates:
    """Candidates: 0 the source itself, 1 the box filled by inpainting, 2 a blurred copy."""
    rgb = decode_rgb(source.jpeg)
    mask = np.zeros(rgb.shape[:2], bool)
    x0, y0, x1, y1 = (int(v) for v in box.as_list())
    mask[y0:y1, x0:x1] = True
    key = object_key(source.key, index)
    detection = Detection(label=label, class_id=0, score=0.9, box=box, detector="test")
    obj = ObjectMask(key=key, source_key=source.key, object_index=index, detection=detection,
                     mask_png=encode_mask_png(mask), predicted_iou=0.95, segmenter="test")
    removed = [rgb, cv2.inpaint(rgb, mask.astype(np.uint8), 3, cv2.INPAINT_TELEA), cv2.GaussianBlur(rgb, (0, 0), 6)]
    candidates = tuple(
        RemovalCandidate(key=candidate_key(key, i), object_key=key, candidate_index=i, seed=i, remover="test",
                         removed_png=encode_png(pixels), scores=CandidateScores(ssim_outside=0.5))
        for i, pixels in enumerate(removed)
    )
    return ObjectCandidates(source, obj, candidates)


@pytest.fixture(scope="module")
def records(astronaut: SourceImage) -> list[ObjectCandidates]:
    return [make_record(astronaut, i, label, box) for i, (label, box) in enumerate(OBJECTS)]


@pytest.fixture(scope="module")
def tiny_model():
    return ClipScorerHandler(TINY).load_model()


@pytest.fixture
def forward_calls() -> Iterator[dict[str, list[int]]]:
    """Batch sizes of every image-tower and text-tower forward pass while the test runs."""
    calls: dict[str, list[int]] = {"image": [], "text": []}

    def count(module, inputs, output) -> None:
        if isinstance(module, open_clip.transformer.VisionTransformer):
            calls["image"].append(inputs[0].shape[0])
        elif isinstance(module, torch.nn.Embedding):  # the text tower's token embedding
            calls["text"].append(inputs[0].shape[0])

    hook = torch.nn.modules.module.register_module_forward_hook(count)
    try:
        yield calls
    finally:
        hook.remove()


def scores_of(result) -> list[float]:
    return [c.scores.clip_object_gone for c in result.inference.candidates]


# --------------------------------------------------------------------------- configs and crops


@pytest.mark.parametrize("kwargs, message", [
    ({"model": None}, "need an architecture"),
    ({"model": ""}, "model must be"),
    ({"architecture": 32}, "architecture must be"),
    ({"prompt_template": "a photo"}, "field {label}"),
    ({"prompt_template": "a {label} and a {label}"}, "once and no other"),
    ({"prompt_template": "a {label} on {surface}"}, "once and no other"),
    ({"prompt_template": "a {label} }"}, "not a valid format string"),
    ({"box_padding": -0.1}, "box_padding"),
    ({"box_padding": float("nan")}, "box_padding"),
    ({"box_padding": True}, "box_padding"),
    ({"device": "gpu"}, "device"),
    ({"precision": "int8"}, "precision must be one of"),
    ({"precision": "bf16"}, "needs a CUDA device"),
    ({"max_batch_size": 0}, "max_batch_size"),
    ({"crops_per_pass": 2.5}, "crops_per_pass"),
    ({"min_batch_size": 4, "max_batch_size": 2}, "min_batch_size"),
])
def test_invalid_configs_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ClipScorerConfig(**kwargs)


def test_handler_follows_the_config() -> None:
    config = ClipScorerConfig(device="cuda:1", precision="fp16", min_batch_size=2, max_batch_size=16)
    handler = ClipScorerHandler(config)
    assert config.model == "open-clip-vit-b-32-laion2b" and config.prompt("dog") == "a photo of a dog"
    assert handler.share_model_across_processes()
    assert handler.batch_elements_kwargs() == {"min_batch_size": 2, "max_batch_size": 16}
    assert handler.get_metrics_namespace() == "counterfactory.clip"
    assert not ClipScorerHandler(TINY).share_model_across_processes()


@pytest.mark.parametrize("box, padding, window", [
    (Box(100, 100, 200, 150), 0.0, (100, 75, 200, 175)),  # squared around the centre
    (Box(100, 100, 200, 150), 0.1, (90, 65, 210, 185)),  # padded by 10% of the longer side
    (Box(0, 0, 50, 20), 0.1, (0, 0, 60, 60)),  # shifted inside at the top-left corner
    (Box(450, 330, 512, 384), 0.0, (450, 322, 512, 384)),  # ... and at the bottom-right
    (Box(-20, 10, 530, 100), 0.2, (0, 0, 512, 384)),  # clipped box, window larger than the image
    (Box(10.4, 10.4, 10.6, 10.6), 0.0, (10, 10, 11, 11)),  # never empty
])
def test_crop_window(box: Box, padding: float, window: tuple[int, int, int, int]) -> None:
    assert crop_window(box, 512, 384, padding) == window


def test_crop_window_refuses_a_box_outside_the_image() -> None:
    with pytest.raises(ValueError, match="empty"):
        crop_window(Box(600, 0, 700, 50), 512, 384, 0.1)


# --------------------------------------------------------------------------- scores


def test_scores_one_per_candidate_and_zero_for_an_unchanged_one(tiny_model, records, forward_calls) -> None:
    handler = ClipScorerHandler(TINY)
    results = list(handler.run_inference(records, tiny_model))

    assert [r.example for r in results] == records and all(r.model_id == TINY_NAME for r in results)
    for result, record in zip(results, records):
        scores = scores_of(result)
        assert len(scores) == len(record.candidates) == 3
        assert all(isinstance(s, float) and math.isfinite(s) and -2.0 <= s <= 2.0 for s in scores)
        assert scores[0] == 0.0  # the candidate is the source: before == after
        assert scores[1] != 0.0 and scores[2] != 0.0
        for before, after in zip(record.candidates, result.inference.candidates):
            assert (after.key, after.removed_png) == (before.key, before.removed_png)
            assert after.scores.ssim_outside == 0.5  # other scores are kept
        assert all(c.scores.clip_object_gone is None for c in record.candidates)  # records are not mutated
    # One image-tower pass over the distinct crops: 3 sources + 2 changed candidates each.
    assert forward_calls["image"] == [9]
    assert forward_calls["text"] == [2]  # "person" and "rocket", once each


def test_crops_are_embedded_in_chunks(tiny_model, records, forward_calls) -> None:
    handler = ClipScorerHandler(ClipScorerConfig(model=None, architecture=TINY_ARCHITECTURE, crops_per_pass=4))
    chunked = [scores_of(r) for r in handler.run_inference(records, handler.load_model())]
    assert forward_calls["image"] == [4, 4, 1]
    whole = [scores_of(r) for r in ClipScorerHandler(TINY).run_inference(records, tiny_model)]
    np.testing.assert_allclose(chunked, whole, atol=1e-6)


def test_text_embeddings_are_cached_per_label(records, forward_calls) -> None:
    handler = ClipScorerHandler(TINY)
    model = handler.load_model()
    handler.run_inference(records[:1], model)  # "person"
    handler.run_inference(records, model)  # "person" again, twice, and "rocket"
    handler.run_inference(records[1:2], model)
    assert forward_calls["text"] == [1, 1]


def test_random_weights_are_seeded_and_leave_the_global_rng_alone(tiny_model, records) -> None:
    handler = ClipScorerHandler(TINY)
    state = torch.random.get_rng_state()
    again = handler.load_model()
    assert torch.equal(torch.random.get_rng_state(), state)
    first = [scores_of(r) for r in handler.run_inference(records, tiny_model)]
    assert [scores_of(r) for r in handler.run_inference(records, again)] == first


def test_candidate_of_another_size_is_refused(tiny_model, astronaut) -> None:
    record = make_record(astronaut, 0, "person", OBJECTS[0][1])
    small = encode_png(decode_rgb(astronaut.jpeg)[:100, :100])
    candidate = RemovalCandidate(candidate_key(record.key, 3), record.key, 3, 0, "test", small)
    record = ObjectCandidates(record.source, record.mask, (*record.candidates, candidate))
    with pytest.raises(ValueError, match="is 100x100, its source 512x512"):
        ClipScorerHandler(TINY).run_inference([record], tiny_model)


def test_scores_through_run_inference(records, forward_calls) -> None:
    import apache_beam as beam
    from apache_beam.ml.inference.base import RunInference
    from apache_beam.testing.util import assert_that, equal_to

    def summary(result) -> tuple:
        scores = scores_of(result)
        return (result.example.key, result.model_id, len(scores), scores[0],
                all(math.isfinite(s) and -2.0 <= s <= 2.0 and s != 0.0 for s in scores[1:]))

    expected = [(r.key, TINY_NAME, 3, 0.0, True) for r in records]
    with beam.Pipeline(runner="FnApiRunner") as p:
        results = p | beam.Create(records) | RunInference(ClipScorerHandler(TINY)) | beam.Map(summary)
        assert_that(results, equal_to(expected))
    assert sum(forward_calls["image"]) == 9  # every distinct crop once, however the records were batched
    assert sum(forward_calls["text"]) == 2  # each label once, cached across batches


# --------------------------------------------------------------------------- weights from files


@pytest.fixture
def checkpoint(tmp_path: Path):
    """A tiny model with weights unlike the random default, saved as open_clip safetensors."""
    from safetensors.torch import save_file

    register_extra_architectures()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = open_clip.create_model(TINY_ARCHITECTURE).eval()
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model


def text_embedding(model, prompt: str) -> np.ndarray:
    with torch.inference_mode():
        tokens = open_clip.get_tokenizer(TINY_ARCHITECTURE)([prompt])
        return torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)[0].numpy()


def test_checkpoint_is_loaded_from_a_path(checkpoint, records) -> None:
    path, saved = checkpoint
    handler = ClipScorerHandler(ClipScorerConfig(model=str(path), architecture=TINY_ARCHITECTURE))
    model = handler.load_model()
    assert model.name() == f"{path}@{sha(path)[:12]}"
    np.testing.assert_allclose(model.embed_prompts(["a photo of a person"])[0],
                               text_embedding(saved, "a photo of a person"), atol=1e-6)
    results = list(handler.run_inference(records[:1], model))
    assert results[0].model_id == model.name() and scores_of(results[0])[0] == 0.0


def test_checkpoint_path_needs_an_architecture(checkpoint) -> None:
    with pytest.raises(ValueError, match="set the CLIP scorer's architecture"):
        ClipScorerHandler(ClipScorerConfig(model=str(checkpoint[0]))).load_model()


def test_unknown_architecture_is_refused_on_the_worker() -> None:
    with pytest.raises(ValueError, match="not an open_clip architecture"):
        ClipScorerHandler(ClipScorerConfig(model=None, architecture="ViT-Nope")).load_model()


def test_catalog_entry_names_weights_and_architecture(checkpoint, tmp_path: Path, monkeypatch) -> None:
    path, saved = checkpoint
    site = tmp_path / "catalog.yaml"
    site.write_text(
        "models:\n"
        "- id: tiny-clip\n  task: embedding\n  format: open-clip\n  license: MIT\n"
        f"  files:\n    weights: {{source: {path}, sha256: {sha(path)}}}\n"
        f"  params: {{architecture: {TINY_ARCHITECTURE}}}\n"
        "- id: tiny-clip-tagged\n  task: embedding\n  format: open-clip\n  license: MIT\n"
        f"  files:\n    weights: {{source: {path}, sha256: {sha(path)}}}\n"
        f"  params: {{architecture: {TINY_ARCHITECTURE}, pretrained_tag: laion2b_s34b_b79k}}\n"
        "- id: not-clip\n  task: segmentation\n  format: onnx\n  license: MIT\n"
        f"  files:\n    weights: {{source: {path}, sha256: {sha(path)}}}\n")
    monkeypatch.setenv(cat.CATALOG_ENV, str(site))
    monkeypatch.setenv(cat.CACHE_ENV, str(tmp_path / "cache"))

    model = ClipScorerHandler(ClipScorerConfig(model="tiny-clip")).load_model()
    assert model.name() == f"tiny-clip@{sha(path)[:12]}"
    np.testing.assert_allclose(model.embed_prompts(["a photo of a cat"])[0], text_embedding(saved, "a photo of a cat"),
                               atol=1e-6)
    with pytest.raises(ValueError, match="has format onnx"):
        ClipScorerHandler(ClipScorerConfig(model="not-clip", architecture=TINY_ARCHITECTURE)).load_model()
    with pytest.raises(ValueError, match="knows no pretrained tag 'laion2b_s34b_b79k'"):
        ClipScorerHandler(ClipScorerConfig(model="tiny-clip-tagged")).load_model()


def test_default_model_is_a_catalog_entry_open_clip_knows() -> None:
    """The default's architecture and pretrained tag (preprocessing, QuickGELU) resolve offline."""
    spec = cat.load_catalog()[ClipScorerConfig().model]
    assert spec.format == "open-clip"
    assert spec.param("architecture") in open_clip.list_models()
    assert open_clip.get_pretrained_cfg(spec.param("architecture"), spec.param("pretrained_tag"))
