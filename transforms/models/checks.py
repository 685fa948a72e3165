"""Checks every model config shares: where a model runs and how its records are batched.

Configs come from YAML and flags, so a wrong type is as likely as a wrong value; each
check names the setting and what was given.
"""
from __future__ import annotations

import re

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def check_device(device: object) -> None:
    """``cpu``, ``cuda`` or ``cuda:N``."""
    if not isinstance(device, str) or not _DEVICE.match(device):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def check_batch_sizes(min_batch_size: object, max_batch_size: object) -> None:
    """Two integers, 1 <= min <= max (Beam's ``BatchElements`` bounds)."""
    for name, value in (("min_batch_size", min_batch_size), ("max_batch_size", max_batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if min_batch_size > max_batch_size:
        raise ValueError(f"min_batch_size {min_batch_size} > max_batch_size {max_batch_size}")
