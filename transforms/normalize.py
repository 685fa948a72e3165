"""Decoding stage: raw input bytes -> normalised source images (8-bit RGB, upright, JPEG).

The decoding rules themselves (reason codes, notes, limits) are in
:mod:`transforms.io.decode`; this module makes them a Beam stage.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import apache_beam as beam

from pipeline.stage import StageDoFn, StageOutputs, apply_stage
from schemas import RawInput, Rejection, SourceImage
from transforms.io.decode import DecodeConfig, decode_source


class _NormalizeFn(StageDoFn):
    stage = "decode"

    def __init__(self, config: DecodeConfig) -> None:
        super().__init__()
        self._config = config

    def process_record(self, element: RawInput | SourceImage) -> Iterator[SourceImage | Rejection]:
        if isinstance(element, SourceImage):
            yield element  # read back from our own source shards: already normalised
            return
        decoded = decode_source(element, self._config)
        if isinstance(decoded, SourceImage) and element.boxes_normalized:
            pixels = tuple(a.scaled(decoded.width, decoded.height) for a in decoded.annotations)
            decoded = dataclasses.replace(decoded, annotations=pixels)
        yield decoded


class NormalizeImages(beam.PTransform):
    """Decode and normalise images; undecodable inputs become rejections with a reason."""

    def __init__(self, config: DecodeConfig) -> None:
        super().__init__()
        self._config = config

    def expand(self, inputs: beam.PCollection) -> StageOutputs:
        return apply_stage(inputs, "Decode", _NormalizeFn(self._config))
