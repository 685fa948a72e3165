"""Diffusers removal on a tiny random-weight SD-inpainting pipeline: batching, seeds, composite, Beam."""
import hashlib
import pathlib
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import cv2
import numpy as np
import pytest
from apache_beam.ml.inference.base import RunInference
from apache_beam.testing.util import assert_that, equal_to

from pipeline.testing import INPAINTING_PIPELINE_SHAPES, build_random_inpainting_pipeline
from schemas import Box, Detection, ObjectMask, RawInput, candidate_key, object_key
from transforms.io.decode import DecodeConfig, decode_rgb, decode_source
from transforms.masks import dilate, encode_mask_png
from transforms.models.catalog import CACHE_ENV, CATALOG_ENV
from transforms.models.diffusion import (
    DiffusionRemovalConfig,
    DiffusionRemovalHandler,
    DiffusionRemover,
)
from transforms.models.gpus import gpu_thread
from transforms.models.removal import RemovalRequest, candidate_seed, decode_mask
from transforms.models.removers import REMOVAL_HANDLERS, removal_handler
from transforms.models.sources import tree_sha256

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
# diffusers' schedulers call np.array on tensors, which numpy 2 warns about; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning:diffusers")

REPO = pathlib.Path(__file__).resolve().parents[2]

# Small and fast: 64 px squares, 3 DDIM steps; max_model_batch 3 splits a batch of 4 rows unevenly.
FAST = {"device": "cpu", "resolution": 64, "num_inference_steps": 3, "num_candidates": 2, "max_model_batch": 3,
        "mask_dilation_px": 4, "feather_px": 6}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    # The tiny model gains nothing from threads, and OpenMP threads spinning on a shared machine lose a lot.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_pipeline():
    return build_random_inpainting_pipeline("tiny")


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tiny_pipeline, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-sd-inpainting")
    tiny_pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def fast_config(tiny_pipeline_dir):
    return DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **FAST)


@pytest.fixture(scope="module")
def remover(fast_config):
    return DiffusionRemovalHandler(fast_config).load_model()


def _source(name):
    path = REPO / "jobs" / "samples" / "images" / name
    return decode_source(RawInput(str(path), path.read_bytes()), DecodeConfig())


def _object(source, box):
    mask = np.zeros((source.height, source.width), np.uint8)
    center = (round((box.x0 + box.x1) / 2), round((box.y0 + box.y1) / 2))
    cv2.ellipse(mask, center, (round(box.width / 2), round(box.height / 2)), 0, 0, 360, 255, -1)
    detection = Detection(label="thing", class_id=0, score=1.0, box=box, detector="test")
    return ObjectMask(object_key(source.key, 0), source.key, 0, detection, encode_mask_png(mask > 0), 1.0, "test")


@pytest.fixture(scope="module")
def cup():
    source = _source("coffee.jpg")  # 600x400
    return source, _object(source, Box(180, 90, 330, 230))


@pytest.fixture(scope="module")
def cat():
    source = _source("chelsea.jpg")  # 451x300
    return source, _object(source, Box(120, 40, 300, 250))


def _digests(candidates):
    return [(c.key, hashlib.sha256(c.removed_png).hexdigest()) for c in candidates]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"model": ""}, "catalog id or a path"),
        ({"model": "/models/sd-inpainting.safetensors"}, "needs config"),
        ({"config": 3}, "config must be a folder path"),
        ({"device": "gpu"}, "device must be"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"scheduler": "pndm"}, "scheduler must be one of"),
        ({"conditioning": "blurred"}, "conditioning must be one of"),
        ({"guidance_scale": 0.5}, "guidance_scale must be"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be"),
        ({"guidance_scale": 7.5}, "only doubles the cost"),
        ({"prompt": None}, "prompt must be a string"),
        ({"blend_latents": "yes"}, "blend_latents must be true or false"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"feather_px": -1}, "feather_px"),
        ({"mask_dilation_px": 1.5}, "mask_dilation_px"),
        ({"resolution": 32}, "resolution"),
        ({"resolution": 100}, "multiple of 8"),
        ({"num_candidates": 0}, "num_candidates"),
        ({"seed": -1}, "seed"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_model_batch": 0}, "max_model_batch"),
        ({"compile": "max-autotune"}, "compile must be one of"),
        ({"compile": True}, "compile must be one of"),
        ({"channels_last": 1}, "channels_last must be true or false"),
        ({"fuse_qkv": "no"}, "fuse_qkv must be true or false"),
        ({"compile_cache_dir": 3}, "compile_cache_dir must be a folder path"),
        ({"attention": "fast"}, "attention must be one of"),
        ({"conv_search": "all"}, "conv_search must be one of"),
        ({"conv_search": 0}, "conv_search must be one of"),
        ({"fill_wait_s": -1}, "fill_wait_s must be"),
        ({"fill_wait_s": float("inf")}, "fill_wait_s must be"),
        ({"fill_wait_s": "1"}, "fill_wait_s must be"),
        ({"share_across_processes": "no"}, "share_across_processes must be true or false"),
    ],
)
def test_config_is_validated(options, message):
    with pytest.raises(ValueError, match=message):
        DiffusionRemovalConfig(**options)


