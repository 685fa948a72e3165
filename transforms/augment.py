"""Seeded, recorded albumentations: the reference augmentations of Paint-by-Example and MimicBrush pairs.

``A.Compose(seed=...)`` gives every transform the same seed, so their first coin flips
agree (blur, elastic and colour jitter would fire all together or not at all). Here each
transform draws from its own stream of ``(seed, stream, index)``: independent draws, and
changing one transform's settings leaves the others' draws as they were. The pipeline is
built per call by its config, so threads share no state. Same seed, same pixels, in any
process (with the same albumentations and OpenCV). The record keeps every applied
transform's sampled parameters, so a sample says exactly how its reference was made.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

# albumentations asks PyPI for a newer version on import, on every worker: never from a pipeline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

#: Hue shift limit of colour jitter: the library's default (±0.5) turns a red object blue.
HUE_SHIFT = 0.05
#: Larger arrays in a transform's parameters (elastic displacement maps) are named, not stored.
_MAX_RECORDED_ARRAY = 16
#: What :func:`_plain` gives for a value a record leaves out.
_OMITTED = object()


def _plain(value: Any) -> Any:
    """``value`` as JSON types, or :data:`_OMITTED` where it is too large or has no plain form."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist() if value.size <= _MAX_RECORDED_ARRAY else _OMITTED
    if isinstance(value, (list, tuple)):
        items = [_plain(item) for item in value]
        return _OMITTED if any(item is _OMITTED for item in items) else items
    if isinstance(value, dict):  # Affine's scale: {"x": ..., "y": ...}
        items = {str(key): _plain(item) for key, item in value.items()}
        return _OMITTED if any(item is _OMITTED for item in items.values()) else items
    return _OMITTED


def _applied_record(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """One applied transform: its sampled params, and the names of those left out."""
    plain = {str(key): _plain(value) for key, value in params.items()}
    record: dict[str, Any] = {"name": name, "params": {k: v for k, v in plain.items() if v is not _OMITTED}}
    omitted = sorted(k for k, v in plain.items() if v is _OMITTED)
    if omitted:
        record["omitted"] = omitted
    return record


def augment(pipeline: A.Compose, image: np.ndarray, seed: int, stream: int) -> tuple[np.ndarray, dict[str, Any]]:
    """``image`` through ``pipeline`` (built with ``save_applied_params=True``), each transform seeded
    from ``(seed, stream, index)``; returns the image and ``{"seed", "albumentations", "applied"}``."""
    for index, transform in enumerate(pipeline.transforms):
        transform_seed = np.random.SeedSequence([int(seed), stream, index]).generate_state(1)[0]
        transform.set_random_seed(int(transform_seed))
    result = pipeline(image=image)
    record = {
        "seed": int(seed),
        "albumentations": A.__version__,
        "applied": [_applied_record(name, params) for name, params in result["applied_transforms"]],
    }
    return result["image"], record
