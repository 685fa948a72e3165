"""Object removal with a diffusers inpainting model (ObjectDrop-style), batched on the GPU.

One denoising loop runs for a whole Beam batch: every request's K candidates become rows
of one model batch (chunked by ``max_model_batch``), each row starting from its own noise
drawn from ``torch.Generator(seed)`` with the seed of :func:`candidate_seed`, so a
candidate is reproducible whatever batch it lands in. The loop is written here from the
pipeline's components (VAE, UNet, scheduler, text encoder) rather than calling the
diffusers pipeline once per image, which at batch 1 leaves most of a GPU idle.

What the model sees (``conditioning``): ``grayed`` fills the mask gray in the masked-image
latents, as stock inpainting checkpoints (``sd15-inpainting``) were trained; ``unmasked``
shows it the original image with the object, as ObjectDrop trains its remover on
counterfactual pairs. Only 9-channel inpainting UNets (latents + mask + masked-image
latents) are supported: a 4-channel text-to-image UNet never sees the image it edits, and
is refused when the model loads.

The background is guaranteed by a pixel-space composite, not hoped for: the decoded result
is used inside the dilated mask and a ``feather_px`` ramp around it, the untouched source
everywhere else, so pixels farther than dilation + feather from the object are bit-exact.
``blend_latents`` (Blended Latent Diffusion) additionally pins the latents outside the
mask to the noised source at every step, which keeps what the model paints near the seam
consistent with what is composited there.

Speed on a GPU (``docs/benchmarks.md`` has the figures): the UNet and VAE run in bf16
with fused QKV projections, cuDNN's autotuned convolutions and PyTorch's scaled-dot-product
attention; classifier-free guidance is one UNet batch of both halves; prompts are encoded
once. ``compile`` adds ``torch.compile`` on channels-last models (and CUDA graphs), compiled
once per worker at load time on a fixed model batch (short chunks are padded), with
inductor's artefacts kept in ``compile_cache_dir`` so that the next worker starts warm.
All GPU work runs on the remover's one GPU thread: calls from many threads queue there,
each thread's CPU work (decoding, compositing, PNG encoding) overlapping the others' GPU
work, and compiled graphs are recorded once, not once per calling thread.

Nothing here imports torch or diffusers at import time: the pipeline builder imports this
module to configure a stage on machines without them.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from apache_beam.metrics import Metrics

from schemas import ObjectMask, RemovalCandidate, SourceImage, candidate_key
from transforms.checks import check_device, is_integral, is_number
from transforms.io.decode import decode_rgb
from transforms.masks import dilate
from transforms.models.catalog import cache_root, resolve_model
from transforms.models.cpu import cpu_pool
from transforms.models.gpus import gpu_thread, on_claimed_device
from transforms.models.removal import (
    METRICS_NAMESPACE,
    RemovalHandler,
    RemovalRequest,
    candidate_seed,
    decode_mask,
    encode_png,
)

if TYPE_CHECKING:
    import torch
    from diffusers import StableDiffusionInpaintPipeline

LOG = logging.getLogger(__name__)

#: Precisions by name (``torch`` attributes); on the CPU the remover always runs float32, since
#: CPU kernels for the half ones are slow or missing.
DTYPES = ("bfloat16", "float16", "float32")
#: Scheduler name -> diffusers class, built from the checkpoint's own scheduler config. Only
#: deterministic samplers: one that adds noise at each step would need per-candidate noise
#: there too, and a candidate would then depend on its batch.
SCHEDULERS: Mapping[str, str] = MappingProxyType({
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "dpm-solver++": "DPMSolverMultistepScheduler",
})
#: Checkpoint files that ``from_single_file`` loads; they need ``config``, a folder of the pipeline's configs.
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
#: ``compile`` name -> ``torch.compile`` inductor options (``None``: eager). ``cudagraphs``
#: replays each compiled model as one CUDA graph, removing the per-kernel launch cost;
#: ``tuned`` adds 1x1 convolutions as matrix products (PyTorch's "Diffusion, fast" study:
#: the UNet's projections and shortcuts then run on cuBLAS and fuse with their neighbours)
#: and freezing (weights become constants: inductor folds what depends only on them and
#: lays convolution weights out once).
#: Coordinate-descent kernel tuning, the study's other setting, compiled for over 4 minutes
#: on an H100 and is left out. Inductor's matrix-product autotuning alone (``max_autotune_gemm``,
#: convolutions left on cuDNN) is left out too: on an H200 it had tuned only 8 product shapes after
#: 3 minutes, and cuBLAS won every large one (the small ones Triton won take ~10 us).
COMPILE_MODES: Mapping[str, Mapping[str, Any] | None] = MappingProxyType({
    "off": None,
    "inductor": MappingProxyType({}),
    "cudagraphs": MappingProxyType({"triton.cudagraphs": True}),
    "tuned": MappingProxyType({"triton.cudagraphs": True, "conv_1x1_as_mm": True, "freezing": True}),
})
#: ``conv_search`` name -> ``torch.backends.cudnn.benchmark_limit``: how many of cuDNN's
#: convolution engines its autotuner times per shape (``heuristic``: PyTorch's default, cuDNN's
#: top 10 by heuristics; ``exhaustive``: every engine cuDNN offers, once per shape at warm-up).
CONV_SEARCHES: Mapping[str, int] = MappingProxyType({"heuristic": 10, "exhaustive": 0})
#: ``attention`` name -> the ``torch.nn.attention.SDPBackend`` names scaled-dot-product attention
#: may use, first choice first (``None``: PyTorch picks). SD-1.5's head dims (40, 80, 160) are
#: awkward for flash attention, and cuDNN's attention is the candidate on Hopper; ``cudnn``
#: falls back to flash, then memory-efficient attention, for the shapes cuDNN cannot take
#: (never to the unfused math kernel).
ATTENTION_BACKENDS: Mapping[str, tuple[str, ...] | None] = MappingProxyType({
    "auto": None,
    "flash": ("FLASH_ATTENTION",),
    "cudnn": ("CUDNN_ATTENTION", "FLASH_ATTENTION", "EFFICIENT_ATTENTION"),
    "efficient": ("EFFICIENT_ATTENTION",),
    "math": ("MATH",),
})


def _unmasked(images: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    return images


def _grayed(images: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    # Images are in [-1, 1]: zero is mid-gray, what stock inpainting checkpoints were trained on.
    return images * (1 - regions)


#: Conditioning name -> the image (``[N, 3, R, R]`` in [-1, 1]) whose latents the UNet sees beside the mask.
CONDITIONINGS: Mapping[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = MappingProxyType({
    "unmasked": _unmasked,
    "grayed": _grayed,
})


def _check_int(name: str, value: object, minimum: int) -> None:
    if not is_integral(value) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_type(name: str, value: object, expected: type | tuple[type, ...], what: str) -> None:
    # A wrong type in a YAML config is a bad value like any other: one exception type for all.
    if not isinstance(value, expected):
        raise ValueError(f"{name} must be {what}, got {value!r}")  # noqa: TRY004


@dataclasses.dataclass(frozen=True)
class DiffusionRemovalConfig:
    """Which inpainting model removes objects, where, and how.

    ``model`` is a catalog id or a path (see :func:`~transforms.models.resolve_model`): a
    diffusers pipeline folder, or a single ``.safetensors``/``.ckpt`` checkpoint, which then
    needs ``config``, a local folder of the pipeline's configs (nothing is fetched from a hub).
    ``dtype`` applies on CUDA; on the CPU the remover runs float32 and logs it.

    ``guidance_scale`` defaults to 1.0, no classifier-free guidance: removal prompts are
    empty, and guidance between two equal prompts changes nothing at twice the UNet cost
    (a scale above 1 therefore needs ``prompt`` and ``negative_prompt`` to differ).

    ``mask_dilation_px`` grows the object mask (source pixels) before anything else, to
    cover its halo and shadow edge; ``feather_px`` is the width of the ramp outside it over
    which the result fades into the source. Images are resized (longest side) and padded to
    a ``resolution`` square for the model, and results mapped back to the source size.
    ``num_candidates`` and ``seed`` are the defaults :meth:`request` puts into requests;
    ``max_batch_size`` counts requests (objects) per Beam batch, ``max_model_batch`` the
    rows (object x candidate) per UNet/VAE call, which bounds GPU memory.

    GPU speed settings (they change results only within bf16 rounding): ``fuse_qkv`` applies
    on CUDA, ``channels_last`` to compiled models on CUDA (eager GroupNorm on channels-last
    tensors was slower on an H100: 5.2 against 6.3 images/s). ``compile``
    (:data:`COMPILE_MODES`) compiles the UNet and VAE at load time for batches of exactly
    ``max_model_batch`` rows, caching the compiled artefacts in ``compile_cache_dir``
    (default: ``torch-compile`` in the model cache), so size ``max_batch_size`` x
    ``num_candidates`` as a multiple of it. ``attention`` (:data:`ATTENTION_BACKENDS`) limits
    scaled-dot-product attention to the named kernels, in order of preference.
    ``conv_search`` (:data:`CONV_SEARCHES`) sets how many cuDNN convolution engines are timed per
    shape when the model first runs (a process-wide cuDNN setting, like its autotuner itself).

    ``fill_wait_s``: how long the GPU thread may wait for more rows before it runs a model
    batch that is not full, and only while some of the worker's callers are elsewhere in
    the pipeline (they come back with rows; when all of them are waiting here, none can
    come). A compiled remover pads a short batch to full size, so its empty rows cost as
    much GPU time as real ones, time the models upstream on the same GPU could have had.

    ``share_across_processes`` (on a GPU): one copy per host that the worker's processes
    share (Beam's ``large_model``), so one GPU is never oversubscribed by several copies.
    Turn it off on a host with several GPUs and one SDK process per GPU: each process then
    loads its own copy on the GPU it claims.
    """

    model: str = "sd15-inpainting"
    config: str | None = None
    device: str = "cuda"
    dtype: str = "bfloat16"
    scheduler: str = "ddim"
    num_inference_steps: int = 20
    guidance_scale: float = 1.0
    prompt: str = ""
    negative_prompt: str = ""
    conditioning: str = "grayed"
    blend_latents: bool = False
    mask_dilation_px: int = 8
    feather_px: int = 8
    resolution: int = 512
    num_candidates: int = 4
    seed: int = 0
    max_batch_size: int = 4
    max_model_batch: int = 16
    compile: str = "off"
    compile_cache_dir: str | None = None
    channels_last: bool = True
    fuse_qkv: bool = True
    attention: str = "auto"
    conv_search: str = "heuristic"
    fill_wait_s: float = 0.5
    share_across_processes: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a catalog id or a path, got {self.model!r}")
        if self.model.endswith(SINGLE_FILE_SUFFIXES) and self.config is None:
            raise ValueError(f"single-file checkpoint {self.model!r} needs config: a local folder of the "
                             "pipeline's configs (model_index.json, unet/, vae/, ...)")
        _check_type("config", self.config, (str, type(None)), "a folder path")
        check_device(self.device)
        for name, value, known in (("dtype", self.dtype, DTYPES), ("scheduler", self.scheduler, SCHEDULERS),
                                   ("conditioning", self.conditioning, CONDITIONINGS),
                                   ("compile", self.compile, COMPILE_MODES),
                                   ("attention", self.attention, ATTENTION_BACKENDS),
                                   ("conv_search", self.conv_search, CONV_SEARCHES)):
            if value not in known:
                raise ValueError(f"{name} must be one of {sorted(known)}, got {value!r}")
        _check_type("prompt", self.prompt, str, "a string")
        _check_type("negative_prompt", self.negative_prompt, str, "a string")
        guidance = self.guidance_scale
        if not is_number(guidance) or not 1.0 <= guidance < math.inf:
            raise ValueError(f"guidance_scale must be a finite number >= 1 (1 = no guidance), got {guidance!r}")
        if guidance > 1 and self.prompt == self.negative_prompt:
            raise ValueError(f"guidance_scale {guidance} with prompt == negative_prompt only doubles the cost: "
                             "set guidance_scale 1 or give the prompts different texts")
        for name in ("blend_latents", "channels_last", "fuse_qkv", "share_across_processes"):
            _check_type(name, getattr(self, name), bool, "true or false")
        _check_type("compile_cache_dir", self.compile_cache_dir, (str, type(None)), "a folder path")
        if not is_number(self.fill_wait_s) or not 0 <= self.fill_wait_s < math.inf:
            raise ValueError(f"fill_wait_s must be a finite number of seconds >= 0, got {self.fill_wait_s!r}")
        for name, minimum in (("num_inference_steps", 1), ("mask_dilation_px", 0), ("feather_px", 0),
                              ("num_candidates", 1), ("seed", 0), ("max_batch_size", 1), ("max_model_batch", 1)):
            _check_int(name, getattr(self, name), minimum)
        _check_int("resolution", self.resolution, 64)
        if self.resolution % 8:
            raise ValueError(f"resolution must be a multiple of 8 (the VAE's downsampling), got {self.resolution}")

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def compiled(self) -> bool:
        return COMPILE_MODES[self.compile] is not None

    @property
    def execution(self) -> str:
        """The speed settings in force, which change pixels within rounding: recorded beside ``dtype``."""
        settings = [name for name, on in (("channels_last", self.channels_last and self.compiled),
                                          ("fused_qkv", self.fuse_qkv)) if on and self.on_gpu]
        if self.attention != "auto":
            settings.append(f"attention-{self.attention}")
        if self.conv_search != "heuristic" and self.on_gpu:
            settings.append(f"conv-{self.conv_search}")
        return "+".join([*settings, f"compile-{self.compile}" if self.compiled else "eager"])

    @property
    def effective_dtype(self) -> str:
        """The precision the model runs in: ``dtype`` on CUDA, float32 on the CPU."""
        return self.dtype if self.on_gpu else "float32"

    def request(self, source: SourceImage, mask: ObjectMask) -> RemovalRequest:
        return RemovalRequest(source=source, mask=mask, num_candidates=self.num_candidates, seed=self.seed)

    def remover_id(self, model_name: str) -> str:
        """What a candidate's ``remover`` records: the model and every setting that changes its pixels."""
        prompts = hashlib.sha256(f"{self.prompt}\0{self.negative_prompt}".encode()).hexdigest()[:8]
        return (f"diffusers:{model_name}:scheduler={self.scheduler}:steps={self.num_inference_steps}"
                f":guidance={self.guidance_scale:g}:prompts={prompts}:conditioning={self.conditioning}"
                f":blend={int(self.blend_latents)}:dilation={self.mask_dilation_px}:feather={self.feather_px}"
                f":resolution={self.resolution}:dtype={self.effective_dtype}:exec={self.execution}")


# --------------------------------------------------------------------------- pixels <-> model square


@dataclasses.dataclass(frozen=True)
class _FittedRequest:
    """One request's pixels at source size (for the composite) and fitted into the model's square."""

    rgb: np.ndarray
    alpha: np.ndarray
    model_rgb: np.ndarray
    model_region: np.ndarray
    fitted_width: int
    fitted_height: int


def _fit(request: RemovalRequest, config: DiffusionRemovalConfig) -> _FittedRequest:
    """Decode, dilate, and scale the longest side to ``resolution``; pad bottom/right by edge replication."""
    source, side = request.source, config.resolution
    rgb = decode_rgb(source.jpeg)
    region = dilate(decode_mask(request.mask.mask_png, source.width, source.height), config.mask_dilation_px)
    scale = side / max(source.width, source.height)
    width, height = max(1, round(source.width * scale)), max(1, round(source.height * scale))
    resized = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    model_rgb = cv2.copyMakeBorder(resized, 0, side - height, 0, side - width, cv2.BORDER_REPLICATE)
    model_region = np.zeros((side, side), bool)
    # Any coverage counts: a thin part of the object must not vanish when the mask shrinks.
    model_region[:height, :width] = cv2.resize(region.astype(np.uint8) * 255, (width, height),
                                               interpolation=cv2.INTER_AREA) > 0
    return _FittedRequest(rgb, _feathered(region, config.feather_px), model_rgb, model_region, width, height)


def _feathered(region: np.ndarray, feather_px: int) -> np.ndarray:
    """Composite weight: 1 on the region, falling linearly to 0 at ``feather_px`` outside it."""
    if feather_px == 0:
        return region.astype(np.float32)
    distance = cv2.distanceTransform((~region).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return np.clip(1.0 - distance / feather_px, 0.0, 1.0)


def _composite(model_pixels: np.ndarray, fitted: _FittedRequest) -> np.ndarray:
    """The model's result mapped back to the source size, blended in by alpha; the source untouched where alpha is 0."""
    height, width = fitted.rgb.shape[:2]
    crop = model_pixels[:fitted.fitted_height, :fitted.fitted_width]
    upscaling = width > fitted.fitted_width
    result = cv2.resize(crop, (width, height), interpolation=cv2.INTER_CUBIC if upscaling else cv2.INTER_AREA)
    alpha = fitted.alpha[..., None]
    blended = np.rint(alpha * result + (1.0 - alpha) * fitted.rgb).astype(np.uint8)
    return np.where(alpha > 0, blended, fitted.rgb)


# --------------------------------------------------------------------------- the loaded remover


@dataclasses.dataclass
class _Row:
    """One candidate to generate, queued for the GPU thread; ``finished`` is set when its model batch has run."""

    request: RemovalRequest
    fitted: _FittedRequest
    candidate_index: int
    seed: int
    finished: Future[RemovalCandidate] | None = None
    model_batch_rows: int = 0
    model_batch_share_s: float = 0.0  # the model batch's time / its rows: the rows' shares add up to busy time


@dataclasses.dataclass(frozen=True)
class _LatentInputs:
    """What the UNet sees besides the noisy latents, one row per object (or per candidate, after :meth:`select`).

    ``background`` (the source's latents) and ``background_mask`` are set when blending.
    """

    unet_mask: torch.Tensor
    conditioning_latents: torch.Tensor
    background: torch.Tensor | None = None
    background_mask: torch.Tensor | None = None

    def select(self, rows: torch.Tensor) -> _LatentInputs:
        return _LatentInputs(*(None if t is None else t[rows] for t in
                               (self.unet_mask, self.conditioning_latents, self.background, self.background_mask)))


class DiffusionRemover:
    """A loaded inpainting pipeline as a remover: a batch of requests -> K candidates each.

    Takes any in-memory ``StableDiffusionInpaintPipeline`` (benchmarks build one with random
    weights), moves it to the config's device and precision, applies the speed settings,
    encodes the prompts once and, when compiling, compiles by running one batch of random
    inputs. Raises ``ValueError`` for a UNet that is not a 9-channel inpainting UNet, or a
    resolution the UNet cannot take.
    """

    def __init__(self, pipe: StableDiffusionInpaintPipeline, config: DiffusionRemovalConfig, model_name: str) -> None:
        import diffusers
        import torch

        latent_channels = pipe.vae.config.latent_channels
        in_channels = pipe.unet.config.in_channels
        if in_channels != 2 * latent_channels + 1:
            raise ValueError(
                f"{model_name}: the UNet takes {in_channels} input channels; removal needs an inpainting UNet "
                f"taking {2 * latent_channels + 1} (latents, mask, masked-image latents). Text-to-image UNets "
                f"({latent_channels} channels) never see the image they edit and are not supported")
        self._latent_scale = pipe.vae_scale_factor
        multiple = self._latent_scale * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        if config.resolution % multiple:
            raise ValueError(f"{model_name}: resolution {config.resolution} is not a multiple of {multiple}, "
                             "which this VAE and UNet need")
        if config.effective_dtype != config.dtype:
            LOG.info("%s runs on %s in float32: %s needs CUDA", model_name, config.device, config.dtype)
        self._config = config
        self._device = torch.device(config.device)
        self._dtype = getattr(torch, config.effective_dtype)
        # Cast only what is not yet in its precision: a pipeline loaded with its dtype keeps its fp32-pinned modules.
        self._pipe = pipe.to(self._device) if pipe.dtype == self._dtype else pipe.to(self._device, self._dtype)
        self._scheduler_type = getattr(diffusers, SCHEDULERS[config.scheduler])
        self.remover_id = config.remover_id(model_name)
        # Decoding, compositing and PNG encoding (OpenCV, numpy, zlib: they release the GIL) took
        # 40 % of a call on an H100 when done inline after the GPU work.
        self._cpu_pool = cpu_pool()
        self._gpu_thread = gpu_thread()
        self._pending: collections.deque[_Row] = collections.deque()
        # Guards the queue and the callers' count; the GPU thread waits on it for rows to fill a model batch.
        self._arrivals = threading.Condition()
        self._callers_inside = 0
        self._most_callers = 0  # the most calls ever inside at once: how many callers the worker has
        self._models = self._gpu_thread.submit(self._prepare_models).result()
        guided = config.guidance_scale > 1
        with torch.inference_mode():
            positive, negative = pipe.encode_prompt(config.prompt, self._device, 1, guided, config.negative_prompt)
        # Rows of a guided UNet batch are [unconditional x n, conditional x n]; see _predict_noise.
        self._prompt_embeddings = torch.cat([negative, positive]) if guided else positive
        if config.compiled:
            started = time.perf_counter()
            self._gpu_thread.submit(self._warm_up).result()
            LOG.info("%s: compiled (%s) for %d-row batches in %.1f s", model_name, config.compile,
                     config.max_model_batch, time.perf_counter() - started)

    def _prepare_models(self) -> _Models:
        """The UNet and VAE calls with the config's speed settings; runs on the GPU thread."""
        import torch

        config, unet, vae = self._config, self._pipe.unet, self._pipe.vae
        if config.on_gpu:
            torch.backends.cudnn.benchmark = True  # every model batch has one shape: tune each convolution once
            torch.backends.cudnn.benchmark_limit = CONV_SEARCHES[config.conv_search]
            if config.channels_last and config.compiled:
                unet.to(memory_format=torch.channels_last)
                vae.to(memory_format=torch.channels_last)
            if config.fuse_qkv:
                unet.fuse_qkv_projections()
                vae.fuse_qkv_projections()

        def predict(sample: torch.Tensor, timestep: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
            return unet(sample, timestep, encoder_hidden_states=embeddings, return_dict=False)[0]

        def encode(images: torch.Tensor) -> torch.Tensor:
            # The latent distribution's mode, not a sample: deterministic, so no generator to share across objects.
            return vae.encode(images).latent_dist.mode() * vae.config.scaling_factor

        def decode(latents: torch.Tensor) -> torch.Tensor:
            return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]

        options = COMPILE_MODES[config.compile]
        if options is None:
            return _with_attention(_Models(predict, encode, decode, cuda_graphs=False), config.attention)
        cache = Path(config.compile_cache_dir or cache_root() / "torch-compile").expanduser()
        cache.mkdir(parents=True, exist_ok=True)
        # Inductor reads its cache folder when it compiles: the first worker fills it, later ones load from it.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
        compiled = functools.partial(torch.compile, fullgraph=True, dynamic=False, options=dict(options))
        cuda_graphs = bool(options.get("triton.cudagraphs")) and config.on_gpu
        # The backend is chosen when a model is traced: the warm-up runs under the same context as every call.
        return _with_attention(_Models(compiled(predict), compiled(encode), compiled(decode), cuda_graphs),
                               config.attention)

    def _warm_up(self) -> None:
        """Compile every model call at its one shape by running a batch of random inputs."""
        import torch

        rows, side = self._config.max_model_batch, self._config.resolution
        generator = torch.Generator().manual_seed(0)
        images = torch.rand((rows, 3, side, side), generator=generator) * 2 - 1
        regions = (torch.rand((rows, 1, side, side), generator=generator) > 0.5)
        with torch.inference_mode():
            inputs = self._latent_inputs(images.to(self._device, self._dtype), regions.to(self._device, self._dtype))
            self._decode(self._denoise(self._noise(list(range(rows)), side // self._latent_scale), inputs))
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def __call__(self, requests: Sequence[RemovalRequest]) -> list[tuple[RemovalCandidate, ...]]:
        started = time.perf_counter()
        fitted = list(self._cpu_pool.map(functools.partial(_fit, config=self._config), requests))
        rows = [_Row(request, fit, k, candidate_seed(request.seed, request.mask.key, k))
                for request, fit in zip(requests, fitted) for k in range(request.num_candidates)]
        with self._arrivals:
            self._callers_inside += 1
            self._most_callers = max(self._most_callers, self._callers_inside)
            self._pending.extend(rows)
            self._arrivals.notify_all()
        try:
            # Once the GPU is free, this call's rows run together with those other calls queued meanwhile.
            self._gpu_thread.submit(self._drain).result()
            candidates = iter([row.finished.result() for row in rows])
        finally:
            with self._arrivals:
                self._callers_inside -= 1
        # How full the model batches this call's rows ran in were (real rows; a compiled remover pads the rest),
        # and their time: the GPU thread has no Beam metrics context, so each caller reports its rows.
        batch_rows = Metrics.distribution(METRICS_NAMESPACE, "model_batch_rows_count")
        busy = Metrics.distribution(METRICS_NAMESPACE, "model_batch_busy_micro_secs")
        for row in rows:
            batch_rows.update(row.model_batch_rows)
            busy.update(round(row.model_batch_share_s * 1e6))
        LOG.debug("removed %d objects, %d candidates in %.2f s", len(requests), len(rows), time.perf_counter() - started)
        return [tuple(next(candidates) for _ in range(request.num_candidates)) for request in requests]

    def _drain(self) -> None:
        """Run every queued row, ``max_model_batch`` at a time, whichever calls they came from; on the GPU thread.

        Beam batches within a bundle, and a worker's bundles are small: on an H100 the
        bootstrap job's remover calls held a few objects each and ran at 31 % of the
        remover's rate on full batches. Taking rows from every waiting call fills the model
        batch whenever the GPU is the bottleneck; when it is not, a short batch waits a
        little for rows (``fill_wait_s``).
        """
        while chunk := self._next_chunk():
            started = time.perf_counter()
            try:
                pixels = self._generate(chunk)
            except Exception as error:  # the chunk's callers get it; later chunks still run
                for row in chunk:
                    row.finished = Future()
                    row.finished.set_exception(error)
                continue
            share = (time.perf_counter() - started) / len(chunk)
            # Composite and PNG-encode on CPU threads while the GPU denoises the next chunk.
            for row, image in zip(chunk, pixels):
                row.model_batch_rows, row.model_batch_share_s = len(chunk), share
                row.finished = self._cpu_pool.submit(self._candidate, row, image)

    def _next_chunk(self) -> list[_Row]:
        """Up to ``max_model_batch`` queued rows, after waiting up to ``fill_wait_s`` for a full batch (see the config)."""
        batch = self._config.max_model_batch
        deadline = time.monotonic() + self._config.fill_wait_s
        with self._arrivals:
            while (0 < len(self._pending) < batch and self._callers_inside < self._most_callers
                   and (left := deadline - time.monotonic()) > 0):
                self._arrivals.wait(left)
            return [self._pending.popleft() for _ in range(min(batch, len(self._pending)))]

    def _generate(self, chunk: Sequence[_Row]) -> np.ndarray:
        """Model-size pixels of one model batch; each object is encoded once for its candidates in it."""
        import torch

        objects: dict[int, int] = {}  # a fitted object's id -> its index in the per-object inputs
        unique: list[_FittedRequest] = []
        for row in chunk:
            if id(row.fitted) not in objects:
                objects[id(row.fitted)] = len(unique)
                unique.append(row.fitted)
        with torch.inference_mode():
            per_object = self._per_object_inputs(unique)
            index = torch.tensor(self._padded([objects[id(row.fitted)] for row in chunk]), device=self._device)
            inputs = per_object.select(index)
            noise = self._noise(self._padded([row.seed for row in chunk]), inputs.unet_mask.shape[-1])
            return self._decode(self._denoise(noise, inputs))[:len(chunk)]

    def _padded(self, items: Sequence[Any]) -> list[Any]:
        """A compiled remover runs only full model batches: a short chunk repeats its last row."""
        items = list(items)
        if self._config.compiled:
            items += items[-1:] * (self._config.max_model_batch - len(items))
        return items

    def _candidate(self, row: _Row, model_pixels: np.ndarray) -> RemovalCandidate:
        object_key = row.request.mask.key
        return RemovalCandidate(
            key=candidate_key(object_key, row.candidate_index),
            object_key=object_key,
            candidate_index=row.candidate_index,
            seed=row.seed,
            remover=self.remover_id,
            removed_png=encode_png(_composite(model_pixels, row.fitted)),
        )

    def _per_object_inputs(self, fitted: Sequence[_FittedRequest]) -> _LatentInputs:
        import torch

        images = torch.from_numpy(np.stack([f.model_rgb for f in fitted])).to(self._device)
        images = images.permute(0, 3, 1, 2).to(self._dtype) / 127.5 - 1
        regions = torch.from_numpy(np.stack([f.model_region for f in fitted])[:, None]).to(self._device, self._dtype)
        return self._latent_inputs(images, regions)

    def _latent_inputs(self, images: torch.Tensor, regions: torch.Tensor) -> _LatentInputs:
        """Masks at latent size and latents of each object, shared by its candidates.

        The VAE encodes each object once, not once per candidate; the source latents are
        only encoded when blending needs them and the conditioning is not the source itself.
        """
        import torch.nn.functional as F

        config = self._config
        conditioning_images = CONDITIONINGS[config.conditioning](images, regions)
        conditioning_latents = self._encode(conditioning_images)
        # A latent cell is masked if any of its pixels is; blending leaves one more cell of margin.
        unet_mask = F.max_pool2d(regions, self._latent_scale)
        if not config.blend_latents:
            return _LatentInputs(unet_mask, conditioning_latents)
        background = conditioning_latents if conditioning_images is images else self._encode(images)
        return _LatentInputs(unet_mask, conditioning_latents, background, F.max_pool2d(unet_mask, 3, stride=1, padding=1))

    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        latents = []
        for chunk in images.split(self._config.max_model_batch):
            padded = chunk[self._padded(range(len(chunk)))]
            self._models.step()
            # Cloned: a CUDA graph's output is overwritten by its next replay, and these latents live through the loop.
            latents.append(self._models.encode(padded)[:len(chunk)].clone())
        return torch.cat(latents)

    def _noise(self, seeds: Sequence[int], latent_side: int) -> torch.Tensor:
        """Each row's starting noise from its own CPU generator: the same on every device and in every batch."""
        import torch

        shape = (self._pipe.vae.config.latent_channels, latent_side, latent_side)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(seed)) for seed in seeds]
        return torch.stack(noise).to(self._device, self._dtype)

    def _denoise(self, noise: torch.Tensor, inputs: _LatentInputs) -> torch.Tensor:
        import torch

        # A scheduler per call: multistep schedulers keep state that concurrent calls must not share.
        scheduler = self._scheduler_type.from_config(self._pipe.scheduler.config)
        # Timesteps stay on the CPU for the scheduler, whose table lookups would otherwise copy a GPU index
        # back and stall the CPU once per step; the UNet gets them from one copy made here.
        scheduler.set_timesteps(self._config.num_inference_steps, device="cpu")
        timesteps, unet_timesteps = scheduler.timesteps, scheduler.timesteps.to(self._device)
        embeddings = self._prompt_embeddings.repeat_interleave(len(noise), dim=0)
        latents = noise * scheduler.init_noise_sigma
        for step, timestep in enumerate(timesteps):
            model_input = torch.cat(
                [scheduler.scale_model_input(latents, timestep), inputs.unet_mask, inputs.conditioning_latents], dim=1)
            noise_prediction = self._predict_noise(model_input, unet_timesteps[step], embeddings)
            latents = scheduler.step(noise_prediction, timestep, latents).prev_sample
            if inputs.background is not None:
                # Blended Latent Diffusion: outside the mask, the source noised to the next step's level.
                following = timesteps[step + 1:step + 2]
                noised = scheduler.add_noise(inputs.background, noise, following) if len(following) else inputs.background
                latents = torch.where(inputs.background_mask > 0, latents, noised)
        return latents

    def _predict_noise(self, model_input: torch.Tensor, timestep: torch.Tensor,
                       embeddings: torch.Tensor) -> torch.Tensor:
        import torch

        guidance = self._config.guidance_scale
        model_input = torch.cat([model_input, model_input]) if guidance > 1 else model_input
        self._models.step()
        noise = self._models.predict(model_input, timestep, embeddings)
        if guidance == 1:
            return noise
        unconditional, conditional = noise.chunk(2)
        return unconditional + guidance * (conditional - unconditional)

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        """``[n, R, R, 3]`` uint8 pixels, quantised on the device (a quarter of the bytes to copy back)."""
        import torch

        self._models.step()
        images = self._models.decode(latents).float()
        return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _with_attention(models: _Models, attention: str) -> _Models:
    """``models`` whose calls run with only the ``attention`` backends allowed, in their order (as they are for ``auto``)."""
    names = ATTENTION_BACKENDS[attention]
    if names is None:
        return models
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [getattr(SDPBackend, name) for name in names]

    def pinned(function: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        @functools.wraps(function)
        def call(*args: torch.Tensor) -> torch.Tensor:
            with sdpa_kernel(backends, set_priority=True):
                return function(*args)

        return call

    return dataclasses.replace(models, predict=pinned(models.predict), encode=pinned(models.encode),
                               decode=pinned(models.decode))


@dataclasses.dataclass(frozen=True)
class _Models:
    """The remover's three model calls, eager or compiled."""

    predict: Callable[..., torch.Tensor]
    encode: Callable[[torch.Tensor], torch.Tensor]
    decode: Callable[[torch.Tensor], torch.Tensor]
    cuda_graphs: bool

    def step(self) -> None:
        """Before each call of a CUDA-graph model: the outputs of the previous replay are no longer read."""
        if self.cuda_graphs:
            import torch

            torch.compiler.cudagraph_mark_step_begin()


# --------------------------------------------------------------------------- handler


def _load_pipeline(path: Path, config: DiffusionRemovalConfig) -> StableDiffusionInpaintPipeline:
    """A pipeline folder, or a single checkpoint file with a folder of configs; local files only."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    options = {"safety_checker": None, "requires_safety_checker": False, "local_files_only": True,
               "dtype": getattr(torch, config.effective_dtype)}
    if path.is_dir():
        return StableDiffusionInpaintPipeline.from_pretrained(path, **options)
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise ValueError(f"{path} is neither a diffusers pipeline folder nor a {'/'.join(SINGLE_FILE_SUFFIXES)} file")
    if config.config is None:
        raise ValueError(f"single-file checkpoint {path} needs config: a local folder of the pipeline's configs")
    return StableDiffusionInpaintPipeline.from_single_file(path, config=config.config, **options)


class DiffusionRemovalHandler(RemovalHandler):
    """A diffusers inpainting pipeline: K candidates per object from one batched denoising loop.

    On a GPU the model is shared by the worker's processes (``large_model``) unless
    ``share_across_processes`` is off: one copy per host, on the GPU its loading process
    claims (:func:`~transforms.models.gpus.claim_device`), and batches from all processes
    land on it.
    """

    kind = "diffusers"
    config_type = DiffusionRemovalConfig

    @classmethod
    def model_handler_kwargs(cls, config: DiffusionRemovalConfig) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": config.max_batch_size,
                "large_model": config.on_gpu and config.share_across_processes}

    def load_model(self) -> DiffusionRemover:
        config = on_claimed_device(self.config)
        resolved = resolve_model(config.model)
        spec = resolved.spec
        if spec is not None and (spec.task, spec.format) != ("inpainting", "diffusers"):
            raise ValueError(f"{config.model!r} is a {spec.task} model in format {spec.format!r}; "
                             "the diffusers remover loads inpainting models in format 'diffusers'")
        path = Path(resolved.path)
        name = f"{spec.id if spec is not None else path.name}@{resolved.sha256[:12]}"
        started = time.perf_counter()
        remover = DiffusionRemover(_load_pipeline(path, config), config, name)
        LOG.info("loaded %s on %s (%s) in %.1f s", name, config.device, config.effective_dtype,
                 time.perf_counter() - started)
        return remover
