"""Object removal behind Beam's ``ModelHandler``: K candidate images per object.

One :class:`RemovalRequest` per object goes in; one ``PredictionResult`` whose
``inference`` is a ``tuple[RemovalCandidate, ...]`` comes out. Every remover kind (the
classical CPU default here; a diffusers inpainting handler on GPUs) is a
:class:`RemovalHandler` subclass with its ``kind``, listed in
:data:`transforms.models.removers.REMOVAL_HANDLERS`, so a job picks one by name and
nothing downstream knows which ran.

The loaded "model" of a handler is a callable from a batch of requests to one candidate
tuple per request: the classical remover works request by request, a GPU remover batches.

Candidate seeds come from :func:`candidate_seed` (base seed, object key, candidate index),
so every remover shares one reproducible seed scheme and two objects of one run do not
share noise; the classical remover's PatchMatch fills draw their random search from it.
How a candidate was made is recorded in its ``remover`` string (for the classical
remover, method and parameters: :attr:`CandidateParams.remover_id`), since
:class:`~schemas.RemovalCandidate` has no parameters field.
"""
from __future__ import annotations

import dataclasses
import io
import itertools
import logging
import threading
from typing import Any, Callable, ClassVar, Iterable, Mapping, Optional, Sequence

import cv2
import numpy as np
import patchmatch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from PIL import Image
from skimage.restoration import inpaint_biharmonic

from schemas import ObjectMask, RemovalCandidate, SourceImage, candidate_key
from schemas.keys import derived_seed
from transforms.checks import check_seed, is_integral
from transforms.io.decode import decode_rgb
from transforms.masks import decode_mask_png, dilate, encode_mask_png

LOG = logging.getLogger(__name__)

#: Metrics namespace of every removal handler.
METRICS_NAMESPACE = "counterfactory.removal"

#: A loaded remover: a batch of requests -> one candidate tuple per request, in order.
Remover = Callable[[Sequence["RemovalRequest"]], Sequence[tuple[RemovalCandidate, ...]]]


@dataclasses.dataclass(frozen=True)
class RemovalRequest:
    """Remove one object from one source image, ``num_candidates`` times from ``seed``."""

    source: SourceImage
    mask: ObjectMask
    num_candidates: int
    seed: int

    def __post_init__(self) -> None:
        if not is_integral(self.num_candidates) or self.num_candidates < 1:
            raise ValueError(f"num_candidates must be a positive integer, got {self.num_candidates!r}")
        check_seed(self.seed)
        if self.mask.source_key != self.source.key:
            raise ValueError(f"mask {self.mask.key} belongs to source {self.mask.source_key}, not {self.source.key}")

    # Read by the stage plumbing when it names a dead letter.
    @property
    def key(self) -> str:
        return self.mask.key

    @property
    def uri(self) -> str:
        return self.source.uri


def candidate_seed(base_seed: int, object_key: str, candidate_index: int) -> int:
    """The seed of one candidate, recorded in it (a diffusion remover's noise seed).

    31 bits: a non-negative int32 in every table and every generator's range.
    """
    return derived_seed(base_seed, "candidate", object_key, candidate_index, bits=31)


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless PNG of an ``HxWx3`` uint8 RGB array; no metadata, so equal pixels give equal bytes."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 array, got {rgb.dtype} {rgb.shape}")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def decode_mask(mask_png: bytes, width: int, height: int) -> np.ndarray:
    """The ``HxW`` bool mask of an :class:`ObjectMask` PNG; raises if its size or content is unusable."""
    mask = decode_mask_png(mask_png, width, height)
    if not mask.any():
        raise ValueError("mask is empty: nothing to remove")
    return mask


# ---------------------------------------------------------------------------------------
# Classical inpainting methods: rgb (HxWx3 uint8), mask (HxW bool), radius, seed -> rgb.

#: A fill: (rgb, region, radius_px, seed) -> rgb; only randomized methods read the seed.
Fill = Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]


def _opencv(flag: int) -> Fill:
    def inpaint(rgb: np.ndarray, mask: np.ndarray, radius: int, seed: int) -> np.ndarray:
        return cv2.inpaint(rgb, mask.astype(np.uint8) * 255, radius, flag)

    return inpaint


def _biharmonic(rgb: np.ndarray, mask: np.ndarray, radius: int, seed: int) -> np.ndarray:
    # No neighbourhood radius: the fill solves a PDE over each masked component.
    filled = inpaint_biharmonic(rgb, mask, channel_axis=-1)
    return np.clip(np.rint(filled * 255.0), 0, 255).astype(np.uint8)


# The native PatchMatch reads one process-wide seed when a fill starts: fills started at the
# same time from threads with different seeds gave neither seed's result (measured), so one
# PatchMatch fill runs at a time per process (processes, not threads, parallelise it).
_PATCHMATCH_LOCK = threading.Lock()