def test_config_defaults_and_precision():
    config = DiffusionRemovalConfig()
    assert (config.model, config.device, config.dtype, config.effective_dtype) == (
        "sd15-inpainting", "cuda", "bfloat16", "bfloat16")
    assert (config.guidance_scale, config.conditioning, config.blend_latents) == (1.0, "grayed", False)
    assert DiffusionRemovalConfig(device="cpu").effective_dtype == "float32"
    guided = DiffusionRemovalConfig(guidance_scale=4, prompt="empty background", negative_prompt="an object")
    assert ":guidance=4:" in guided.remover_id("m@0")
    assert guided.remover_id("m@0") != DiffusionRemovalConfig(guidance_scale=4, prompt="background",
                                                            negative_prompt="an object").remover_id("m@0")


def test_speed_settings_are_recorded_where_they_apply():
    # They change pixels within rounding, so a candidate says which ran; on the CPU only compiling applies.
    assert DiffusionRemovalConfig().remover_id("m@0").endswith(":dtype=bfloat16:exec=fused_qkv+eager")
    assert DiffusionRemovalConfig(compile="cudagraphs").execution == "channels_last+fused_qkv+compile-cudagraphs"
    compiled = DiffusionRemovalConfig(compile="cudagraphs", channels_last=False)
    assert compiled.compiled and compiled.execution == "fused_qkv+compile-cudagraphs"
    assert DiffusionRemovalConfig(device="cpu", compile="inductor").execution == "compile-inductor"


def test_conv_search_is_recorded_on_gpus_only(tiny_pipeline, cup):
    """cuDNN's exhaustive search may pick other engines (pixels within rounding): recorded on GPUs, a no-op on the CPU."""
    tuned = DiffusionRemovalConfig(compile="cudagraphs", attention="cudnn", conv_search="exhaustive")
    assert tuned.execution == "channels_last+fused_qkv+attention-cudnn+conv-exhaustive+compile-cudagraphs"
    assert DiffusionRemovalConfig().conv_search == "heuristic"  # PyTorch's own default: cuDNN's top 10 timed
    heuristic, exhaustive = (DiffusionRemovalConfig(**FAST, conv_search=s) for s in ("heuristic", "exhaustive"))
    assert exhaustive.remover_id("m@0") == heuristic.remover_id("m@0")
    candidates = [DiffusionRemover(tiny_pipeline, config, "tiny")([config.request(*cup)])[0]
                  for config in (heuristic, exhaustive)]
    assert _digests(candidates[0]) == _digests(candidates[1])
    assert not DiffusionRemovalConfig(device="cpu").compiled
    assert DiffusionRemovalConfig(attention="cudnn").execution == "fused_qkv+attention-cudnn+eager"


def test_a_pinned_attention_backend_computes_the_same_candidates(tiny_pipeline_dir, cup):
    # MATH is the one backend every device has; the pin must reach every model call and change nothing else.
    configs = [DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **FAST, attention=a) for a in ("auto", "math")]
    outputs = [DiffusionRemovalHandler(c).load_model()([c.request(*cup)])[0] for c in configs]
    for auto, math_ in zip(*outputs):
        difference = np.abs(decode_rgb(auto.removed_png).astype(int) - decode_rgb(math_.removed_png).astype(int))
        assert difference.max() <= 2
    efficient = DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **FAST, attention="efficient")
    with pytest.raises(RuntimeError, match="scaled_dot_product_attention"):  # the pin is real: no CPU efficient kernel
        DiffusionRemovalHandler(efficient).load_model()([efficient.request(*cup)])
    # cuDNN first falls back to a fused kernel the device has (flash on the CPU) instead of failing.
    cudnn = DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **FAST, attention="cudnn")
    assert len(DiffusionRemovalHandler(cudnn).load_model()([cudnn.request(*cup)])[0]) == FAST["num_candidates"]


