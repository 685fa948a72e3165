"""``counterfactory diff``: samples added, removed and changed between two versions, their lineage and funnel.

    counterfactory diff out/datasets/demo/v1 out/datasets/demo/v2
    counterfactory diff demo@v1 demo@latest --from https://data.example.org/datasets --json

Reads only metadata (Parquet, lineage, stats, report), never the shards.
"""
from __future__ import annotations

import json
import logging
import sys
from typing import Any, Optional, Sequence

from pipeline.arguments import StrictArgumentParser
from pipeline.diff import DiffError, VersionDiff, diff_versions

LOG = logging.getLogger(__name__)
_KEYS_SHOWN = 20


def _value(value: Any) -> str:
    return "-" if value is None else json.dumps(value, sort_keys=True)


def _keys(keys: Sequence[str]) -> str:
    shown = " ".join(keys[:_KEYS_SHOWN])
    return shown + (f" … (+{len(keys) - _KEYS_SHOWN}; --json lists all)" if len(keys) > _KEYS_SHOWN else "")


def render(result: VersionDiff) -> str:
    """The human-readable diff."""
    lines = [f"{result.old} -> {result.new}: {len(result.added)} added, {len(result.removed)} removed, "
             f"{len(result.changed)} changed, {len(result.restamped)} restamped, {result.identical} identical"]
    for title, keys in (("added", result.added), ("removed", result.removed), ("changed", result.changed)):
        if keys:
            lines.append(f"  {title}: {_keys(keys)}")
    lines.append("lineage:" if result.lineage else "lineage: identical")
    lines += [f"  {change.path}: {_value(change.old)} -> {_value(change.new)}" for change in result.lineage]
    names = [f"{row.stage}/{row.step}" if row.stage else row.step for row in result.funnel]
    width = max([len(name) for name in names] + [5])
    lines.append(f"funnel:{'':{width - 5}} {'old':>12} {'new':>12}")
    for name, row in zip(names, result.funnel):
        lines.append(f"  {name:<{width}} {_value(row.old):>12} {_value(row.new):>12}")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = StrictArgumentParser(prog="counterfactory diff", description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("old", help="A version folder, or NAME@VERSION with --from.")
    parser.add_argument("new", help="A version folder, or NAME@VERSION (or NAME@latest) with --from.")
    parser.add_argument("--from", dest="repository",
                        help="A repository or build output root (folder, gs://, s3://, http(s)://) holding NAME/VERSION.")
    parser.add_argument("--ca_bundle", help="PEM file of the CAs an https:// repository's certificate is checked "
                                            "against, instead of the system's (or SSL_CERT_FILE's).")
    parser.add_argument("--json", action="store_true", help="Print the diff as one JSON object.")
    args = parser.parse_args(argv)
    try:
        result = diff_versions(args.old, args.new, args.repository, args.ca_bundle)
    except (DiffError, ValueError) as error:
        LOG.error("diff failed: %s", error)
        return 1
    sys.stdout.write(json.dumps(result.to_json(), indent=2) + "\n" if args.json else render(result))
    return 0
