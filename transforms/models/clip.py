"""The CLIP "object gone" score of removal candidates, behind a Beam ``ModelHandler``.

ObjectDrop-style filtering asks whether the removed object's *class* is still visible
where it was. For one :class:`~schemas.ObjectCandidates` record we crop the same window
around the object's detection box from the source and from every candidate, embed all
crops with an open_clip image tower and compare each with the text embedding of a prompt
naming the object's label::

    clip_object_gone = cos(crop_before, text) - cos(crop_after, text)

Cosines lie in [-1, 1], so the score lies in [-2, 2]. Positive: the crop looks less like
"a photo of a <label>" after removal (the object is gone or less recognisable); about 0:
no visible change; negative: the candidate looks *more* like the class (e.g. the remover
painted another instance). CLIP cosines of matching image/text pairs are small (about
0.2-0.35 for OpenAI-style models), so useful scores are a few hundredths to a few tenths;
thresholds should come from data and hold only for the model that ``model_id`` names.

Why a box crop rather than the whole image: CLIP summarises the whole picture, so a
small object's disappearance barely moves a whole-image embedding; cropping the same
window before and after makes the object dominate the comparison. The window is a square
around the box (padded by ``box_padding`` of the box's longer side for context), shifted
to stay inside the image and clipped where the image is smaller.

One forward pass (or a few, of ``crops_per_pass``) embeds all crops of a batch; identical
crops are embedded once, so a candidate whose window equals the source's scores exactly
0. Text embeddings are cached per prompt for the life of the loaded model. torch and
open_clip are imported only in :meth:`ClipScorerHandler.load_model`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import math
import string
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from PIL import Image

from schemas import Box, ObjectCandidates
from transforms.checks import check_batch_sizes, check_device, is_int, is_number
from transforms.io.decode import decode_rgb
from transforms.models.catalog import ResolvedModel, resolve_model
from transforms.models.gpus import on_claimed_device

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger(__name__)

#: Metrics namespace of the CLIP scorer (RunInference's own metrics land here too).
METRICS_NAMESPACE = "counterfactory.clip"

#: Seed of random weights (``model=None``), so tests and benchmarks see the same model.
RANDOM_WEIGHTS_SEED = 0

#: A CLIP with two 64-wide blocks per tower and 64-pixel input: the real open_clip code
#: path (VisionTransformer, text transformer, BPE tokenizer) at test cost. The vocabulary
#: must stay open_clip's BPE size, since the tokenizer emits ids up to 49407.
TINY_ARCHITECTURE = "counterfactory-tiny-clip"

#: Architectures this module adds to open_clip's registry, name -> open_clip model config.
EXTRA_ARCHITECTURES: Mapping[str, Mapping[str, Any]] = {
    TINY_ARCHITECTURE: {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
}

#: Precisions open_clip's ``create_model`` applies to the weights; half precisions need CUDA.
PRECISIONS = frozenset({"fp32", "fp16", "bf16"})

_CATALOG_FORMAT = "open-clip"


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class ClipScorerConfig:
    """Which CLIP scores, how crops and prompts are made, where it runs and how records batch.

    ``model`` is a catalog id (format ``open-clip``) or a path to an open_clip checkpoint
    (``.safetensors``/``.pt``); ``None`` means random weights (seeded with
    :data:`RANDOM_WEIGHTS_SEED`) for tests and compute benchmarks, and then
    ``architecture`` is required. ``architecture`` is an open_clip model name (e.g.
    ``ViT-B-32``) or one of :data:`EXTRA_ARCHITECTURES`; ``None`` takes the catalog entry's
    ``params.architecture``. It is checked against open_clip's registry on the worker,
    where open_clip is installed. ``prompt_template`` must have exactly the field
    ``{label}``. ``box_padding`` is added on each side, as a fraction of the box's longer
    side. ``precision`` is open_clip's weight precision (``fp16``/``bf16`` need CUDA).
    Batch sizes count records, each with its source and all its candidates;
    ``crops_per_pass`` caps one forward pass of the image tower.
    """

    model: str | None = "open-clip-vit-b-32-laion2b"
    architecture: str | None = None
    prompt_template: str = "a photo of a {label}"
    box_padding: float = 0.1
    device: str = "cpu"
    precision: str = "fp32"
    min_batch_size: int = 1
    max_batch_size: int = 8
    crops_per_pass: int = 64

    def __post_init__(self) -> None:
        for name in ("model", "architecture"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
        if self.model is None and self.architecture is None:
            raise ValueError("random weights (model=None) need an architecture")
        _check_template(self.prompt_template)
        if not is_number(self.box_padding) or not math.isfinite(self.box_padding) or self.box_padding < 0:
            raise ValueError(f"box_padding must be a finite number >= 0, got {self.box_padding!r}")
        check_device(self.device)
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        if self.precision != "fp32" and not self.on_gpu:
            raise ValueError(f"precision {self.precision} needs a CUDA device, got {self.device!r}")
        check_batch_sizes(self.min_batch_size, self.max_batch_size)
        if not is_int(self.crops_per_pass) or self.crops_per_pass < 1:
            raise ValueError(f"crops_per_pass must be an integer >= 1, got {self.crops_per_pass!r}")

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")

    def prompt(self, label: str) -> str:
        """The text the crops of an object of class ``label`` are compared with."""
        return self.prompt_template.format(label=label)


def _check_template(template: object) -> None:
    if not isinstance(template, str) or "{label}" not in template:
        raise ValueError(f"prompt_template must be a string with the field {{label}}, got {template!r}")
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as e:
        raise ValueError(f"prompt_template {template!r} is not a valid format string: {e}") from None
    if fields != ["label"]:
        raise ValueError(f"prompt_template must have the field {{label}} once and no other, got {template!r}")


# --------------------------------------------------------------------------- crops


def crop_window(box: Box, width: int, height: int, padding: float) -> tuple[int, int, int, int]:
    """The pixel window ``(x0, y0, x1, y1)`` cropped around ``box`` in a ``width`` x ``height`` image.

    A square of side ``(1 + 2 * padding)`` times the clipped box's longer side, centred on
    the box, shifted to lie inside the image and clipped where the image is smaller, so
    CLIP's centre crop loses little and every crop of one object covers the same pixels.
    """
    clipped = box.clipped(width, height)
    side = max(clipped.width, clipped.height) * (1.0 + 2.0 * padding)

    def span(centre: float, size: int) -> tuple[int, int]:
        start = min(max(centre - side / 2.0, 0.0), max(size - side, 0.0))
        return math.floor(start), min(size, math.ceil(start + side))

    x0, x1 = span((clipped.x0 + clipped.x1) / 2.0, width)
    y0, y1 = span((clipped.y0 + clipped.y1) / 2.0, height)
    return x0, y0, x1, y1


def _decode_png_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data), formats=("PNG",)) as img:
        return np.array(img.convert("RGB"))


class _CropTable:
    """The distinct crops of a batch: equal pixels get one index, so they are embedded once."""

    def __init__(self) -> None:
        self.crops: list[np.ndarray] = []
        self._index: dict[bytes, int] = {}

    def add(self, crop: np.ndarray) -> int:
        digest = hashlib.blake2b(repr(crop.shape).encode() + crop.tobytes(), digest_size=16).digest()
        index = self._index.get(digest)
        if index is None:
            index = self._index[digest] = len(self.crops)
            self.crops.append(np.ascontiguousarray(crop))
        return index


# --------------------------------------------------------------------------- the loaded model


class OpenClipEmbedder:
    """An open_clip model behind a numpy-only interface, so a proxy shared across processes
    (Beam's ``share_model_across_processes``) works exactly like a local one.

    Embeddings come back L2-normalised as float32, whatever the weights' precision.
    """

    def __init__(self, model: Any, tokenizer: Any, preprocess: Any, name: str, device: str, input_dtype: Any,
                 crops_per_pass: int) -> None:
        self._model = model
        self._tokenizer = tokenizer
        self._preprocess = preprocess
        self._name = name
        self._device = device
        self._input_dtype = input_dtype
        self._crops_per_pass = crops_per_pass
        self._text_cache: dict[str, np.ndarray] = {}

    def name(self) -> str:
        return self._name

    def embed_images(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """``[N, D]`` embeddings of ``HxWx3`` uint8 crops, ``crops_per_pass`` per forward pass."""
        import torch

        pixels = torch.stack([self._preprocess(Image.fromarray(crop)) for crop in crops])
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self._crops_per_pass):
                chunk = pixels[start:start + self._crops_per_pass].to(self._device, dtype=self._input_dtype)
                chunks.append(_normalised(self._model.encode_image(chunk)))
        return np.concatenate(chunks)

    def embed_prompts(self, prompts: Sequence[str]) -> np.ndarray:
        """``[P, D]`` embeddings of ``prompts``; only prompts not seen before reach the text tower."""
        import torch

        missing = sorted(set(prompts) - set(self._text_cache))
        if missing:
            with torch.inference_mode():
                tokens = self._tokenizer(missing).to(self._device)
                self._text_cache.update(zip(missing, _normalised(self._model.encode_text(tokens))))
            LOG.debug("%s: encoded %d new prompts, %d cached", self._name, len(missing), len(self._text_cache))
        return np.stack([self._text_cache[prompt] for prompt in prompts])


def _normalised(features: torch.Tensor) -> np.ndarray:
    """Unit-length float32 rows: cosines need no further normalisation, at any weight precision."""
    import torch

    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().numpy()


def register_extra_architectures() -> None:
    """Add :data:`EXTRA_ARCHITECTURES` to open_clip's registry (idempotent).

    open_clip 3.3 registers configs only from JSON files (``add_model_config``), so each is
    written to a temporary folder for the registration; the registry keeps the parsed config.
    """
    import open_clip

    missing = {name: cfg for name, cfg in EXTRA_ARCHITECTURES.items() if name not in open_clip.list_models()}
    if not missing:
        return
    with tempfile.TemporaryDirectory(prefix="counterfactory-clip-") as folder:
        for name, cfg in missing.items():
            path = Path(folder) / f"{name}.json"
            path.write_text(json.dumps(cfg), encoding="utf-8")
            open_clip.add_model_config(path)


# --------------------------------------------------------------------------- the handler


class ClipScorerHandler(ModelHandler[ObjectCandidates, PredictionResult, OpenClipEmbedder]):
    """Sets ``clip_object_gone`` on every candidate: one ``PredictionResult`` per record.

    ``example`` is the record as it came, ``inference`` its copy with the scores set
    (:meth:`~schemas.ObjectCandidates.with_scores`), ``model_id`` the model's
    ``<ref>@<sha256 prefix>`` (``open-clip-<architecture>@random`` for random weights).
    """

    def __init__(self, config: ClipScorerConfig) -> None:
        super().__init__()
        self._config = config

    def load_model(self) -> OpenClipEmbedder:
        import open_clip
        import torch
        from open_clip.transform import PreprocessCfg, image_transform_v2

        config = on_claimed_device(self._config)
        checkpoint, architecture, name, options = _weights(config)
        register_extra_architectures()
        if architecture not in open_clip.list_models():
            raise ValueError(f"{architecture!r} is not an open_clip architecture; known: {open_clip.list_models()}")
        started = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = open_clip.create_model(architecture, pretrained=checkpoint, precision=config.precision,
                                           device=config.device, **options)
        model.eval()
        preprocess = image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(model)), is_train=False)
        LOG.info("loaded %s (%s, %s) on %s in %.1f s", name, architecture, config.precision, config.device,
                 time.perf_counter() - started)
        return OpenClipEmbedder(model, open_clip.get_tokenizer(architecture), preprocess, name, config.device,
                                open_clip.get_input_dtype(config.precision), config.crops_per_pass)

    def run_inference(self, batch: Sequence[ObjectCandidates], model: OpenClipEmbedder,
                      inference_args: dict[str, Any] | None = None) -> Iterable[PredictionResult]:
        table = _CropTable()
        plans = [self._crop(record, table) for record in batch]
        started = time.perf_counter()
        images = model.embed_images(table.crops).astype(np.float64)
        prompts = [self._config.prompt(record.mask.detection.label) for record in batch]
        texts = dict(zip(prompts, model.embed_prompts(prompts).astype(np.float64)))
        LOG.debug("%d records: %d distinct crops embedded in %.2f s", len(batch), len(table.crops),
                  time.perf_counter() - started)
        name = model.name()
        unchanged = Metrics.counter(METRICS_NAMESPACE, "candidates_unchanged_in_window")
        results = []
        for record, prompt, (before, afters) in zip(batch, prompts, plans):
            similarity = images @ texts[prompt]
            unchanged.inc(sum(after == before for after in afters))
            scores = [float(similarity[before] - similarity[after]) for after in afters]
            results.append(PredictionResult(example=record, inference=record.with_scores(clip_object_gone=scores),
                                            model_id=name))
        return results

    def _crop(self, record: ObjectCandidates, table: _CropTable) -> tuple[int, list[int]]:
        """Adds the record's source and candidate crops to ``table``; returns their indices."""
        source = record.source
        x0, y0, x1, y1 = crop_window(record.mask.detection.box, source.width, source.height,
                                     self._config.box_padding)
        before = table.add(decode_rgb(source.jpeg)[y0:y1, x0:x1])
        afters = []
        for candidate in record.candidates:
            removed = _decode_png_rgb(candidate.removed_png)
            if removed.shape[:2] != (source.height, source.width):
                raise ValueError(f"candidate {candidate.key} is {removed.shape[1]}x{removed.shape[0]}, "
                                 f"its source {source.width}x{source.height}")
            afters.append(table.add(removed[y0:y1, x0:x1]))
        return before, afters

    def get_num_bytes(self, batch: Sequence[ObjectCandidates]) -> int:
        return sum(len(r.source.jpeg) + sum(len(c.removed_png) for c in r.candidates) for r in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": self._config.min_batch_size, "max_batch_size": self._config.max_batch_size}

    def share_model_across_processes(self) -> bool:
        # One copy of the weights per GPU rather than per worker process.
        return self._config.on_gpu


def _weights(config: ClipScorerConfig) -> tuple[str | None, str, str, dict[str, Any]]:
    """(checkpoint path or None, architecture, model name, extra ``create_model`` options)."""
    if config.model is None:
        return None, config.architecture, f"open-clip-{config.architecture}@random", {}
    resolved = resolve_model(config.model)
    name = f"{resolved.ref}@{resolved.sha256[:12]}"
    if resolved.spec is None:
        if config.architecture is None:
            raise ValueError(f"{config.model!r} is a path, not a catalog model: set the CLIP scorer's architecture")
        return resolved.path, config.architecture, name, {}
    if resolved.spec.format != _CATALOG_FORMAT:
        raise ValueError(f"{config.model!r} has format {resolved.spec.format}; the CLIP scorer loads "
                         f"{_CATALOG_FORMAT} models")
    architecture = config.architecture or resolved.spec.param("architecture", None)
    if architecture is None:
        raise ValueError(f"{config.model!r}: the catalog entry has no params.architecture; set the CLIP "
                         f"scorer's architecture")
    return resolved.path, architecture, name, _tag_options(resolved, architecture)


def _tag_options(resolved: ResolvedModel, architecture: str) -> dict[str, Any]:
    """What the catalog's ``pretrained_tag`` says about the weights: open_clip's preprocessing
    (mean, std, resize) and QuickGELU for them, which a file path alone cannot tell it."""
    import open_clip

    tag = resolved.spec.param("pretrained_tag", None)
    if tag is None:
        return {}
    tag_cfg = open_clip.get_pretrained_cfg(architecture, tag)
    if not tag_cfg:
        raise ValueError(f"{resolved.ref!r}: open_clip knows no pretrained tag {tag!r} for {architecture!r}")
    preprocess = {key: tag_cfg[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag_cfg}
    return {"force_quick_gelu": bool(tag_cfg.get("quick_gelu", False)), "force_preprocess_cfg": preprocess}


__all__ = [
    "EXTRA_ARCHITECTURES",
    "METRICS_NAMESPACE",
    "PRECISIONS",
    "RANDOM_WEIGHTS_SEED",
    "TINY_ARCHITECTURE",
    "ClipScorerConfig",
    "ClipScorerHandler",
    "OpenClipEmbedder",
    "crop_window",
    "register_extra_architectures",
]