def test_importing_the_module_loads_no_model_library():
    # Beam's RunInference imports torch itself where it is installed, so compare with what removal.py loads.
    code = ("import sys, transforms.models.removal; before = set(sys.modules); import transforms.models.diffusion; "
            "print(sorted({m.partition('.')[0] for m in set(sys.modules) - before} & {'torch', 'diffusers', "
            "'transformers'}), 'diffusers' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "False", "False"]


def test_registry_batching_and_sharing():
    assert REMOVAL_HANDLERS["diffusers"] is DiffusionRemovalHandler
    handler = removal_handler("diffusers", {"device": "cuda:1", "max_batch_size": 3})
    assert isinstance(handler, DiffusionRemovalHandler) and handler.config.device == "cuda:1"
    assert handler.batch_elements_kwargs() == {"min_batch_size": 1, "max_batch_size": 3}
    assert handler.share_model_across_processes()  # one copy of the weights per GPU
    assert not removal_handler("diffusers", {"device": "cpu"}).share_model_across_processes()
    # Several GPUs on a host, one process each: every process keeps its own copy on its own GPU.
    assert not removal_handler("diffusers", {"share_across_processes": False}).share_model_across_processes()


def test_a_batch_gives_k_candidates_per_object(remover, fast_config, cup, cat, tiny_pipeline_dir):
    (coffee, cup_mask), (chelsea, cat_mask) = cup, cat
    first, second = remover([fast_config.request(coffee, cup_mask), fast_config.request(chelsea, cat_mask)])
    for (source, obj), candidates in (((coffee, cup_mask), first), ((chelsea, cat_mask), second)):
        assert [c.key for c in candidates] == [candidate_key(obj.key, k) for k in range(2)]
        assert [c.candidate_index for c in candidates] == [0, 1]
        assert {c.object_key for c in candidates} == {obj.key}
        assert [c.seed for c in candidates] == [candidate_seed(0, obj.key, k) for k in range(2)]
        for candidate in candidates:
            assert decode_rgb(candidate.removed_png).shape == (source.height, source.width, 3)
    candidates = first + second
    assert len({c.seed for c in candidates}) == 4
    assert len({c.removed_png for c in candidates}) == 4
    remover_id = candidates[0].remover
    assert {c.remover for c in candidates} == {remover_id}
    assert remover_id.startswith(f"diffusers:{tiny_pipeline_dir.name}@")
    for setting in (":scheduler=ddim:", ":steps=3:", ":guidance=1:", ":conditioning=grayed:", ":blend=0:",
                    ":dilation=4:", ":feather=6:", ":resolution=64:", ":dtype=float32"):
        assert setting in remover_id


def test_a_candidate_is_the_same_alone_or_in_any_batch(remover, fast_config, cup, cat):
    (coffee, cup_mask), (chelsea, cat_mask) = cup, cat
    [alone] = remover([fast_config.request(coffee, cup_mask)])
    # Here the cup's two rows are split over two model batches of different sizes (3 and 1).
    _, batched = remover([fast_config.request(chelsea, cat_mask), fast_config.request(coffee, cup_mask)])
    assert _digests(alone) == _digests(batched)
    [reseeded] = remover([RemovalRequest(coffee, cup_mask, 2, seed=1)])
    assert {c.removed_png for c in reseeded}.isdisjoint(c.removed_png for c in alone)


def test_calls_waiting_for_the_gpu_share_model_batches(remover, fast_config, cup, cat, monkeypatch):
    # Beam's threads call one remover with a few objects each: while the GPU thread is busy their
    # rows queue, and the next model batch takes rows from all of them.
    alone = [_digests(remover([fast_config.request(*obj)])[0]) for obj in (cup, cat)]
    chunks, generate = [], remover._generate
    monkeypatch.setattr(remover, "_generate", lambda chunk: chunks.append(chunk) or generate(chunk))
    gate = threading.Event()
    gpu_thread().submit(gate.wait)  # the GPU is busy with another model's work
    with ThreadPoolExecutor(2) as callers:
        calls = [callers.submit(remover, [fast_config.request(*obj)]) for obj in (cup, cat)]
        deadline = time.monotonic() + 30
        while len(remover._pending) < 4 and time.monotonic() < deadline:  # 2 objects x 2 candidates queued
            time.sleep(0.01)
        gate.set()
        together = [_digests(call.result()[0]) for call in calls]
    assert [len(chunk) for chunk in chunks] == [3, 1]  # max_model_batch 3: one batch holds both callers' rows
    assert len({row.request.mask.key for row in chunks[0]}) == 2
    assert together == alone


def test_a_short_model_batch_waits_for_a_caller_that_is_elsewhere_in_the_pipeline(tiny_pipeline_dir, cup, cat,
                                                                                  monkeypatch):
    # The bootstrap job's compiled remover ran its model batches 80 % full on an H200 (padded rows cost as
    # much as real ones) while its callers were upstream in SAM, a moment from coming back with rows.
    config = DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **{**FAST, "max_model_batch": 4, "fill_wait_s": 5.0})
    remover = DiffusionRemovalHandler(config).load_model()
    chunks, generate = [], remover._generate
    monkeypatch.setattr(remover, "_generate", lambda chunk: chunks.append(len(chunk)) or generate(chunk))
    with ThreadPoolExecutor(2) as callers:
        gate = threading.Event()
        gpu_thread().submit(gate.wait)  # both calls are inside before any model batch runs
        warm_up = [callers.submit(remover, [config.request(*obj)]) for obj in (cup, cat)]
        deadline = time.monotonic() + 30
        while len(remover._pending) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        [call.result() for call in warm_up]  # this worker has two callers
        chunks.clear()
        first = callers.submit(remover, [config.request(*cup)])
        time.sleep(0.5)  # the other caller is still upstream
        second = callers.submit(remover, [config.request(*cat)])
        first.result(), second.result()
    assert chunks == [4]  # both callers' 2 candidates in one full batch, not 2 + 2