def _patchmatch(rgb: np.ndarray, mask: np.ndarray, radius: int, seed: int) -> np.ndarray:
    # Copies patches from the known pixels (Barnes et al. 2009, Content-Aware Fill): with none
    # left, the library returns black without complaint.
    if mask.all():
        raise ValueError("patchmatch needs known pixels to copy from, but the region covers the whole image")
    with _PATCHMATCH_LOCK:
        patchmatch.set_random_seed(seed)
        return patchmatch.inpaint(np.ascontiguousarray(rgb), mask, patch_size=radius)


@dataclasses.dataclass(frozen=True)
class InpaintMethod:
    """A fill, what its radius means (a neighbourhood, or PatchMatch's patch) and whether its library loaded."""

    fill: Fill
    patch_based: bool = False
    available: bool = True


#: Inpainting methods by name. Measured at 512x512 on the 2-core dev machine, radius 3/9:
#: telea and ns 10/65 ms for a 6%-of-image object, 70/510 ms for a 54% one (astronaut);
#: biharmonic 0.17 s and 3.4 s, so it is available but not a default. PatchMatch copies
#: texture where the others blur it (docs/benchmarks.md has its cost against Telea's).
INPAINT_METHODS: Mapping[str, InpaintMethod] = {
    "telea": InpaintMethod(_opencv(cv2.INPAINT_TELEA)),
    "ns": InpaintMethod(_opencv(cv2.INPAINT_NS)),
    "biharmonic": InpaintMethod(_biharmonic),
    "patchmatch": InpaintMethod(_patchmatch, patch_based=True, available=patchmatch.patchmatch_available),
}


@dataclasses.dataclass(frozen=True)
class CandidateParams:
    """How one classical candidate was made; ``remover_id`` records it in the candidate."""

    method: str
    radius_px: int
    dilation_px: int

    @property
    def remover_id(self) -> str:
        return f"classical:{self.method}:radius={self.radius_px}:dilation={self.dilation_px}"


