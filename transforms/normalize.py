"""Decoding stage: raw input bytes -> normalised source images (8-bit RGB, upright, JPEG).

The decoding rules themselves (reason codes, notes, limits) are in
:mod:`transforms.io.decode`; this module makes them a Beam stage.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Iterator

from schemas import RawInput, Rejection, SourceImage
from transforms.io.decode import DecodeConfig, decode_source
from transforms.ledger import record_uri
from transforms.stage import RecordFunction, Stage


def _normalize(config: DecodeConfig, element: RawInput | SourceImage) -> Iterator[SourceImage | Rejection]:
    if isinstance(element, SourceImage):
        yield element  # read back from our own source shards: already normalised
        return
    decoded = decode_source(element, config)
    if isinstance(decoded, SourceImage) and element.boxes_normalized:
        pixels = tuple(a.scaled(decoded.width, decoded.height) for a in decoded.annotations)
        decoded = dataclasses.replace(decoded, annotations=pixels)
    yield decoded


class NormalizeImages(Stage):
    """Decode and normalise images; undecodable inputs become rejections with a reason.

    Records are named by uri here: two copies of one image share a key until deduplication.
    """

    stage = "decode"
    identity = staticmethod(record_uri)

    def __init__(self, config: DecodeConfig) -> None:
        super().__init__()
        self._config = config

    def record_fn(self) -> RecordFunction:
        return functools.partial(_normalize, self._config)
