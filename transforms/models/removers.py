"""Remover kinds by name, the shape of every model registry here (``DETECTOR_HANDLERS``, ``SEGMENTATION_HANDLERS``).

A literal mapping, not a decorator filled as modules happen to be imported: every kind is
known as soon as this module is, and neither import pulls in torch or diffusers.
"""
from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from transforms.models.diffusion import DiffusionRemovalHandler
from transforms.models.removal import ClassicalRemovalHandler, RemovalHandler

#: Remover kind -> handler class.
REMOVAL_HANDLERS: Mapping[str, type[RemovalHandler]] = MappingProxyType({
    handler.kind: handler for handler in (ClassicalRemovalHandler, DiffusionRemovalHandler)
})


def removal_handler(kind: str, options: Mapping[str, Any]) -> RemovalHandler:
    """A handler of ``kind`` configured from plain options (e.g. a YAML mapping)."""
    try:
        handler = REMOVAL_HANDLERS[kind]
    except KeyError:
        raise ValueError(f"unknown remover kind {kind!r} (known: {sorted(REMOVAL_HANDLERS)})") from None
    return handler(handler.config_type(**options))
