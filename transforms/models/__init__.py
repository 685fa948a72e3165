"""Model handlers and the model catalog.

The catalog (:mod:`transforms.models.catalog`) maps model ids to pinned, verifiable files
and resolves an id or a path to local files on a worker; :mod:`transforms.models.sources`
knows how to fetch each kind of source. Importing this package loads neither Beam, torch
nor onnxruntime.
"""
from transforms.models.catalog import (
    ChecksumError,
    FileSpec,
    ModelError,
    ModelNotFound,
    ModelSpec,
    ResolvedModel,
    cache_root,
    fetch_model,
    is_cached,
    load_catalog,
    resolve_model,
)

__all__ = [
    "ChecksumError",
    "FileSpec",
    "ModelError",
    "ModelNotFound",
    "ModelSpec",
    "ResolvedModel",
    "cache_root",
    "fetch_model",
    "is_cached",
    "load_catalog",
    "resolve_model",
]
