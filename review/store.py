"""Review decisions in SQLite: one row per decision, safe with several reviewers and a killed server.

The database is in WAL mode with ``synchronous=FULL``: a decision is acknowledged only
after its transaction committed, and a committed one survives ``kill -9`` (and power
loss). Each request thread has its own connection; concurrent writers wait on SQLite's
lock (``busy_timeout``) instead of failing, so two reviewers deciding the same sample
at the same moment both get their row.

Queues are SQL over the dataset index (attached read-only as ``idx``), each ordered by an
indexed column and continued from a position (keyset paging), so no page scans the set.
Undo marks a row undone (it stays, for the audit trail); skips are rows too, so a skipped
sample leaves that reviewer's queue, but they are no decisions and are never exported.
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
import os
import sqlite3
import threading
import urllib.parse
from collections import Counter, defaultdict
from typing import Any, Iterable, Mapping, Optional

from review.stats import Agreement, Proportion, agreement, wilson
from schemas.decisions import Decision, Verdict
from schemas.keys import candidate_key
from schemas.sample import SCORE_NAMES


class Action(str, enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"
    PICK = "pick"
    SKIP = "skip"

    def __str__(self) -> str:
        return self.value


#: Why a reviewer rejects an object: code -> (key, words). The codes are what exports write as the note.
REJECT_REASONS: Mapping[str, tuple[str, str]] = {
    "object_still_there": ("o", "object still there"),
    "smear_or_artefact": ("s", "smear or artefact"),
    "shadow_or_reflection": ("h", "shadow or reflection left"),
    "wrong_mask": ("w", "wrong mask"),
    "wrong_label": ("l", "wrong label"),
    "other": ("x", "other"),
}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset TEXT NOT NULL,
    sample_key TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('accept', 'reject', 'pick', 'skip')),
    candidate INTEGER,
    reason TEXT,
    reviewer TEXT NOT NULL,
    queue TEXT NOT NULL,
    time TEXT NOT NULL,
    undone_at TEXT,
    CHECK ((action = 'pick') = (candidate IS NOT NULL)),
    CHECK ((action = 'reject') = (reason IS NOT NULL))
);
CREATE INDEX IF NOT EXISTS decisions_by_sample ON decisions(dataset, sample_key);
CREATE INDEX IF NOT EXISTS decisions_by_reviewer ON decisions(dataset, reviewer, id);
"""


def _uri(path: str, mode: str = "rwc") -> str:
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={mode}"


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


@dataclasses.dataclass(frozen=True)
class Queue:
    """Which samples, in which order: ``near`` (closest to a threshold first), ``audit`` (a uniform random sample
    of what the thresholds keep), or ``near`` restricted to a ``label``, a threshold ``reason`` or a score range."""

    name: str = "near"
    label: Optional[str] = None
    reason: Optional[str] = None
    score: Optional[str] = None
    low: Optional[float] = None
    high: Optional[float] = None

    NAMES = ("near", "audit", "label", "reason", "score")

    def __post_init__(self) -> None:
        if self.name not in self.NAMES:
            raise ValueError(f"unknown queue {self.name!r}; known: {', '.join(self.NAMES)}")
        needs = {"label": self.label is not None, "reason": self.reason is not None, "score": self.score is not None}
        for name, given in needs.items():
            if given != (self.name == name):
                raise ValueError(f"queue {self.name!r}: {name} is {'missing' if not given else 'not used here'}")
        if self.score is not None:
            if self.score not in SCORE_NAMES:
                raise ValueError(f"unknown score {self.score!r}; known: {', '.join(SCORE_NAMES)}")
            if self.low is None and self.high is None:
                raise ValueError("a score queue needs low, high or both")
        elif self.low is not None or self.high is not None:
            raise ValueError("low and high belong to a score queue")

    @property
    def shared(self) -> bool:
        """The audit queue is the same for every reviewer (their overlap gives kappa); others split the work."""
        return self.name == "audit"

    @property
    def order(self) -> tuple[str, str]:
        return ("s.audit", "s.key") if self.name == "audit" else ("s.closeness", "s.key")

    def where(self) -> tuple[str, list[Any]]:
        if self.name == "audit":
            return "s.passed = 1", []
        if self.name == "label":
            return "s.label = ?", [self.label]
        if self.name == "reason":
            return "s.reason = ?", [self.reason]
        if self.name == "score":
            clauses, values = [], []
            if self.low is not None:
                clauses.append(f"s.{self.score} >= ?")
                values.append(self.low)
            if self.high is not None:
                clauses.append(f"s.{self.score} <= ?")
                values.append(self.high)
            return " AND ".join(clauses), values
        return "1", []

    def describe(self) -> str:
        if self.name == "score":
            return f"{self.score} in [{'' if self.low is None else self.low}, {'' if self.high is None else self.high}]"
        return {"near": "near-threshold first", "audit": "random audit sample"}.get(
            self.name, f"{self.name} = {self.label if self.name == 'label' else self.reason}")


