"""Publishing a finished version to a dataset repository: ``REPO/NAME/VERSION/`` and ``REPO/NAME/versions.json``.

A repository is a folder on any filesystem Beam reaches (local, ``gs://``, ``s3://``) that a
static file server can expose. Every file of the version is copied, then ``manifest.json``
(each file's path, size and sha256) is written LAST: a version is published once its
manifest exists, so a publisher killed half way leaves nothing a puller sees, and the
next publish of the same version completes it. ``versions.json`` is rewritten through a
temporary name and a rename, so readers see the old index or the new one. A version that
is already published is never changed: publishing it again is a no-op when every file is
byte-identical, and refused otherwise (a new build is a new version).
"""
from __future__ import annotations

import hashlib
import json
import logging
import posixpath
from dataclasses import dataclass
from typing import Any, Mapping

from apache_beam.io.filesystems import FileSystems

from pipeline.finalize import STATS
from pipeline.versions import INDEX, INDEX_FORMAT_VERSION, latest_version, version_entry
from transforms.io.files import hash_stream, list_files, publish, read_json

LOG = logging.getLogger(__name__)

REPOSITORY_MANIFEST = "manifest.json"
MANIFEST_FORMAT_VERSION = 1


class PublishError(ValueError):
    """A version that cannot be published as asked (unfinished, or already published with other bytes)."""


@dataclass(frozen=True)
class Published:
    """What a publish did: where the version lies and whether anything was written."""
    url: str
    files: int
    bytes: int
    unchanged: bool


def file_digest(path: str) -> tuple[int, str]:
    """Size and sha256 of one file, read in chunks (shards are far larger than memory allows twice)."""
    sha = hashlib.sha256()
    with FileSystems.open(path, compression_type="uncompressed") as stream:
        size = hash_stream(stream, sha)
    return size, sha.hexdigest()


def version_manifest(version_dir: str) -> dict[str, Any]:
    """The manifest of a finished version folder: every file (sorted by path) with its size and sha256."""
    root = version_dir.rstrip("/")
    if not FileSystems.exists(FileSystems.join(root, STATS)):
        raise PublishError(f"{root} is not a finished version (no {STATS}); build it first")
    files = []
    for path in list_files(FileSystems.join(root, "**")):
        relative = posixpath.relpath(path, root)
        if relative == REPOSITORY_MANIFEST:
            continue
        size, sha256 = file_digest(path)
        files.append({"path": relative, "size": size, "sha256": sha256})
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "dataset": posixpath.basename(posixpath.dirname(root)),
        "version": posixpath.basename(root),
        "files": sorted(files, key=lambda entry: entry["path"]),
    }


def _manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")


def _updated_index(dataset_url: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    index_path = FileSystems.join(dataset_url, INDEX)
    versions = read_json(index_path)["versions"] if FileSystems.exists(index_path) else []
    versions = [v for v in versions if v["version"] != entry["version"]] + [dict(entry)]
    versions.sort(key=lambda v: (v["finished_at"], v["version"]))
    return {
        "format_version": INDEX_FORMAT_VERSION,
        "dataset": posixpath.basename(dataset_url.rstrip("/")),
        "latest": latest_version(versions),
        "versions": versions,
    }


def publish_version(version_dir: str, repository: str) -> Published:
    """Copy ``version_dir`` (``OUTPUT/NAME/VERSION``) to ``repository/NAME/VERSION`` and list it in the index."""
    manifest = version_manifest(version_dir)
    dataset_url = FileSystems.join(repository.rstrip("/"), manifest["dataset"])
    target = FileSystems.join(dataset_url, manifest["version"])
    total = sum(entry["size"] for entry in manifest["files"])
    published_manifest = FileSystems.join(target, REPOSITORY_MANIFEST)
    if FileSystems.exists(published_manifest):
        if read_json(published_manifest)["files"] != manifest["files"]:
            raise PublishError(f"{target} is already published with other content; publish the build as a new "
                               f"version instead")
        LOG.info("%s is already published, byte-identical: nothing to do", target)
        return Published(target, len(manifest["files"]), total, unchanged=True)
    source = version_dir.rstrip("/")
    for entry in manifest["files"]:
        with FileSystems.open(FileSystems.join(source, entry["path"]), compression_type="uncompressed") as stream:
            publish(FileSystems.join(target, entry["path"]), stream)
    manifest_bytes = _manifest_bytes(manifest)
    publish(published_manifest, manifest_bytes)  # last: from here on the version is visible
    entry = dict(version_entry(source), manifest=f"{manifest['version']}/{REPOSITORY_MANIFEST}",
                 manifest_sha256=hashlib.sha256(manifest_bytes).hexdigest())
    publish(FileSystems.join(dataset_url, INDEX),
            json.dumps(_updated_index(dataset_url, entry), indent=2, sort_keys=True).encode("utf-8"))
    LOG.info("published %s: %d files, %.1f MB", target, len(manifest["files"]), total / 1e6)
    return Published(target, len(manifest["files"]), total, unchanged=False)
