"""What changed between two versions of a dataset: samples, lineage and funnel.

Only the small files are read (``shardindex.json``, the shards' Parquet, ``lineage.json``,
``stats.json``, ``report.json``), from version folders or a repository on any filesystem
or HTTP server, so comparing two published versions costs no shard bytes. Samples are
matched by key. A sample's ``sample_sha256`` covers its ``json`` member, which names the
version and its thresholds, so the digest of every sample differs between two versions;
a sample is therefore *changed* when its metadata row differs apart from where it lies
(another candidate chosen, other scores, a review) and *restamped* when only its digest
does (the same choice, written into another version).
"""
from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Any, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.finalize import LINEAGE, MANIFEST, STATS
from pipeline.remote import Source, SourceError, UntrustedServer, open_source
from pipeline.versions import INDEX
from schemas.sample import LOCATION_COLUMNS

REPORT = "report.json"
#: Lineage entries that name the version itself: they differ between any two versions.
_VERSION_STAMPS = frozenset({"created_at", "dataset", "version"})
_LOCATION = frozenset(field.name for field in LOCATION_COLUMNS)


class DiffError(ValueError):
    """A version that cannot be read (no such version, not a finished version folder)."""


@dataclasses.dataclass(frozen=True)
class LineageChange:
    path: str  # dotted: thresholds.seam.max
    old: Any
    new: Any


@dataclasses.dataclass(frozen=True)
class FunnelRow:
    stage: Optional[str]
    step: str
    old: Optional[int]
    new: Optional[int]


@dataclasses.dataclass(frozen=True)
class VersionDiff:
    old: str
    new: str
    added: tuple[str, ...]
    removed: tuple[str, ...]
    changed: tuple[str, ...]
    restamped: tuple[str, ...]
    identical: int
    lineage: tuple[LineageChange, ...]
    funnel: tuple[FunnelRow, ...]

    def to_json(self) -> dict[str, Any]:
        return {"old": self.old, "new": self.new, "added": list(self.added), "removed": list(self.removed),
                "changed": list(self.changed), "restamped": list(self.restamped), "identical": self.identical,
                "lineage": [dataclasses.asdict(change) for change in self.lineage],
                "funnel": [dataclasses.asdict(row) for row in self.funnel]}


@dataclasses.dataclass(frozen=True)
class _Version:
    label: str
    rows: Mapping[str, Mapping[str, Any]]  # key -> metadata row
    lineage: Mapping[str, Any]
    funnel: Sequence[Mapping[str, Any]]


def _read_json(source: Source, path: str) -> Any:
    return json.loads(source.read(path))


def _read_version(source: Source, prefix: str, label: str) -> _Version:
    def path(name: str) -> str:
        return posixpath.join(prefix, name) if prefix else name

    try:
        index = _read_json(source, path(MANIFEST))
        lineage = _read_json(source, path(LINEAGE))
        stats = _read_json(source, path(STATS))
    except UntrustedServer as error:
        raise DiffError(str(error)) from None
    except (SourceError, OSError) as error:
        raise DiffError(f"{label} is not a finished version ({error})") from None
    try:
        funnel = _read_json(source, path(REPORT))["funnel"]
    except (SourceError, OSError):
        funnel = stats.get("funnel", [])
    rows = {}
    for entry in index["shardlist"]:
        table = pq.read_table(pa.BufferReader(source.read(path(f"{entry['url'][:-4]}.parquet"))))
        rows.update((row["key"], row) for row in table.to_pylist())
    return _Version(label, rows, lineage, funnel)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping) and value:
        flat = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _lineage_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[LineageChange, ...]:
    old_flat = _flatten({k: v for k, v in old.items() if k not in _VERSION_STAMPS})
    new_flat = _flatten({k: v for k, v in new.items() if k not in _VERSION_STAMPS})
    return tuple(LineageChange(path, old_flat.get(path), new_flat.get(path))
                 for path in sorted(old_flat.keys() | new_flat.keys()) if old_flat.get(path) != new_flat.get(path))


def _funnel(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> tuple[FunnelRow, ...]:
    def counts(funnel):
        return {(row.get("stage"), row["step"]): row["count"] for row in funnel}

    old_counts, new_counts = counts(old), counts(new)
    steps = list(old_counts) + [step for step in new_counts if step not in old_counts]
    return tuple(FunnelRow(stage, step, old_counts.get((stage, step)), new_counts.get((stage, step)))
                 for stage, step in steps)


def _without_location(row: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in row.items() if name not in _LOCATION}


def compare(old: _Version, new: _Version) -> VersionDiff:
    common = sorted(old.rows.keys() & new.rows.keys())
    changed = [k for k in common if _without_location(old.rows[k]) != _without_location(new.rows[k])]
    restamped = [k for k in common if k not in set(changed)
                 and old.rows[k]["sample_sha256"] != new.rows[k]["sample_sha256"]]
    return VersionDiff(
        old=old.label, new=new.label,
        added=tuple(sorted(new.rows.keys() - old.rows.keys())),
        removed=tuple(sorted(old.rows.keys() - new.rows.keys())),
        changed=tuple(changed), restamped=tuple(restamped),
        identical=len(common) - len(changed) - len(restamped),
        lineage=_lineage_changes(old.lineage, new.lineage),
        funnel=_funnel(old.funnel, new.funnel),
    )


def _resolve(source: Source, spec: str) -> tuple[str, str]:
    """``NAME@VERSION`` (or ``NAME@latest``) in a repository -> (path prefix, label)."""
    name, sep, version = spec.partition("@")
    if not (sep and name and version):
        raise DiffError(f"expected NAME@VERSION with --from, got {spec!r}")
    if version == "latest":
        try:
            version = _read_json(source, f"{name}/{INDEX}")["latest"]
        except UntrustedServer as error:
            raise DiffError(str(error)) from None
        except (SourceError, OSError) as error:
            raise DiffError(f"no dataset {name!r} in {source.url} ({error})") from None
    return f"{name}/{version}", f"{name}@{version}"


def diff_versions(old: str, new: str, repository: Optional[str] = None,
                  ca_bundle: Optional[str] = None) -> VersionDiff:
    """Compare two versions: folders (``OUTPUT/NAME/VERSION``), or ``NAME@VERSION`` specs in ``repository``.

    ``ca_bundle`` is as for :func:`pipeline.remote.open_source` (the CAs an ``https://`` one is checked against).
    """
    versions = []
    for spec in (old, new):
        if repository is None:
            versions.append(_read_version(open_source(spec, ca_bundle), "", spec))
        else:
            source = open_source(repository, ca_bundle)
            prefix, label = _resolve(source, spec)
            versions.append(_read_version(source, prefix, label))
    return compare(*versions)