@dataclasses.dataclass(frozen=True)
class RemovalConfig:
    """Classical removal: which methods, and the inclusive ranges their parameters are drawn from.

    ``dilation_px_range`` grows the object mask before inpainting so the object's halo
    (anti-aliased edge, a mask that hugs too tightly) is repainted too. ``radius_px_range``
    is the neighbourhood of the diffusion methods, ``patch_radius_px_range`` PatchMatch's
    patch radius (patches of (2r+1)^2 px; its cost grows with r, 0.9 s at 3 and 3.7 s at 9
    for a 512x512 image). PatchMatch is second so that two candidates already hold a blur
    and a texture copy. ``num_candidates`` and ``seed`` are the defaults that
    :meth:`request` puts into requests.
    """

    methods: tuple[str, ...] = ("telea", "patchmatch", "ns")
    radius_px_range: tuple[int, int] = (3, 9)
    patch_radius_px_range: tuple[int, int] = (3, 5)
    dilation_px_range: tuple[int, int] = (5, 15)
    num_candidates: int = 4
    seed: int = 0
    max_batch_size: int = 4

    def __post_init__(self) -> None:
        # Configs often come from YAML, which has lists and no tuples: accept any sequence.
        for name in ("methods", "radius_px_range", "patch_radius_px_range", "dilation_px_range"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods must be a non-empty list without repeats, got {self.methods!r}")
        unknown = [m for m in self.methods if m not in INPAINT_METHODS]
        if unknown:
            raise ValueError(f"unknown inpainting methods {unknown} (known: {sorted(INPAINT_METHODS)})")
        _check_range("radius_px_range", self.radius_px_range, minimum=1)
        _check_range("patch_radius_px_range", self.patch_radius_px_range, minimum=1)
        _check_range("dilation_px_range", self.dilation_px_range, minimum=0)
        for name in ("num_candidates", "max_batch_size"):
            value = getattr(self, name)
            if not is_integral(value) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_seed(self.seed)
        missing = [m for m in self.methods if not INPAINT_METHODS[m].available]
        if missing:
            raise ValueError(f"inpainting methods {missing} are unavailable: their native library did not load")
        if self.num_candidates > self.max_candidates:
            raise ValueError(f"num_candidates {self.num_candidates} > {self.max_candidates} distinct parameter sets")

    def radius_range(self, method: str) -> tuple[int, int]:
        """The range ``method``'s radius is drawn from."""
        return self.patch_radius_px_range if INPAINT_METHODS[method].patch_based else self.radius_px_range

    def _grid(self, method: str) -> list[tuple[int, int]]:
        return list(itertools.product(_values(self.radius_range(method)), _values(self.dilation_px_range)))

    @property
    def max_candidates(self) -> int:
        """How many distinct candidates the methods and parameter ranges allow (methods take turns)."""
        return len(self.methods) * min(len(self._grid(method)) for method in self.methods)

    def request(self, source: SourceImage, mask: ObjectMask) -> RemovalRequest:
        return RemovalRequest(source=source, mask=mask, num_candidates=self.num_candidates, seed=self.seed)

    def plan(self, object_key: str, seed: int, num_candidates: int) -> tuple[CandidateParams, ...]:
        """The parameters of each candidate: deterministic in (seed, object key), never repeated.

        Candidate k uses method ``k mod len(methods)``, so K >= len(methods) tries every
        method; its (radius, dilation) is the next entry of a per-method permutation of
        its parameter grid, seeded from (seed, object key). Only PatchMatch is randomized:
        it draws from the candidate's own seed (:func:`candidate_seed`).
        """
        if num_candidates > self.max_candidates:
            raise ValueError(f"{num_candidates} candidates requested, only {self.max_candidates} are distinct")
        grids = {method: self._grid(method) for method in self.methods}
        rng = np.random.default_rng(derived_seed(seed, "plan", object_key, bits=31))
        orders = {method: rng.permutation(len(grids[method])) for method in self.methods}
        plan = []
        for k in range(num_candidates):
            method = self.methods[k % len(self.methods)]
            radius, dilation = grids[method][orders[method][k // len(self.methods)]]
            plan.append(CandidateParams(method, int(radius), int(dilation)))
        return tuple(plan)


def _check_range(name: str, value: tuple, minimum: int) -> None:
    if len(value) != 2 or not all(is_integral(v) for v in value) or not minimum <= value[0] <= value[1]:
        raise ValueError(f"{name} must be two integers {minimum} <= low <= high, got {value!r}")


def _values(bounds: tuple[int, int]) -> range:
    return range(bounds[0], bounds[1] + 1)


class ClassicalRemover:
    """The loaded classical remover: inpaints each request's K planned candidates on the CPU."""

    def __init__(self, config: RemovalConfig) -> None:
        self._config = config

    def __call__(self, requests: Sequence[RemovalRequest]) -> list[tuple[RemovalCandidate, ...]]:
        return [self._remove(request) for request in requests]

    def _remove(self, request: RemovalRequest) -> tuple[RemovalCandidate, ...]:
        source, obj = request.source, request.mask
        rgb = decode_rgb(source.jpeg)
        mask = decode_mask(obj.mask_png, source.width, source.height)
        candidates = []
        for k, params in enumerate(self._config.plan(obj.key, request.seed, request.num_candidates)):
            seed = candidate_seed(request.seed, obj.key, k)
            region = dilate(mask, params.dilation_px)
            filled = INPAINT_METHODS[params.method].fill(rgb, region, params.radius_px, seed)
            # Methods only repaint the region; compositing makes that a guarantee, not a hope.
            removed = np.where(region[..., None], filled, rgb)
            candidates.append(
                RemovalCandidate(
                    key=candidate_key(obj.key, k),
                    object_key=obj.key,
                    candidate_index=k,
                    seed=seed,
                    remover=params.remover_id,
                    removed_png=encode_png(removed),
                    region_png=encode_mask_png(region),
                )
            )
        LOG.debug("removed %s: %d candidates", obj.key, len(candidates))
        return tuple(candidates)


class RemovalHandler(ModelHandler[RemovalRequest, PredictionResult, Remover]):
    """Base of every remover kind: one ``PredictionResult`` per request, its candidates as inference.

    Subclasses set ``kind`` and ``config_type``, derive batching and model sharing from
    their config in :meth:`model_handler_kwargs`, and implement :meth:`load_model`; that
    runs on the worker, so weights never travel with the graph.
    """

    kind: ClassVar[str] = ""
    config_type: ClassVar[type] = type(None)

    def __init__(self, config: Any) -> None:
        if not isinstance(config, self.config_type):
            raise TypeError(f"{type(self).__name__} needs a {self.config_type.__name__}, got {type(config).__name__}")
        super().__init__(**self.model_handler_kwargs(config))
        self.config = config

    @classmethod
    def model_handler_kwargs(cls, config: Any) -> dict[str, Any]:
        """Keyword arguments of ``ModelHandler.__init__`` (batch sizes, ``large_model``, ...)."""
        return {}

    def run_inference(
        self,
        batch: Sequence[RemovalRequest],
        model: Remover,
        inference_args: Optional[dict[str, Any]] = None,
    ) -> Iterable[PredictionResult]:
        results = model(batch)
        if len(results) != len(batch):
            raise RuntimeError(f"{self.kind} remover returned {len(results)} results for {len(batch)} requests")
        for request, candidates in zip(batch, results):
            if len(candidates) != request.num_candidates:
                raise RuntimeError(
                    f"{self.kind} remover made {len(candidates)} candidates for {request.mask.key}, "
                    f"{request.num_candidates} were requested"
                )
            yield PredictionResult(request, candidates, self.kind)

    def get_num_bytes(self, batch: Sequence[RemovalRequest]) -> int:
        return sum(len(r.source.jpeg) + len(r.mask.mask_png) for r in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


class ClassicalRemovalHandler(RemovalHandler):
    """OpenCV Telea/NS and PatchMatch (optionally scikit-image) inpainting: no weights, CPU only, the embedded default.

    Nothing to share between processes and nothing gained from large batches; small
    batches keep the cost of a batch retried element by element low.
    """

    kind = "classical"
    config_type = RemovalConfig

    @classmethod
    def model_handler_kwargs(cls, config: RemovalConfig) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": config.max_batch_size}

    def load_model(self) -> ClassicalRemover:
        return ClassicalRemover(self.config)
