"""The ``counterfactory`` command: one subcommand per job, each with its own ``--help``.

Subcommands are a registry of ``name -> "module:function"`` imported only when chosen,
so ``counterfactory models list`` answers without paying for importing Beam or torch.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import textwrap
import time
from typing import Callable, Optional, Sequence

from pipeline.arguments import StrictArgumentParser, did_you_mean, unknown_argument


@dataclasses.dataclass(frozen=True)
class Command:
    summary: str
    target: str  # "module:function", the function taking argv (without the subcommand name)

    def load(self) -> Callable[[Sequence[str]], object]:
        module_name, function_name = self.target.split(":")
        return getattr(importlib.import_module(module_name), function_name)


COMMANDS: dict[str, Command] = {
    "ingest": Command("raw image folders, tar shards or annotated datasets -> normalised source shards", "jobs.ingest:main"),
    "bootstrap": Command("images -> candidate shards: detect, select, segment, remove objects, score removals",
                         "jobs.bootstrap:main"),
    "build": Command("candidate shards -> versioned removal/insertion pair shards with a funnel report",
                     "jobs.build:main"),
    "versions": Command("the finished versions of a built dataset (and its versions.json index)",
                        "jobs.versions:main"),
    "publish": Command("copy a finished version to a dataset repository (local, gs://, s3://) with a sha256 "
                       "manifest written last", "jobs.publish:main"),
    "pull": Command("fetch a published version (HTTP or any filesystem): parallel, verified, resumable; --shards "
                    "or --where for part of it", "jobs.pull:main"),
    "diff": Command("two versions compared: samples added, removed, changed; lineage and funnel side by side",
                    "jobs.diff:main"),
    "thresholds": Command("preview a threshold: pass rates over a range of values, without building",
                          "jobs.thresholds:main"),
    "pbe-pairs": Command("images with boxes -> Paint-by-Example pairs: target crop, box or Bezier mask, augmented "
                         "reference", "jobs.pbe:main"),
    "pbe-benchmark": Command("images with boxes -> a COCOEE-style evaluation set (reference from another image "
                             "of the same class)", "jobs.pbe:benchmark_main"),
    "video-pairs": Command("videos and still images -> MimicBrush frame pairs with SIFT-guided grid masks",
                           "jobs.video:main"),
    "composites": Command("candidate shards' cut-outs pasted onto other real images -> removal shards with an exact "
                          "target", "jobs.composites:main"),
    "evaluate": Command("removers and quality scores judged against composites' exact targets: PSNR/SSIM, "
                        "rank correlation, AUC, precision and yield of the build defaults", "jobs.evaluate:main"),
    "sheet": Command("a contact sheet picture of candidate, self-reference, frame-pair or built pair samples",
                     "jobs.sheet:main"),
    "review": Command("review samples in the browser (decisions in SQLite); 'review export' writes the decisions "
                      "file build reads", "jobs.review:main"),
    "models": Command("the model catalog: list, fetch and locate weights; bundle them into one archive and install "
                      "it on a worker without network", "jobs.models:main"),
}


#: When this command started (``time.monotonic()``): a run's elapsed time counts its imports too.
STARTED: Optional[float] = None
#: Every log line: the console's and the run.log's.
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: Loggers whose INFO lines no user needs: Beam narrating string type hints, missing GCP
#: clients, every BatchElements bundle's statistics, its worker's state cache size.
QUIET_LOGGERS = ("apache_beam.typehints", "apache_beam.io.gcp", "apache_beam.transforms.util",
                 "apache_beam.runners.worker.statecache")
#: ``(logger, message start)`` of single lines no user needs, dropped at any level above DEBUG: Beam's
#: bigquery client stub at import, and its lint of a FlatMap function that yields and returns early.
NOISE = (("root", "apitools not found"),
         ("apache_beam.transforms.core", "Using yield and return in the process method"))


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(record.name == name and record.getMessage().startswith(start) for name, start in NOISE)


def setup_logging(level: str = "INFO") -> None:
    """One format on stderr; above DEBUG, the noise of :data:`QUIET_LOGGERS` and :data:`NOISE` is left out."""
    logging.basicConfig(level=level, format=FORMAT)
    if logging.getLevelName(level) <= logging.DEBUG:
        return
    for handler in logging.getLogger().handlers:
        handler.addFilter(_DropNoise())
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _command_list(width: int = 100) -> str:
    """The commands and their summaries, as the help lists them."""
    column = max(map(len, COMMANDS)) + 4
    lines = ["commands:"]
    for name, command in COMMANDS.items():
        first, *rest = textwrap.wrap(command.summary, width - column)
        lines += [f"  {name:<{column - 2}}{first}", *(" " * column + line for line in rest)]
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    """The top-level parser: the command is checked here (one line, "did you mean"), its arguments by the command."""
    parser = StrictArgumentParser(
        prog="counterfactory",
        description="Build counterfactual image-editing datasets with Apache Beam.",
        epilog=f"{_command_list()}\n\nRun 'counterfactory COMMAND --help' for the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # no abbreviations: '--log' is not --log-level, the command refuses it as unknown
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("command", nargs="?", metavar="COMMAND", help="one of the commands below")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, metavar="...", help="the command's arguments")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    global STARTED
    STARTED = time.monotonic()
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # an option before the command that is not one of ours
        parser.error(unknown_argument(extras, ["--log-level", "--help"]))
    if args.command is None:
        parser.print_help()
        return 2
    if args.command not in COMMANDS:
        parser.error(f"unknown command {args.command!r}"
                     f"{did_you_mean(args.command, COMMANDS) or ' (counterfactory --help lists them)'}")
    setup_logging(args.log_level)
    result = COMMANDS[args.command].load()(args.arguments)
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
