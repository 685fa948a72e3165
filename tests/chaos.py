"""Fault injection for integration tests: make one stage raise on, or silently drop, chosen records.

Every stage promises that an exception is that record's dead letter and that the run's
ledgers still close, and the run promises that a record a stage loses without raising
fails it, naming the stage. These helpers break a real stage of a real job on the local
runner, so each promise is checked for each stage, not only for the ones a test author
thought of.
"""
from __future__ import annotations

import json
import pathlib
from typing import Callable

import pytest

from transforms.ledger import describe
from transforms.stage import StageFn

#: What an injected exception says; dead letters carrying it are the injected ones.
INJECTED = "injected fault"


def fail_stage(monkeypatch: pytest.MonkeyPatch, stage: str, chosen: Callable[[str, str], bool]) -> None:
    """Every ``stage`` DoFn raises on the records whose ``(uri, key)`` are ``chosen``."""
    process = StageFn.process

    def failing(self, element, *args, **kwargs):
        if self.stage == stage and chosen(*describe(element)):
            raise RuntimeError(f"{INJECTED} in {stage}")
        return process(self, element, *args, **kwargs)

    monkeypatch.setattr(StageFn, "process", failing)


def drop_in_stage(monkeypatch: pytest.MonkeyPatch, stage: str, chosen: Callable[[str, str], bool]) -> None:
    """Every ``stage`` DoFn silently drops the records whose ``(uri, key)`` are ``chosen``: no output, no error."""
    process = StageFn.process

    def dropping(self, element, *args, **kwargs):
        if self.stage == stage and chosen(*describe(element)):
            return iter(())
        return process(self, element, *args, **kwargs)

    monkeypatch.setattr(StageFn, "process", dropping)


def dead_letters(output: pathlib.Path) -> list[dict]:
    """A finished run's dead letters, as ``dead_letters.jsonl`` rows."""
    return [json.loads(line) for line in (output / "dead_letters.jsonl").read_text().splitlines()]


def injected_dead_letters(output: pathlib.Path) -> list[dict]:
    """The run's dead letters that an injected fault made."""
    return [row for row in dead_letters(output) if INJECTED in row["error"]]
