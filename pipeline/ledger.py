"""The run ledger: inputs = written + rejected (by reason) + dead-lettered.

Counts are computed as data (PCollections), not read back from Beam metrics, because
metrics are best-effort on some runners and the ledger must be exact. Inputs are counted
where readers first see them and ``written`` from what the shard writer actually put in
tars, so a stage that silently drops a record makes the ledger fail to close.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import apache_beam as beam

from schemas import Outcome

#: Tally counter names; ``(counter, label) -> n`` pairs are what the pipeline combines.
INPUTS = "inputs"
WRITTEN = Outcome.WRITTEN.value
REJECTED = Outcome.REJECTED.value
DEAD_LETTER = Outcome.DEAD_LETTER.value


class LedgerError(RuntimeError):
    """A run's ledger did not close: some record was lost or counted twice."""


def count_as(pcoll: beam.PCollection, label: str, counter: str, key_fn=lambda _: "") -> beam.PCollection:
    """``((counter, key_fn(element)), 1)`` per element, for :class:`Tally`."""
    return pcoll | label >> beam.Map(lambda element: ((counter, key_fn(element)), 1))


def count_rejections(pcoll: beam.PCollection, label: str, counter: str = REJECTED) -> beam.PCollection:
    return count_as(pcoll, label, counter, lambda rejection: rejection.reason.value)


def count_dead_letters(pcoll: beam.PCollection, label: str) -> beam.PCollection:
    return count_as(pcoll, label, DEAD_LETTER, lambda dead: dead.stage)


class Tally(beam.PTransform):
    """Sum ``((counter, label), n)`` pairs into one dict (a singleton PCollection)."""

    def expand(self, counts: beam.PCollection) -> beam.PCollection:
        return (
            counts
            | "Sum" >> beam.CombinePerKey(sum)
            | "ToDict" >> beam.combiners.ToDict()
        )


@dataclasses.dataclass(frozen=True)
class Ledger:
    """The closed (or not) account of one run, as stored in stats.json."""

    inputs: int
    written: int
    rejected: Mapping[str, int]
    dead_letters: Mapping[str, int]

    @classmethod
    def from_tally(cls, tally: Mapping[tuple[str, str], int], prefix: str = "") -> "Ledger":
        """The ledger of counters ``{prefix}inputs``, ``{prefix}written``, ... of a tally."""
        def by_label(counter: str) -> dict[str, int]:
            return dict(sorted((label, n) for (name, label), n in tally.items() if name == prefix + counter))

        return cls(
            inputs=sum(by_label(INPUTS).values()),
            written=sum(by_label(WRITTEN).values()),
            rejected=by_label(REJECTED),
            dead_letters=by_label(DEAD_LETTER),
        )

    @property
    def accounted(self) -> int:
        return self.written + sum(self.rejected.values()) + sum(self.dead_letters.values())

    @property
    def closed(self) -> bool:
        return self.inputs == self.accounted

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "written": self.written,
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "dead_letters": dict(self.dead_letters),
            "dead_letters_total": sum(self.dead_letters.values()),
            "closed": self.closed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Ledger":
        return cls(data["inputs"], data["written"], dict(data["rejected"]), dict(data["dead_letters"]))

    def check(self, name: str = "ledger") -> None:
        if not self.closed:
            raise LedgerError(
                f"{name} does not close: {self.inputs} inputs but {self.written} written + "
                f"{sum(self.rejected.values())} rejected + {sum(self.dead_letters.values())} dead letters "
                f"= {self.accounted}"
            )
