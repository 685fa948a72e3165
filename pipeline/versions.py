"""The index of a dataset's finished versions: ``OUTPUT/NAME/versions.json``.

Researchers pull a version by name (``v3``) or ask for the newest; without an index they
would have to list the bucket and open every version's ``stats.json``. The index is
rebuilt from those files (a version is finished once its ``stats.json`` exists), so it
is never the only record: a build that dies after finishing its version, or two builds
finishing at once, leave an index that the next build (or ``counterfactory versions
--reindex``) corrects.

``latest`` is the newest finished version that holds samples: a version that kept none
(a threshold typo, a wrong candidate set) is listed but becomes ``latest`` only if its
build asked for it (``build --allow_empty``, recorded in its lineage), so researchers
pulling the newest never get an empty dataset by accident.
"""
from __future__ import annotations

import json
import logging
import posixpath
from typing import Any, Mapping, Optional, Sequence

from apache_beam.io.filesystems import FileSystems

from pipeline.finalize import LINEAGE, MANIFEST, STATS
from transforms.io.files import publish, read_json

LOG = logging.getLogger(__name__)

INDEX = "versions.json"
INDEX_FORMAT_VERSION = 1


def version_entry(version_dir: str) -> dict[str, Any]:
    """What the index says of one finished version, from its stats and lineage."""
    stats = read_json(FileSystems.join(version_dir, STATS))
    lineage = read_json(FileSystems.join(version_dir, LINEAGE))
    version = posixpath.basename(version_dir.rstrip("/"))
    return {
        "version": version,
        "finished_at": stats["finished_at"],
        "code_version": stats["code_version"],
        "samples": stats["shards"]["samples"],
        "shards": stats["shards"]["count"],
        "bytes": stats["shards"]["bytes"],
        "shardindex": f"{version}/{MANIFEST}",
        "content_sha256": lineage.get("content_sha256"),
        "config_sha256": lineage.get("config_sha256"),
        "thresholds": lineage.get("thresholds"),
        "decisions_sha256": (lineage.get("decisions") or {}).get("sha256"),
        "candidate_sets": [candidate_set.get("path") for candidate_set in lineage.get("candidate_sets", [])],
        "allow_empty": bool(lineage.get("allow_empty", False)),
    }


def scan_versions(dataset_dir: str) -> list[dict[str, Any]]:
    """Every finished version under ``dataset_dir``, oldest first; unfinished attempts are left out."""
    pattern = FileSystems.join(dataset_dir.rstrip("/"), "*", STATS)
    stats_paths = [metadata.path for result in FileSystems.match([pattern]) for metadata in result.metadata_list]
    entries = [version_entry(posixpath.dirname(path)) for path in stats_paths]
    return sorted(entries, key=lambda entry: (entry["finished_at"], entry["version"]))


def latest_version(versions: Sequence[Mapping[str, Any]]) -> Optional[str]:
    """The newest of index entries (oldest first) that holds samples or was built ``--allow_empty``."""
    return next((entry["version"] for entry in reversed(versions) if entry["samples"] or entry.get("allow_empty")),
                None)


def write_versions_index(dataset_dir: str) -> Mapping[str, Any]:
    """Rebuild ``versions.json`` from the finished versions; returns what it wrote."""
    versions = scan_versions(dataset_dir)
    index = {
        "format_version": INDEX_FORMAT_VERSION,
        "dataset": posixpath.basename(dataset_dir.rstrip("/")),
        "latest": latest_version(versions),
        "versions": versions,
    }
    publish(FileSystems.join(dataset_dir, INDEX), json.dumps(index, indent=2, sort_keys=True).encode("utf-8"))
    LOG.info("%s: %d finished versions, latest %s", FileSystems.join(dataset_dir, INDEX), len(versions),
             index["latest"])
    return index
