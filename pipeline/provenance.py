"""Code version for provenance: package version, plus the git commit when run from a checkout.

Computed once where the job is launched (workers have no checkout) and carried in the
run's config to every sample's provenance.
"""
from __future__ import annotations

import functools
import importlib.metadata
import pathlib
import subprocess


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    try:
        version = importlib.metadata.version("counterfactory")
    except importlib.metadata.PackageNotFoundError:
        version = "0+unknown"
    checkout = pathlib.Path(__file__).resolve().parent.parent
    if not (checkout / ".git").exists():
        return version
    try:
        commit = subprocess.run(
            ["git", "-C", str(checkout), "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+g{commit}" if commit else version