def test_a_short_model_batch_does_not_wait_when_every_caller_is_already_waiting(tiny_pipeline_dir, cup,
                                                                                 monkeypatch):
    config = DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **{**FAST, "max_model_batch": 4, "fill_wait_s": 60.0})
    remover = DiffusionRemovalHandler(config).load_model()
    started = time.monotonic()
    assert len(remover([config.request(*cup)])[0]) == FAST["num_candidates"]
    assert time.monotonic() - started < 30  # one caller, and it is here: nobody can bring rows


def test_a_failed_model_batch_fails_its_callers_and_the_next_batch_runs(remover, fast_config, cup, monkeypatch):
    generate, failures = remover._generate, [RuntimeError("CUDA out of memory")]

    def once_out_of_memory(chunk):
        if failures:
            raise failures.pop()
        return generate(chunk)

    monkeypatch.setattr(remover, "_generate", once_out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        remover([fast_config.request(*cup)])
    assert len(remover([fast_config.request(*cup)])[0]) == FAST["num_candidates"]


def test_pixels_beyond_dilation_and_feather_are_the_source(remover, fast_config, cup, cat):
    for source, obj in (cup, cat):
        [candidates] = remover([fast_config.request(source, obj)])
        rgb = decode_rgb(source.jpeg)
        mask = decode_mask(obj.mask_png, source.width, source.height)
        far = ~dilate(mask, fast_config.mask_dilation_px + fast_config.feather_px + 1)
        for candidate in candidates:
            removed = decode_rgb(candidate.removed_png)
            assert np.array_equal(removed[far], rgb[far])
            assert np.abs(removed[mask].astype(int) - rgb[mask]).mean() > 5


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm-solver++"])
def test_conditioning_blending_and_guidance_change_the_output(tiny_pipeline, tiny_pipeline_dir, cup, scheduler):
    source, obj = cup
    plain = DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **{**FAST, "scheduler": scheduler})
    [grayed] = DiffusionRemover(tiny_pipeline, plain, "tiny")([plain.request(source, obj)])
    variants = {
        "unmasked": {"conditioning": "unmasked"},
        "blended": {"blend_latents": True},
        "unmasked+blended": {"conditioning": "unmasked", "blend_latents": True},
        "guided": {"guidance_scale": 3.0, "prompt": "background"},
    }
    rgb = decode_rgb(source.jpeg)
    far = ~dilate(decode_mask(obj.mask_png, source.width, source.height), 11)
    for options in variants.values():
        config = DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **{**FAST, "scheduler": scheduler, **options})
        [candidates] = DiffusionRemover(tiny_pipeline, config, "tiny")([config.request(source, obj)])
        assert {c.removed_png for c in candidates}.isdisjoint(c.removed_png for c in grayed)
        assert all(np.array_equal(decode_rgb(c.removed_png)[far], rgb[far]) for c in candidates)


