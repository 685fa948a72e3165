"""``counterfactory versions``: the finished versions of a built dataset, newest last.

    counterfactory versions out/datasets/demo            # a table
    counterfactory versions out/datasets/demo --json     # the index, as versions.json holds it
    counterfactory versions out/datasets/demo --reindex  # rewrite versions.json from the versions found

The listing is read from the versions themselves (each finished version's ``stats.json``
and ``lineage.json``), so it is right even where ``versions.json`` is stale.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Optional, Sequence

from pipeline.arguments import StrictArgumentParser
from pipeline.versions import INDEX, scan_versions, write_versions_index

LOG = logging.getLogger(__name__)


def _table(versions: list[dict]) -> str:
    rows = [("version", "finished_at", "samples", "shards", "MB", "content_sha256")]
    rows += [(v["version"], v["finished_at"], str(v["samples"]), str(v["shards"]), f"{v['bytes'] / 1e6:.1f}",
              (v["content_sha256"] or "")[:16]) for v in versions]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = StrictArgumentParser(prog="counterfactory versions", description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("dataset", help="A dataset folder: a build's OUTPUT/NAME (local or gs://...).")
    parser.add_argument("--json", action="store_true", help="Print the index as JSON instead of a table.")
    parser.add_argument("--reindex", action="store_true", help=f"Rewrite {INDEX} from the versions found.")
    args = parser.parse_args(argv)
    if args.reindex:
        versions = write_versions_index(args.dataset)["versions"]
    else:
        versions = scan_versions(args.dataset)
    if not versions:
        LOG.error("no finished version in %s (a version is finished once its stats.json exists)", args.dataset)
        return 2
    sys.stdout.write((json.dumps(versions, indent=2) if args.json else _table(versions)) + "\n")
    return 0
