"""Review decisions: a reviewer's accept/reject of an object or of one removal candidate.

The decisions file is how QA review reaches the training data: ``counterfactory build
--decisions FILE`` lets each decision override the score thresholds, and the review app
writes this same format. It is JSON Lines, one decision per line (docs/FORMAT.md):

    {"key": "<object key or candidate key>", "decision": "accept" | "reject",
     "reviewer": "name", "time": "2026-11-21T10:00:00+00:00", "note": "optional"}

* an object key (``…_o001``): accept keeps the object whatever its scores (its best
  ranked candidate is used); reject drops it with reason ``review_rejected``;
* a candidate key (``…_o001_c02``): accept makes that candidate the object's pair;
  reject takes that candidate out of the ranking.

When a key has several decisions, the latest ``time`` wins (a later line wins a tie), so
a file can be appended to as reviewers change their minds.
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
import hashlib
import json
from typing import Any, Iterable, Mapping, Optional


class Verdict(str, enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"

    def __str__(self) -> str:
        return self.value


class DecisionsError(ValueError):
    """A decisions file that cannot be used as is; the message names the line."""


@dataclasses.dataclass(frozen=True)
class Decision:
    key: str
    verdict: Verdict
    reviewer: str
    time: str  # ISO 8601 with a UTC offset
    note: str = ""

    def __post_init__(self) -> None:
        if not self.key or "." in self.key or "/" in self.key:
            raise ValueError(f"invalid sample key {self.key!r}")
        if not self.reviewer:
            raise ValueError("a decision needs its reviewer")
        parsed = datetime.datetime.fromisoformat(self.time)
        if parsed.tzinfo is None:
            raise ValueError(f"time {self.time!r} has no UTC offset")

    @property
    def instant(self) -> datetime.datetime:
        return datetime.datetime.fromisoformat(self.time)

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "decision": self.verdict.value, "reviewer": self.reviewer, "time": self.time,
                "note": self.note}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "Decision":
        unknown = set(data) - {"key", "decision", "reviewer", "time", "note"}
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}")
        try:
            verdict = Verdict(data["decision"])
        except ValueError:
            raise ValueError(f"decision must be 'accept' or 'reject', got {data['decision']!r}") from None
        return cls(key=str(data["key"]), verdict=verdict, reviewer=str(data["reviewer"]), time=str(data["time"]),
                   note=str(data.get("note") or ""))


@dataclasses.dataclass(frozen=True)
class Decisions:
    """The effective decision per key, and the checksum of the file they came from (for lineage)."""

    by_key: Mapping[str, Decision]
    sha256: Optional[str] = None
    lines: int = 0

    def get(self, key: str) -> Optional[Decision]:
        return self.by_key.get(key)

    def __len__(self) -> int:
        return len(self.by_key)


NO_DECISIONS = Decisions(by_key={})


def latest(decisions: Iterable[Decision]) -> dict[str, Decision]:
    """The effective decision per key: latest time wins, a later one wins a tie."""
    effective: dict[str, Decision] = {}
    for decision in decisions:
        current = effective.get(decision.key)
        if current is None or decision.instant >= current.instant:
            effective[decision.key] = decision
    return effective


def parse_decisions(data: bytes, name: str = "decisions") -> Decisions:
    """Parse a decisions file; raises :class:`DecisionsError` naming the first bad line."""
    parsed = []
    lines = data.decode("utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("a line must be a JSON object")
            parsed.append(Decision.from_json(record))
        except (ValueError, KeyError) as error:
            raise DecisionsError(f"{name}:{number}: {type(error).__name__}: {error}") from None
    return Decisions(by_key=latest(parsed), sha256=hashlib.sha256(data).hexdigest(), lines=len(parsed))


def decisions_jsonl(decisions: Iterable[Decision]) -> bytes:
    """Decisions as a decisions file (what the review app exports)."""
    return b"".join(json.dumps(d.to_json(), sort_keys=True).encode("utf-8") + b"\n" for d in decisions)
