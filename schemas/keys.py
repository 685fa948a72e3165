"""Sample keys: derived from content, so a re-run produces the same keys in any order.

A key never contains a dot (WebDataset splits a member name at its first dot) and is
the same on every worker, runner and run for the same input bytes.
"""
from __future__ import annotations

import hashlib

#: Hex digits of the source sha256 used in keys: 96 bits, collision-free at billions of images.
SOURCE_KEY_HEX_DIGITS = 24


def content_sha256(data: bytes) -> str:
    """The sha256 of an input's bytes, as lowercase hex: the identity of a source."""
    return hashlib.sha256(data).hexdigest()


def source_key(sha256_hex: str) -> str:
    """The sample key of a source image."""
    if len(sha256_hex) != 64:
        raise ValueError(f"expected a 64-digit sha256 hex digest, got {sha256_hex!r}")
    return sha256_hex[:SOURCE_KEY_HEX_DIGITS]


def object_key(source: str, object_index: int) -> str:
    """The key of object ``object_index`` (0-based) of a source image."""
    if object_index < 0:
        raise ValueError(f"object index must be >= 0, got {object_index}")
    return f"{source}_o{object_index:03d}"


def source_of(obj: str) -> str:
    """The source key of an object key (inverse of :func:`object_key`)."""
    source, separator, _ = obj.rpartition("_o")
    if not separator:
        raise ValueError(f"{obj!r} is not an object key")
    return source


def object_of(candidate: str) -> str:
    """The object key of a candidate key (inverse of :func:`candidate_key`)."""
    obj, separator, _ = candidate.rpartition("_c")
    if not separator:
        raise ValueError(f"{candidate!r} is not a candidate key")
    return obj


def derived_seed(*parts: object, bits: int = 63) -> int:
    """A ``bits``-bit seed from ``parts`` (a base seed, a kind, a key): the same on every machine and run."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> (64 - bits)


def candidate_key(obj: str, candidate_index: int) -> str:
    """The key of removal candidate ``candidate_index`` of an object."""
    if candidate_index < 0:
        raise ValueError(f"candidate index must be >= 0, got {candidate_index}")
    return f"{obj}_c{candidate_index:02d}"


def composite_key(background: str, attempt_index: int) -> str:
    """The key of composite attempt ``attempt_index`` on a background image (a source key)."""
    if attempt_index < 0:
        raise ValueError(f"attempt index must be >= 0, got {attempt_index}")
    return f"{background}_p{attempt_index:02d}"
