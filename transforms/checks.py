"""Checks the stage configs share: value types, where a model runs, how records are batched.

Configs come from YAML and flags, so a wrong type is as likely as a wrong value. ``bool``
is an ``int`` to Python but never a number to a config: ``max_objects: true`` is a mistake.
"""
from __future__ import annotations

import re

import numpy as np

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def is_int(value: object) -> bool:
    """A Python integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_integral(value: object) -> bool:
    """A Python or numpy integer (not a bool), for configs also built from computed values."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A Python int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_unit(value: object) -> bool:
    """A number in [0, 1]."""
    return is_number(value) and 0.0 <= value <= 1.0


def check_device(device: object) -> None:
    """``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def check_batch_sizes(min_batch_size: object, max_batch_size: object) -> None:
    """Two integers, 1 <= min <= max (Beam's ``BatchElements`` bounds)."""
    for name, value in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if min_batch_size > max_batch_size:
        raise ValueError(f"min_batch_size {min_batch_size} > max_batch_size {max_batch_size}")


def check_units(config: object, names: tuple[str, ...]) -> None:
    """Each named attribute of ``config`` is a number in [0, 1]."""
    for name in names:
        if not is_unit(getattr(config, name)):
            raise ValueError(f"{name} must be a number in [0, 1], got {getattr(config, name)!r}")


def check_seed(seed: object, name: str = "seed") -> None:
    """A non-negative integer (numpy integers too: seeds are often derived)."""
    if not (is_integral(seed) and seed >= 0):
        raise ValueError(f"{name} must be a non-negative integer, got {seed!r}")


def check_jpeg_quality(quality: object, minimum: int = 1) -> None:
    """An integer in [minimum, 100]; outputs meant for training use at least 50."""
    if not (is_integral(quality) and minimum <= quality <= 100):
        raise ValueError(f"jpeg_quality must be an integer in [{minimum}, 100], got {quality!r}")


def check_rgb(rgb: object, name: str = "image") -> None:
    """An ``HxWx3`` uint8 RGB array."""
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        described = f"{rgb.dtype} {rgb.shape}" if isinstance(rgb, np.ndarray) else type(rgb).__name__
        raise ValueError(f"{name} must be an RGB uint8 HxWx3 array, got {described}")