@dataclasses.dataclass(frozen=True)
class Row:
    id: int
    dataset: str
    sample_key: str
    action: Action
    candidate: Optional[int]
    reason: Optional[str]
    reviewer: str
    queue: str
    time: str


@dataclasses.dataclass(frozen=True)
class Dashboard:
    """What the dashboard shows of one dataset's decisions."""

    decided_samples: int
    actions: Mapping[str, int]
    reviewers: Mapping[str, Mapping[str, int]]
    reasons: Mapping[str, int]
    audit: Proportion
    agreements: tuple[Agreement, ...]


class DecisionStore:
    """The decisions database of one dataset version; queues need its index (``index_path``), export does not."""

    def __init__(self, path: str, dataset: str, index_path: Optional[str] = None) -> None:
        if not dataset:
            raise ValueError("a decision store needs the dataset version")
        self.path = path
        self.dataset = dataset
        self._index_path = index_path
        self._local = threading.local()
        connection = self._connection()
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            raise RuntimeError(f"{path}: SQLite refused WAL mode")
        with connection:
            connection.executescript(_SCHEMA)

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(_uri(self.path), timeout=30, isolation_level=None, uri=True)
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            if self._index_path is not None:
                connection.execute("ATTACH DATABASE ? AS idx", (_uri(self._index_path, "ro"),))
            self._local.connection = connection
        return connection

    # ------------------------------------------------------------------ writing

    def record(self, sample_key: str, action: Action, reviewer: str, queue: str, candidate: Optional[int] = None,
               reason: Optional[str] = None) -> Row:
        """Commit one decision (or skip) and return its row; the caller checked the key and candidate exist."""
        if reason is not None and reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}; known: {', '.join(REJECT_REASONS)}")
        time = now()
        with self._connection() as connection:
            cursor = connection.execute(
                "INSERT INTO decisions(dataset, sample_key, action, candidate, reason, reviewer, queue, time) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (self.dataset, sample_key, action.value, candidate, reason, reviewer, queue, time))
        return Row(cursor.lastrowid, self.dataset, sample_key, action, candidate, reason, reviewer, queue, time)

    def undo(self, reviewer: str) -> Optional[Row]:
        """Mark the reviewer's latest standing row undone; returns it (``None`` when there is none)."""
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            row = connection.execute(
                f"SELECT {_ROW} FROM decisions WHERE dataset = ? AND reviewer = ? AND undone_at IS NULL "
                "ORDER BY id DESC LIMIT 1", (self.dataset, reviewer)).fetchone()
            if row is not None:
                connection.execute("UPDATE decisions SET undone_at = ? WHERE id = ?", (now(), row[0]))
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        return None if row is None else _row(row)

    # ------------------------------------------------------------------ reading

    def rows(self, sample_key: Optional[str] = None, include_undone: bool = False) -> list[Row]:
        where, values = "dataset = ?", [self.dataset]
        if sample_key is not None:
            where += " AND sample_key = ?"
            values.append(sample_key)
        if not include_undone:
            where += " AND undone_at IS NULL"
        return [_row(r) for r in self._connection().execute(
            f"SELECT {_ROW} FROM decisions WHERE {where} ORDER BY id", values)]

    def _pending(self, reviewer: str, queue: Queue) -> tuple[str, list[Any]]:
        """Samples of the queue the reviewer has yet to see: not decided by anyone (by them, in a shared queue)."""
        where, values = queue.where()
        others = "" if queue.shared else "OR (d.action != 'skip')"
        where += (f" AND NOT EXISTS (SELECT 1 FROM decisions d WHERE d.dataset = ? AND d.sample_key = s.key "
                  f"AND d.undone_at IS NULL AND (d.reviewer = ? {others}))")
        return where, [*values, self.dataset, reviewer]

    def next_key(self, reviewer: str, queue: Queue, after: Optional[str] = None) -> Optional[str]:
        """The reviewer's next sample of ``queue`` after the sample ``after`` (from the start past the end)."""
        where, values = self._pending(reviewer, queue)
        first, second = queue.order
        connection = self._connection()
        if after is not None:
            position = connection.execute(f"SELECT {first}, {second} FROM idx.samples s WHERE s.key = ?",
                                          (after,)).fetchone()
            if position is not None:
                row = connection.execute(
                    f"SELECT s.key FROM idx.samples s WHERE {where} AND ({first}, {second}) > (?, ?) "
                    f"ORDER BY {first}, {second} LIMIT 1", [*values, *position]).fetchone()
                if row is not None:
                    return row[0]
        row = connection.execute(f"SELECT s.key FROM idx.samples s WHERE {where} ORDER BY {first}, {second} LIMIT 1",
                                 values).fetchone()
        return None if row is None else row[0]

    def page(self, queue: Queue, after: Optional[str] = None, size: int = 50) -> list[dict[str, Any]]:
        """One page of the queue (decided samples included, with their latest action), after the sample ``after``."""
        where, values = queue.where()
        first, second = queue.order
        connection = self._connection()
        if after is not None:
            position = connection.execute(f"SELECT {first}, {second} FROM idx.samples s WHERE s.key = ?",
                                          (after,)).fetchone()
            if position is not None:
                where += f" AND ({first}, {second}) > (?, ?)"
                values = [*values, *position]
        rows = connection.execute(
            f"SELECT s.key, s.label, s.passed, s.shown, s.reason, s.margin, "
            f"(SELECT d.action || ' by ' || d.reviewer FROM decisions d WHERE d.dataset = ? AND d.sample_key = s.key "
            f"AND d.undone_at IS NULL AND d.action != 'skip' ORDER BY d.id DESC LIMIT 1) "
            f"FROM idx.samples s WHERE {where} ORDER BY {first}, {second} LIMIT ?", [self.dataset, *values, size])
        return [{"key": r[0], "label": r[1], "passed": bool(r[2]), "shown": r[3], "reason": r[4], "margin": r[5],
                 "latest": r[6]} for r in rows]

    def latest(self) -> dict[str, Row]:
        """The standing decision per sample: the latest row not undone and not a skip, whoever made it."""
        effective: dict[str, Row] = {}
        for row in self.rows():
            if row.action is not Action.SKIP:
                effective[row.sample_key] = row
        return effective

    def dashboard(self) -> Dashboard:
        rows = [row for row in self.rows() if row.action is not Action.SKIP]
        actions = Counter(row.action.value for row in rows)
        reviewers: dict[str, Counter] = defaultdict(Counter)
        for row in rows:
            reviewers[row.reviewer][row.action.value] += 1
        reasons = Counter(row.reason for row in rows if row.reason)
        audited = {}
        for row in rows:
            if row.queue == "audit":
                audited[row.sample_key] = row  # the latest audit decision of each audited sample
        kept = sum(row.action is not Action.REJECT for row in audited.values())
        return Dashboard(
            decided_samples=len({row.sample_key for row in rows}),
            actions=dict(actions),
            reviewers={name: dict(counts) for name, counts in sorted(reviewers.items())},
            reasons=dict(reasons.most_common()),
            audit=wilson(kept, len(audited)),
            agreements=tuple(_agreements(rows)),
        )

    def decisions(self) -> list[Decision]:
        """The standing decision of every decided sample, as the decisions file ``build --decisions`` reads.

        Accept and reject name the object; a pick names the picked candidate, which the
        build then uses as the object's pair. A reject's note is its reason code.
        """
        exported = []
        for row in sorted(self.latest().values(), key=lambda row: row.id):
            key = candidate_key(row.sample_key, row.candidate) if row.action is Action.PICK else row.sample_key
            verdict = Verdict.REJECT if row.action is Action.REJECT else Verdict.ACCEPT
            exported.append(Decision(key=key, verdict=verdict, reviewer=row.reviewer, time=row.time,
                                     note=row.reason or ""))
        return exported


def verdict_of(row: Row) -> str:
    """What agreement compares: keep (accept or pick) or reject."""
    return "reject" if row.action is Action.REJECT else "keep"


def _agreements(rows: Iterable[Row]) -> Iterable[Agreement]:
    by_reviewer: dict[str, dict[str, str]] = defaultdict(dict)
    for row in rows:
        by_reviewer[row.reviewer][row.sample_key] = verdict_of(row)
    names = sorted(by_reviewer)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            shared = sorted(set(by_reviewer[first]) & set(by_reviewer[second]))
            if shared:
                yield agreement(first, second, [by_reviewer[first][k] for k in shared],
                                [by_reviewer[second][k] for k in shared])


_ROW = "id, dataset, sample_key, action, candidate, reason, reviewer, queue, time"


def _row(values: tuple) -> Row:
    return Row(values[0], values[1], values[2], Action(values[3]), values[4], values[5], values[6], values[7], values[8])


def export_all(path: str, dataset: Optional[str] = None) -> list[Decision]:
    """The standing decisions in a database: of one dataset version, or of every version it holds."""
    connection = sqlite3.connect(_uri(path, "ro"), uri=True)
    try:
        versions = [dataset] if dataset else [r[0] for r in connection.execute(
            "SELECT DISTINCT dataset FROM decisions ORDER BY dataset")]
    finally:
        connection.close()
    return [decision for version in versions for decision in DecisionStore(path, version).decisions()]