def test_refuses_a_text_to_image_unet(fast_config):
    pipe = build_random_inpainting_pipeline("tiny")
    pipe.unet = diffusers.UNet2DConditionModel(**{**INPAINTING_PIPELINE_SHAPES["tiny"].unet, "in_channels": 4})
    with pytest.raises(ValueError, match="needs an inpainting UNet taking 9"):
        DiffusionRemover(pipe, fast_config, "text-to-image")


def test_single_file_checkpoint_loads_with_its_configs(tiny_pipeline_dir, tmp_path, monkeypatch):
    checkpoint = tmp_path / "remover.safetensors"
    checkpoint.write_bytes(b"weights")
    calls = []

    def from_single_file(path, **options):
        calls.append((path, options))
        return diffusers.StableDiffusionInpaintPipeline.from_pretrained(options["config"], safety_checker=None,
                                                                        requires_safety_checker=False)

    monkeypatch.setattr(diffusers.StableDiffusionInpaintPipeline, "from_single_file", from_single_file)
    config = DiffusionRemovalConfig(model=str(checkpoint), config=str(tiny_pipeline_dir), **FAST)
    model = DiffusionRemovalHandler(config).load_model()
    [(path, options)] = calls
    assert path == checkpoint and options["config"] == str(tiny_pipeline_dir)
    assert options["safety_checker"] is None and options["local_files_only"] and options["dtype"] == torch.float32
    expected = hashlib.sha256(b"weights").hexdigest()[:12]
    assert model.remover_id.startswith(f"diffusers:remover.safetensors@{expected}:")
    other = tmp_path / "remover.bin"
    other.write_bytes(b"weights")
    with pytest.raises(ValueError, match="neither a diffusers pipeline folder nor"):
        DiffusionRemovalHandler(DiffusionRemovalConfig(model=str(other), **FAST)).load_model()


def test_catalog_ids_load_and_must_be_diffusers_inpainting_models(tiny_pipeline_dir, tmp_path, monkeypatch):
    digest = tree_sha256(tiny_pipeline_dir)
    catalog = tmp_path / "site.yaml"
    catalog.write_text(
        "models:\n"
        f"- {{id: tiny-remover, task: inpainting, format: diffusers, license: MIT,\n"
        f"   files: {{pipeline: {{source: '{tiny_pipeline_dir}', sha256: {digest}}}}}}}\n"
        f"- {{id: not-a-remover, task: detection, format: diffusers, license: MIT,\n"
        f"   files: {{pipeline: {{source: '{tiny_pipeline_dir}', sha256: {digest}}}}}}}\n")
    monkeypatch.setenv(CATALOG_ENV, str(catalog))
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    model = DiffusionRemovalHandler(DiffusionRemovalConfig(model="tiny-remover", **FAST)).load_model()
    assert model.remover_id.startswith(f"diffusers:tiny-remover@{digest[:12]}:")
    with pytest.raises(ValueError, match="is a detection model in format 'diffusers'"):
        DiffusionRemovalHandler(DiffusionRemovalConfig(model="not-a-remover", **FAST)).load_model()


def test_run_inference_on_the_fn_api_runner(remover, fast_config, cup, cat):
    requests = [fast_config.request(*cup), fast_config.request(*cat)]
    direct = [c for candidates in remover(requests) for c in candidates]
    handler = DiffusionRemovalHandler(fast_config)
    with beam.Pipeline(runner="FnApiRunner") as p:
        results = p | beam.Create(requests) | RunInference(handler)
        assert_that(
            results | beam.Map(lambda r: (r.example.mask.key, r.model_id, len(r.inference))),
            equal_to([(cup[1].key, "diffusers", 2), (cat[1].key, "diffusers", 2)]),
            label="one result per object",
        )
        assert_that(results | beam.FlatMap(lambda r: _digests(r.inference)), equal_to(_digests(direct)),
                    label="same bytes")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, scheduler", [("bfloat16", "ddim"), ("float16", "ddim"), ("bfloat16", "euler"),
                                              ("bfloat16", "dpm-solver++")])
