"""Encoding stage: records -> :class:`~transforms.io.shards.EncodedSample` for the shard writer.

Encoding is its own stage so that a record that cannot be serialised becomes a dead
letter instead of failing the whole shard it would have gone into.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Iterator

from transforms.io.shards import EncodedSample
from transforms.ledger import MAIN_LEDGER
from transforms.stage import RecordFunction, Stage


def _encode(to_sample: Callable[[Any], EncodedSample], record: Any) -> Iterator[EncodedSample]:
    yield to_sample(record)


class EncodeSamples(Stage):
    """Apply ``to_sample`` (a picklable function) to every record of ``unit`` 's ledger."""

    stage = "encode"

    def __init__(self, to_sample: Callable[[Any], EncodedSample], unit: str = MAIN_LEDGER) -> None:
        super().__init__()
        self._to_sample = to_sample
        self.unit = unit

    def record_fn(self) -> RecordFunction:
        return functools.partial(_encode, self._to_sample)
