"""Strict command lines: an unknown or abbreviated option is refused in one line, with the closest known one.

argparse takes ``--inp`` for ``--input`` and Beam drops ``--inptu`` with a warning, so a
misspelled flag runs the job on the wrong thing. Every ``counterfactory`` command parses
with :class:`StrictArgumentParser` (or, for the Beam jobs, :func:`pipeline.options.parse_options`,
which uses :func:`unknown_argument` too). Beam-free, so ``counterfactory models`` stays light.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import sys
from typing import Any, Iterable, Sequence

LOG = logging.getLogger(__name__)


def did_you_mean(name: str, candidates: Iterable[str], others: Iterable[str] = ()) -> str:
    """`` (did you mean --input?)``: the closest of ``candidates``, else a very close one of ``others``, else ``""``.

    ``others`` are the hundreds of Beam options, where a loose match is mostly noise.
    """
    match = difflib.get_close_matches(name, list(candidates), n=1) or difflib.get_close_matches(
        name, list(others), n=1, cutoff=0.8)
    return f" (did you mean {match[0]}?)" if match else ""


def unknown_argument(extras: Sequence[str], candidates: Iterable[str], others: Iterable[str] = ()) -> str:
    """The line refusing the first unknown argument of ``extras`` (options first), as :func:`did_you_mean` suggests."""
    first = next((extra for extra in extras if extra.startswith("-")), extras[0])
    if not first.startswith("-"):
        return f"unexpected argument {first!r}"
    name = first.split("=", 1)[0]
    return f"unknown option {name}{did_you_mean(name, candidates, others)}"


def argument_error(message: str) -> str:
    """argparse's ``argument --device: ...`` as ``--device: ...``."""
    return message[len("argument "):] if message.startswith("argument -") else message


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--long`` option of ``parser`` and of its subcommands."""
    strings: list[str] = []
    for action in parser._actions:  # noqa: SLF001 - argparse has no public list of its actions
        strings += [string for string in action.option_strings if string.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for subparser in action.choices.values():
                strings += option_strings(subparser)
    return strings


class StrictArgumentParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` without abbreviations that refuses unknown arguments, and says any mistake in one line."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        args = sys.argv[1:] if args is None else list(args)
        known = option_strings(self)
        # Unknown options first: "unknown option --t" says more than "--to is required".
        unknown = [arg for arg in args if arg.startswith("--") and arg != "--" and arg.split("=", 1)[0] not in known]
        if unknown:
            self.error(unknown_argument(unknown, known))
        namespace, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(unknown_argument(extras, known))
        return namespace

    def error(self, message: str) -> None:  # type: ignore[override]
        LOG.error("%s: %s", self.prog, argument_error(message))
        self.exit(2)
