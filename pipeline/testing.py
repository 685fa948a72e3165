"""Synthetic inputs and random-weight models, for tests and benchmarks (importable from both, like ``numpy.testing``).

* Candidate sets: what a finished bootstrap run writes, without running its models. Each
  object is a coloured ellipse on a smooth random background; its candidates are that
  background repainted with different noise, and its scores are drawn at random, so that
  thresholds split the set in known ways. The samples go through the real encoder and
  shard writer (schemas/sample.py, transforms/io/shards.py), so a build reads exactly
  the format bootstrap writes.
* Random-weight SD-inpainting pipelines of the real model's shape (benchmarks: the same
  compute) or a tiny one (tests: every code path in milliseconds). Nothing is fetched.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Optional

import numpy as np

from pipeline.card import CARD, dataset_card
from pipeline.finalize import LINEAGE, MANIFEST, STATS, content_digest
from schemas import Box, CandidateScores, Detection, ObjectCandidates, ObjectMask, RemovalCandidate, SourceImage
from schemas.reasons import Note
from schemas.keys import candidate_key, content_sha256, object_key, source_key
from schemas.sample import CANDIDATE_METADATA_SCHEMA
from transforms.candidates import CandidateSampleEncoder
from transforms.io.decode import encode_jpeg
from transforms.io.shards import ShardWriterConfig, manifest, write_shard
from transforms.masks import encode_mask_png
from transforms.models.removal import encode_png

if TYPE_CHECKING:
    from diffusers import StableDiffusionInpaintPipeline

MODELS = {"detector": "synthetic@sha256:" + "0" * 64, "segmenter": "synthetic@sha256:" + "1" * 64}


def object_candidates(rng: np.random.Generator, index: int, width: int, height: int,
                       num_candidates: int) -> ObjectCandidates:
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.uniform(40, 200, size=3)
    background = np.clip(base + 0.3 * xx[..., None] + 0.2 * yy[..., None] + rng.normal(0, 4, (height, width, 3)),
                         0, 255).astype(np.uint8)
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    rx, ry = rng.uniform(0.1, 0.25) * width, rng.uniform(0.1, 0.25) * height
    inside = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1.0
    src = background.copy()
    src[inside] = rng.integers(0, 256, size=3, dtype=np.uint8)
    jpeg = encode_jpeg(src, 95)
    sha = content_sha256(jpeg + index.to_bytes(8, "big"))
    source = SourceImage(key=source_key(sha), sha256=sha, uri=f"synthetic://{index:06d}.jpg", width=width,
                         height=height, jpeg=jpeg)
    ys, xs = np.nonzero(inside)
    detection = Detection("blob", 0, float(rng.uniform(0.3, 1.0)),
                          Box(float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), "synthetic")
    key = object_key(source.key, 0)
    mask = ObjectMask(key=key, source_key=source.key, object_index=0, detection=detection,
                      mask_png=encode_mask_png(inside), predicted_iou=float(rng.uniform(0.8, 1.0)), segmenter="synthetic")
    candidates = []
    for c in range(num_candidates):
        removed = src.copy()
        removed[inside] = np.clip(background[inside].astype(int) + rng.integers(-6, 7, size=(int(inside.sum()), 3)),
                                  0, 255).astype(np.uint8)
        scores = CandidateScores(
            ssim_outside=float(rng.uniform(0.9, 1.0)), change_inside=float(rng.uniform(0.0, 0.4)),
            redetect_score=float(rng.choice([0.0, rng.uniform(0.1, 0.7)])), clip_object_gone=None,
            seam=float(rng.uniform(0.2, 0.6)), quality=float(rng.uniform(0.0, 1.0)))
        candidates.append(RemovalCandidate(key=candidate_key(key, c), object_key=key, candidate_index=c, seed=c,
                                           remover="synthetic", removed_png=encode_png(removed), scores=scores))
    return ObjectCandidates(source, mask, tuple(candidates))


def write_candidate_set(folder: pathlib.Path, objects: int, *, width: int = 96, height: int = 72,
                        num_candidates: int = 4, seed: int = 0, max_count: int = 1000,
                        extra_shards: Optional[dict[str, bytes]] = None, noted: int = 0) -> pathlib.Path:
    """Write a finished candidate set of ``objects`` objects to ``folder``; returns the folder.

    ``extra_shards`` (name -> tar bytes) are listed in the manifest too, with their md5 and
    size: a test's way to slip damaged or foreign shards into an otherwise valid set. The sources
    of the last ``noted`` objects in key order carry decode notes (grayscale, re-encoded), as in
    a real run where a few inputs needed converting.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    encoder = CandidateSampleEncoder({"job": "bootstrap", "code_version": "synthetic", "dataset": folder.name}, MODELS)
    records = sorted((object_candidates(rng, i, width, height, num_candidates) for i in range(objects)),
                     key=lambda record: record.mask.key)
    notes = (Note.FROM_GRAYSCALE, Note.REENCODED)
    for i in range(len(records) - noted, len(records)):
        records[i] = dataclasses.replace(records[i], source=dataclasses.replace(records[i].source, notes=notes))
    samples = sorted((encoder(record) for record in records), key=lambda sample: sample.key)
    config = ShardWriterConfig(output_dir=str(folder), metadata_schema=CANDIDATE_METADATA_SCHEMA, max_count=max_count)
    shards = [write_shard(config, config.shard_name(0, part), samples[start:start + max_count])
              for part, start in enumerate(range(0, len(samples), max_count))]
    entries = manifest(shards, folder.name)
    for name, data in (extra_shards or {}).items():
        (folder / name).write_bytes(data)
        entries["shardlist"].append({"url": name, "md5sum": hashlib.md5(data).hexdigest(), "nsamples": 0,
                                     "filesize": len(data)})
    (folder / MANIFEST).write_text(json.dumps(entries))
    (folder / LINEAGE).write_text(json.dumps({"content_sha256": content_digest(shards), "models": MODELS}))
    funnel = [{"step": "images_in", "count": objects}, {"step": "objects_written", "count": objects},
              {"step": "candidates_written", "count": objects * num_candidates}]
    stats = {"job": "bootstrap", "funnel": funnel}
    (folder / STATS).write_text(json.dumps(stats))
    totals = {"count": len(shards), "samples": len(samples), "bytes": sum(shard.filesize for shard in shards)}
    (folder / CARD).write_bytes(dataset_card(str(folder), folder.name, config.prefix, shards,
                                             {**stats, "shards": totals}, {"job": "bootstrap", "models": MODELS}))
    return folder


