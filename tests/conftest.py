"""Shared test set-up: offline settings for the model libraries, and small helpers."""
import logging
import os
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent

# Model libraries must never reach a hub from tests (FACTS.md): set before any import.
os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
logging.getLogger("apache_beam").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def samples_dir() -> pathlib.Path:
    return REPO / "jobs" / "samples"
