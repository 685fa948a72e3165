"""The review app's index of a dataset: every sample's members located in its shard, and its queue facts.

Built once per dataset (and per thresholds) from the shards its manifest lists: one pass
over each tar records where each member lies (offset, size) and checks the sample against
the digest its writer recorded (as every job's reader does: a sample whose bytes changed is
left out and counted, never shown), and each sample's ``json`` gives its label and its
candidates' scores. From those, selection's own rules
(:class:`~transforms.thresholds.SelectionRules`) say whether the thresholds keep the
object, which candidate they choose and why they reject it; the *margin* says how near
the object is to changing sides (the best candidate's smallest slack over the thresholds,
in standard deviations of each score), which orders the near-threshold queue.

The index is an SQLite file in the review cache, written under a temporary name and
renamed when complete, so a killed build leaves no half index. Serving a member is
one indexed lookup and one ``pread`` on the shard: no scan, no extraction, and no path
from a request is ever opened (a request names a key and a member; both must be in the
index, and only the manifest's shards are opened).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import posixpath
import sqlite3
import threading
import urllib.parse
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

from schemas import Reason
from schemas.sample import SCORE_NAMES, Field
from transforms.io.readers import digest_mismatch, tar_members
from transforms.io.shards import recorded_digests
from transforms.thresholds import SCORES, Better, CandidateView, SelectionRules, Thresholds

LOG = logging.getLogger(__name__)

#: Bumped when the index tables change meaning: an index of another format is rebuilt.
INDEX_FORMAT = 2

#: Media types of the members the app shows, by extension; other members are never served as images.
IMAGE_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}


@dataclasses.dataclass(frozen=True)
class CandidateImage:
    """One removal candidate as the app shows it: its index, its image and region members, its scores."""

    index: int
    member: str
    region: Optional[str]
    scores: Mapping[str, Optional[float]]


@dataclasses.dataclass(frozen=True)
class SampleKind:
    """How the app reads a sample kind: its candidates, and the other pictures shown beside them."""

    candidates: Callable[[Mapping[str, Any]], list[CandidateImage]]
    panels: tuple[tuple[str, str], ...]  # (title, member) shown after the source


def _candidate_images(meta: Mapping[str, Any]) -> list[CandidateImage]:
    return [CandidateImage(int(c["index"]), c["field"], c.get("region"), dict(c["scores"])) for c in meta["candidates"]]


def _pair_image(meta: Mapping[str, Any]) -> list[CandidateImage]:
    chosen = meta["candidate"]
    return [CandidateImage(int(chosen["index"]), Field.REMOVED, Field.REGION, dict(chosen["scores"]))]


#: Sample kinds the app reviews: candidate shards (bootstrap) and built versions (pairs).
KINDS: Mapping[str, SampleKind] = {
    "candidates": SampleKind(_candidate_images, (("cut-out", Field.OBJECT),)),
    "pairs": SampleKind(_pair_image, (("insertion input (re-pasted)", Field.PASTED), ("cut-out", Field.OBJECT))),
}


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """What to review: the folder, its manifest (``wids-shard-index-v1``), a version name and the thresholds shown.

    ``version`` is what every decision records (a dataset's name and content digest), so
    decisions on two datasets in one database never mix.
    """

    folder: str
    manifest: str
    version: str
    thresholds: Thresholds

    def __post_init__(self) -> None:
        if not os.path.isfile(os.path.join(self.folder, self.manifest)):
            raise ValueError(f"{self.folder} has no {self.manifest}: not a finished candidate set or version")
        if not self.version:
            raise ValueError("a dataset source needs its version name")

    def manifest_bytes(self) -> bytes:
        with open(os.path.join(self.folder, self.manifest), "rb") as file:
            return file.read()

    def shards(self) -> list[tuple[str, str]]:
        """(url, local path) of every shard the manifest lists; a url leaving the folder is refused."""
        manifest = json.loads(self.manifest_bytes())
        if manifest.get("__kind__") != "wids-shard-index-v1":
            raise ValueError(f"{self.manifest} is not a wids-shard-index-v1 manifest")
        shards = []
        for entry in manifest["shardlist"]:
            url = entry["url"]
            normal = posixpath.normpath(url)
            if posixpath.isabs(normal) or normal.startswith("..") or "://" in url:
                raise ValueError(f"manifest shard url {url!r} is not a path inside {self.folder}")
            shards.append((url, os.path.join(self.folder, normal)))
        return shards

    def digest(self) -> str:
        """Names the index: the manifest (its shards' md5s), the folder, the thresholds, the scores known, the format."""
        stamp = json.dumps({"format": INDEX_FORMAT, "folder": os.path.abspath(self.folder), "version": self.version,
                            "thresholds": self.thresholds.to_json(), "scores": SCORE_NAMES}, sort_keys=True).encode()
        return hashlib.sha256(stamp + self.manifest_bytes()).hexdigest()


_SCHEMA = f"""
CREATE TABLE meta(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE shards(id INTEGER PRIMARY KEY, url TEXT NOT NULL, path TEXT NOT NULL);
CREATE TABLE samples(
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, shard INTEGER NOT NULL, members TEXT NOT NULL,
    label TEXT, passed INTEGER, chosen INTEGER, shown INTEGER, reason TEXT, margin REAL, closeness REAL,
    audit REAL, {", ".join(f"{name} REAL" for name in SCORE_NAMES)});
CREATE TABLE facets(facet TEXT NOT NULL, value TEXT, count INTEGER NOT NULL);
"""
_INDEXES = """
CREATE INDEX samples_near ON samples(closeness, key);
CREATE INDEX samples_label ON samples(label, closeness, key);
CREATE INDEX samples_reason ON samples(reason, closeness, key);
CREATE INDEX samples_audit ON samples(passed, audit, key);
"""


def _tar_samples(path: str) -> Iterator[tuple[str, dict[str, tuple[int, int]], dict[str, bytes]]]:
    """(key, {member: (offset, size)}, {member: bytes}) per sample of a tar, from one pass over it."""
    with open(path, "rb") as tar:
        for key, located in tar_members(tar):
            yield (key, {field: (member.offset, member.size) for field, member in located.items()},
                   {field: member.data for field, member in located.items()})


def _scales(values: Mapping[str, list[float]]) -> dict[str, float]:
    """Each score's standard deviation over every candidate (1 where it is 0 or unknown): the margin's unit."""
    scales = {}
    for name, column in values.items():
        finite = [v for v in column if math.isfinite(v)]
        mean = sum(finite) / len(finite) if finite else 0.0
        spread = math.sqrt(sum((v - mean) ** 2 for v in finite) / len(finite)) if finite else 0.0
        scales[name] = spread if spread > 0 else 1.0
    return scales


def slack(scores: Mapping[str, Optional[float]], thresholds: Thresholds, scales: Mapping[str, float]) -> float:
    """A candidate's smallest slack over the thresholds, in score deviations: >= 0 exactly when it passes them all."""
    worst = math.inf
    for name, bound in thresholds.bounds.items():
        value = scores.get(name)
        if value is None:
            return -math.inf
        sign = 1.0 if SCORES[name].better is Better.HIGHER else -1.0
        worst = min(worst, sign * (value - bound) / scales.get(name, 1.0))
    return worst


def _audit_rank(key: str) -> float:
    """A fixed pseudo-random rank in [0, 1): the audit queue's order, a uniform sample at any depth."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") / 2.0 ** 64


def build_index(source: DatasetSource, path: str) -> None:
    """Write the index of ``source`` to ``path`` (atomically).

    Samples that are not of one known kind are skipped, and those that differ from their
    recorded digest are left out as ``corrupt``: the meta table counts both.
    """
    partial = f"{path}.partial-{os.getpid()}"
    if os.path.exists(partial):
        os.remove(partial)
    connection = sqlite3.connect(partial)
    try:
        connection.executescript(_SCHEMA)
        kind_name, candidates, left_out = _scan(source, connection)
        _rank(source.thresholds, connection, candidates)
        connection.executescript(_INDEXES)
        meta = {"format": str(INDEX_FORMAT), "kind": kind_name, "version": source.version,
                "folder": os.path.abspath(source.folder), "thresholds": json.dumps(source.thresholds.to_json()),
                **{name: str(count) for name, count in left_out.items()}}
        connection.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
        connection.commit()
    finally:
        connection.close()
    os.replace(partial, path)


def _scan(source: DatasetSource, connection: sqlite3.Connection
          ) -> tuple[str, list[tuple[int, str, list[CandidateImage]]], dict[str, int]]:
    kind_name: Optional[str] = None
    candidates: list[tuple[int, str, list[CandidateImage]]] = []
    left_out = {"skipped": 0, "corrupt": 0}
    for shard_id, (url, shard_path) in enumerate(source.shards()):
        connection.execute("INSERT INTO shards VALUES (?, ?, ?)", (shard_id, url, os.path.abspath(shard_path)))
        count = 0
        recorded = recorded_digests(shard_path)
        for key, members, fields in _tar_samples(shard_path):
            mismatch = digest_mismatch(recorded, key, fields)
            if mismatch:
                left_out["corrupt"] += 1
                LOG.warning("%s: sample %r left out: its bytes are not those written (%s: %s)", url, key,
                            Reason.SAMPLE_DIGEST_MISMATCH.value, mismatch)
                continue
            try:
                meta = json.loads(fields.get(Field.JSON) or b"null")
                kind = KINDS[meta["kind"]]
                images = kind.candidates(meta)
                label = str(meta["detection"]["label"])
            except (ValueError, KeyError, TypeError) as error:
                left_out["skipped"] += 1
                LOG.warning("%s: sample %r skipped: not a reviewable sample (%s: %s)", url, key, type(error).__name__,
                            error)
                continue
            if kind_name is None:
                kind_name = meta["kind"]
            elif meta["kind"] != kind_name:
                raise ValueError(f"{url}: sample {key!r} is of kind {meta['kind']!r}, the dataset's are {kind_name!r}")
            cursor = connection.execute("INSERT INTO samples(key, shard, members, label) VALUES (?, ?, ?, ?)",
                                        (key, shard_id, json.dumps(members, separators=(",", ":")), label))
            candidates.append((cursor.lastrowid, key, images))
            count += 1
        LOG.info("indexed %s: %d samples", url, count)
    if kind_name is None:
        raise ValueError(f"{source.folder}: no reviewable sample in its shards (kinds: {', '.join(KINDS)})")
    return kind_name, candidates, left_out


def _rank(thresholds: Thresholds, connection: sqlite3.Connection,
          candidates: Sequence[tuple[int, str, list[CandidateImage]]]) -> None:
    values: dict[str, list[float]] = {name: [] for name in thresholds.bounds}
    for _, _, images in candidates:
        for image in images:
            for name in values:
                if image.scores.get(name) is not None:
                    values[name].append(float(image.scores[name]))
    scales = _scales(values)
    rules = SelectionRules(thresholds=thresholds)
    updates, facets = [], {"label": {}, "reason": {}}
    for row_id, key, images in candidates:
        choice = rules.choose(key, [CandidateView(image.index, image.scores) for image in images])
        slacks = {image.index: slack(image.scores, thresholds, scales) for image in images}
        shown = choice.candidate_index if choice.kept else max(slacks, key=lambda index: (slacks[index], -index))
        margin = slacks[shown]
        scores = next(image.scores for image in images if image.index == shown)
        reason = None if choice.kept else choice.reason.value
        updates.append((int(choice.kept), choice.candidate_index, shown, reason, margin, abs(margin), _audit_rank(key),
                        *(scores.get(name) for name in SCORE_NAMES), row_id))
        facets["reason"][reason] = facets["reason"].get(reason, 0) + 1
    columns = ", ".join(f"{name} = ?" for name in SCORE_NAMES)
    connection.executemany(f"UPDATE samples SET passed = ?, chosen = ?, shown = ?, reason = ?, margin = ?, "
                           f"closeness = ?, audit = ?, {columns} WHERE id = ?", updates)
    for label, count in connection.execute("SELECT label, COUNT(*) FROM samples GROUP BY label"):
        facets["label"][label] = count
    connection.executemany("INSERT INTO facets VALUES (?, ?, ?)",
                           [(facet, value, count) for facet, counts in facets.items() for value, count in counts.items()])
    connection.execute("INSERT INTO meta VALUES ('scales', ?)", (json.dumps(scales),))


@dataclasses.dataclass(frozen=True)
class IndexedSample:
    """A sample as the index holds it: where its members are, and its queue facts."""

    key: str
    shard: int
    members: Mapping[str, tuple[int, int]]
    label: str
    passed: bool
    chosen: Optional[int]
    shown: int
    reason: Optional[str]
    margin: float


class DatasetIndex:
    """A built index, opened read-only: sample lookups and member reads (``pread``, safe across threads)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._fds: dict[int, int] = {}
        self._lock = threading.Lock()
        connection = self._connection()
        self.meta = dict(connection.execute("SELECT name, value FROM meta"))
        if self.meta.get("format") != str(INDEX_FORMAT):
            raise ValueError(f"{path} is an index of format {self.meta.get('format')}, not {INDEX_FORMAT}")
        self.kind = KINDS[self.meta["kind"]]
        self.kind_name = self.meta["kind"]
        self.version = self.meta["version"]
        self.thresholds = Thresholds({name: next(iter(bound.values()))
                                      for name, bound in json.loads(self.meta["thresholds"]).items()})
        self.shard_paths = dict(connection.execute("SELECT id, path FROM shards"))
        self.count = connection.execute("SELECT COUNT(*) FROM samples").fetchone()[0]
        #: Samples left out because their bytes differ from the digest recorded at write time.
        self.corrupt = int(self.meta.get("corrupt", 0))

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(f"file:{urllib.parse.quote(os.path.abspath(self.path))}?mode=ro",
                                         uri=True, check_same_thread=True)
            self._local.connection = connection
        return connection

    def facets(self, facet: str) -> list[tuple[Optional[str], int]]:
        return list(self._connection().execute(
            "SELECT value, count FROM facets WHERE facet = ? ORDER BY count DESC, value", (facet,)))

    def sample(self, key: str) -> Optional[IndexedSample]:
        row = self._connection().execute(
            "SELECT key, shard, members, label, passed, chosen, shown, reason, margin FROM samples WHERE key = ?",
            (key,)).fetchone()
        if row is None:
            return None
        members = {name: (int(offset), int(size)) for name, (offset, size) in json.loads(row[2]).items()}
        return IndexedSample(row[0], row[1], members, row[3], bool(row[4]), row[5], row[6], row[7], row[8])

    def read(self, sample: IndexedSample, member: str) -> bytes:
        """A member's bytes; ``KeyError`` when the sample has no such member."""
        offset, size = sample.members[member]
        return os.pread(self._fd(sample.shard), size, offset)

    def _fd(self, shard: int) -> int:
        with self._lock:
            fd = self._fds.get(shard)
            if fd is None:
                fd = self._fds[shard] = os.open(self.shard_paths[shard], os.O_RDONLY)
            return fd

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()


def open_index(source: DatasetSource, cache_dir: str) -> DatasetIndex:
    """The index of ``source`` in ``cache_dir``, built first if this dataset and these thresholds have none."""
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, f"index-{source.digest()[:20]}.sqlite")
    if not os.path.exists(path):
        LOG.info("indexing %s (once: later runs reuse %s)", source.folder, path)
        build_index(source, path)
    return DatasetIndex(path)