@dataclasses.dataclass(frozen=True)
class InpaintingPipelineShape:
    """Constructor arguments of an SD-inpainting pipeline's models, for random-weight copies.

    ``sd15`` has the configs of ``stable-diffusion-v1-5/stable-diffusion-inpainting`` (same
    compute as the real model: benchmarks); ``tiny`` the smallest that exercises every code
    path (tests). ``resolution`` is the side the shape is meant to run at.
    """

    unet: Mapping[str, Any]
    vae: Mapping[str, Any]
    text_encoder: Mapping[str, Any]
    resolution: int


INPAINTING_PIPELINE_SHAPES: Mapping[str, InpaintingPipelineShape] = MappingProxyType({
    "sd15": InpaintingPipelineShape(
        unet={"sample_size": 64, "in_channels": 9, "out_channels": 4, "cross_attention_dim": 768,
              "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2, "attention_head_dim": 8,
              "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
              "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3},
        vae={"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 4,
             "sample_size": 512, "down_block_types": ("DownEncoderBlock2D",) * 4,
             "up_block_types": ("UpDecoderBlock2D",) * 4},
        text_encoder={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                      "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu",
                      "vocab_size": 49408},
        resolution=512,
    ),
    "tiny": InpaintingPipelineShape(
        unet={"sample_size": 32, "in_channels": 9, "out_channels": 4, "cross_attention_dim": 16,
              "block_out_channels": (16, 32), "layers_per_block": 1, "attention_head_dim": 4, "norm_num_groups": 8,
              "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
              "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")},
        vae={"block_out_channels": (8, 16), "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 8,
             "sample_size": 64, "down_block_types": ("DownEncoderBlock2D",) * 2,
             "up_block_types": ("UpDecoderBlock2D",) * 2},
        text_encoder={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2},
        resolution=64,
    ),
})


def build_random_inpainting_pipeline(shape: str, seed: int = 0) -> StableDiffusionInpaintPipeline:
    """An SD-inpainting pipeline of ``shape`` (:data:`INPAINTING_PIPELINE_SHAPES`) with random weights, on the CPU.

    No file is fetched: the tokenizer is a byte-level CLIP BPE without merges, built from
    an in-memory vocabulary (prompts tokenize per character, which is all random weights
    need), and the scheduler is DDIM with SD 1.5's noise schedule. ``save_pretrained`` the
    result to get a folder that :class:`DiffusionRemovalHandler` loads.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    dims = INPAINTING_PIPELINE_SHAPES[shape]
    characters = sorted(ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(
        [*characters, *(c + "</w>" for c in characters), "<|startoftext|>", "<|endoftext|>"])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    text_config = {"vocab_size": len(vocab), "max_position_embeddings": 77, **dims.text_encoder,
                   "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
                   "pad_token_id": vocab["<|endoftext|>"]}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**dims.unet)
        vae = AutoencoderKL(**dims.vae)
        text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionInpaintPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                          scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                          requires_safety_checker=False)
