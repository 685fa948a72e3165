"""Encoding stage: records -> :class:`~transforms.io.shards.EncodedSample` for the shard writer.

Encoding is its own stage so that a record that cannot be serialised becomes a dead
letter instead of failing the whole shard it would have gone into.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import apache_beam as beam

from pipeline.stage import StageDoFn, StageOutputs, apply_stage
from transforms.io.shards import EncodedSample


class _EncodeFn(StageDoFn):
    stage = "encode"

    def __init__(self, to_sample: Callable[[Any], EncodedSample]) -> None:
        super().__init__()
        self._to_sample = to_sample

    def process_record(self, record: Any) -> Iterator[EncodedSample]:
        yield self._to_sample(record)


class EncodeSamples(beam.PTransform):
    """Apply ``to_sample`` (a picklable function) to every record."""

    def __init__(self, to_sample: Callable[[Any], EncodedSample]) -> None:
        super().__init__()
        self._to_sample = to_sample

    def expand(self, records: beam.PCollection) -> StageOutputs:
        return apply_stage(records, "Encode", _EncodeFn(self._to_sample))