def test_half_precision_on_cuda(tiny_pipeline_dir, cup, cat, dtype, scheduler):
    # Every scheduler steps with CPU timesteps on CUDA latents, blending included.
    config = DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **{**FAST, "device": "cuda", "dtype": dtype,
                                                                     "blend_latents": True, "scheduler": scheduler})
    model = DiffusionRemovalHandler(config).load_model()
    requests = [config.request(*cup), config.request(*cat)]
    first, second = model(requests)
    assert f":dtype={dtype}:exec=fused_qkv+eager" in first[0].remover
    assert len({c.removed_png for c in first + second}) == 4
    for (source, obj), candidates in zip((cup, cat), (first, second)):
        rgb = decode_rgb(source.jpeg)
        far = ~dilate(decode_mask(obj.mask_png, source.width, source.height), 11)
        assert all(np.array_equal(decode_rgb(c.removed_png)[far], rgb[far]) for c in candidates)
    assert _digests(model(requests)[0]) == _digests(first)  # deterministic on the device too


@pytest.mark.gpu
def test_sd15_shaped_pipeline_runs_on_cuda(cup):
    config = DiffusionRemovalConfig(model="sd15-random", device="cuda", num_inference_steps=2, num_candidates=2)
    model = DiffusionRemover(build_random_inpainting_pipeline("sd15"), config, "sd15-random")
    [candidates] = model([config.request(*cup)])
    assert [decode_rgb(c.removed_png).shape for c in candidates] == [(400, 600, 3)] * 2


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["inductor", "cudagraphs", "tuned"])
def test_compiled_remover_on_cuda(tiny_pipeline_dir, cup, cat, mode, tmp_path):
    """The compiled path: same candidates as eager within bf16 rounding, padded short chunks, calls from threads."""
    options = {**FAST, "device": "cuda", "max_model_batch": 4, "guidance_scale": 3.0, "prompt": "background",
               "compile_cache_dir": str(tmp_path / "cache")}
    eager = DiffusionRemovalHandler(DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **options)).load_model()
    config = DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **options, compile=mode)
    compiled = DiffusionRemovalHandler(config).load_model()
    requests = [config.request(*cup), config.request(*cat)]
    # 4 rows, then 2 and 1 (padded to 4): one compiled shape serves them all.
    for batch in (requests, requests[:1]):
        for fast, slow in zip(compiled(batch), eager(batch)):
            assert [c.key for c in fast] == [c.key for c in slow]
            for f, s in zip(fast, slow):
                difference = np.abs(decode_rgb(f.removed_png).astype(int) - decode_rgb(s.removed_png).astype(int))
                assert difference.mean() < 2 and np.percentile(difference, 99) < 24
    first = _digests(compiled(requests)[0])
    with ThreadPoolExecutor(4) as threads:  # Beam calls a shared model from many threads
        assert all(_digests(r[0]) == first for r in threads.map(lambda _: compiled(requests), range(4)))


@pytest.mark.gpu
def test_exhaustive_conv_search_sets_cudnn_limit(tiny_pipeline_dir, cup):
    """``exhaustive`` times every cuDNN engine (limit 0); ``heuristic`` restores PyTorch's default of 10."""
    for search, limit in (("exhaustive", 0), ("heuristic", 10)):
        config = DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **{**FAST, "device": "cuda"}, conv_search=search)
        remover = DiffusionRemovalHandler(config).load_model()
        assert torch.backends.cudnn.benchmark_limit == limit
        [candidates] = remover([config.request(*cup)])
        assert len(candidates) == config.num_candidates


@pytest.mark.gpu
def test_two_cuda_graph_removers_in_one_process(tiny_pipeline_dir, cup, cat, tmp_path):
    """Inductor's CUDA-graph trees live in the thread that compiled first: every remover uses the one GPU thread."""
    options = {**FAST, "device": "cuda", "max_model_batch": 2, "compile": "cudagraphs",
               "compile_cache_dir": str(tmp_path / "cache")}
    configs = [DiffusionRemovalConfig(model=str(tiny_pipeline_dir), **{**options, "num_inference_steps": steps})
               for steps in (3, 2)]
    first, second = (DiffusionRemovalHandler(config).load_model() for config in configs)
    requests = [configs[0].request(*cup), configs[0].request(*cat)]
    with ThreadPoolExecutor(2) as threads:
        outputs = list(threads.map(lambda model: model(requests), [first, second, first, second]))
    assert _digests(outputs[0][0]) == _digests(outputs[2][0]) and _digests(outputs[1][0]) == _digests(outputs[3][0])
    assert _digests(outputs[0][0]) != _digests(outputs[1][0])  # different steps: both models really ran
