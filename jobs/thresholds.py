"""``counterfactory thresholds``: what a threshold would keep, at many values, without building.

    counterfactory thresholds --candidates out/candidates --sweep seam=0.3:0.6:0.05 --plot seam.png

reads only the candidate shards' Parquet metadata and prints, per value, the share of
candidates passing that threshold and the objects a build would keep with every other
threshold and review decision as given (the same options as ``build``). On an
``evaluate`` output, whose removals have a known truth, it also prints the precision of
what a build would keep at each value.
"""
from __future__ import annotations

import logging
import pathlib
import sys
from typing import Optional, Sequence

from jobs.build import SelectionOptions, candidate_sets, selection_rules
from pipeline.arguments import StrictArgumentParser
from pipeline.evaluate import read_rows
from pipeline.options import ConfigError
from review.report import plot_sweep
from transforms.evaluation import precision_sweep
from transforms.sweep import parse_sweep, read_object_scores, sweep, sweep_table
from transforms.thresholds import SCORES, check_bound

LOG = logging.getLogger(__name__)


def _plot_path(plot: str, score: str, several: bool) -> pathlib.Path:
    path = pathlib.Path(plot)
    return path.with_name(f"{path.stem}-{score}{path.suffix or '.png'}") if several else path


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = StrictArgumentParser(prog="counterfactory thresholds", description=__doc__.split("\n\n")[0].split(": ", 1)[1])
    SelectionOptions._add_argparse_args(parser)
    parser.add_argument("--sweep", action="append", required=True,
                        help="NAME=lo:hi:step, e.g. seam=0.3:0.6:0.05 (inclusive); repeatable.")
    parser.add_argument("--plot", help="Write the sweep as a PNG here (with several --sweep, one file per score).")
    args = parser.parse_args(argv)
    try:
        sweeps = [parse_sweep(text) for text in args.sweep]
        for name, values in sweeps:
            check_bound(name, values[0])
            check_bound(name, values[-1])
        rules = selection_rules(args)
        sets = candidate_sets(args)
    except (ConfigError, ValueError) as error:
        LOG.error("%s", error)
        return 2
    objects = read_object_scores(shard[: -len(".tar")] + ".parquet" for s in sets for shard in s.shards)
    LOG.info("%d candidate objects in %d candidate sets", len(objects), len(sets))
    truth = [row for candidate_set in sets for row in read_rows(candidate_set.path)]
    for name, values in sweeps:
        rows = sweep(objects, rules, name, values)
        current = rules.thresholds.bounds.get(name)
        precisions = [result.precision for result in precision_sweep(truth, rules, name, values)] if truth else None
        sys.stdout.write(sweep_table(name, rows, current, len(objects), precisions) + "\n\n")
        if args.plot:
            path = _plot_path(args.plot, name, len(sweeps) > 1)
            path.write_bytes(plot_sweep(name, str(SCORES[name].better), [r.value for r in rows],
                                        [r.candidate_pass_rate for r in rows], [r.object_pass_rate for r in rows],
                                        current))
            LOG.info("wrote %s", path)
    return 0
