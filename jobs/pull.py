"""``counterfactory pull``: fetch a published version, verified and resumable, whole or in part.

    counterfactory pull demo@latest --from https://data.example.org/datasets --to data/demo
    counterfactory pull demo@v3 --from gs://bucket/datasets --to data/demo --shards 'shard-000001-*'
    counterfactory pull demo@v3 --from /srv/www/datasets --to data/cups --where 'quality >= 0.8 and label in ("cup",)'

Every file is checked against the version's manifest (sha256 and size); an interrupted
pull continues where it stopped when run again. ``--where`` fetches only the selected
samples, by byte range.
"""
from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

from pipeline.arguments import StrictArgumentParser
from pipeline.pull import PullConfig, PullError, pull
from transforms.where import WhereError

LOG = logging.getLogger(__name__)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = StrictArgumentParser(prog="counterfactory pull", description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("spec", metavar="NAME@VERSION", help="The dataset and version (or 'latest').")
    parser.add_argument("--from", required=True, dest="source",
                        help="The repository root: http(s)://..., a local folder, gs://..., s3://...")
    parser.add_argument("--to", required=True, dest="target", help="The local folder the version lands in.")
    parser.add_argument("--shards", help="Only shards whose name (or path) matches this glob, with their Parquet.")
    parser.add_argument("--where", help="Only the samples whose Parquet row satisfies this expression "
                                        "(comparisons, and/or/not, in/not in over literal tuples).")
    parser.add_argument("--workers", type=int, default=8, help="Files (or shards) fetched at once.")
    parser.add_argument("--ca_bundle", help="PEM file of the CAs an https:// repository's certificate is checked "
                                            "against, instead of the system's (or SSL_CERT_FILE's).")
    args = parser.parse_args(argv)
    try:
        result = pull(PullConfig(args.spec, args.source, args.target, args.shards, args.where, args.workers,
                                 ca_bundle=args.ca_bundle))
    except (PullError, WhereError, ValueError) as error:
        LOG.error("pull failed: %s", error)
        return 1
    what = f"{result.samples} samples" if result.samples is not None else "the whole version"
    sys.stdout.write(f"{result.dataset}@{result.version} -> {result.target}: {what}, {result.files} files verified, "
                     f"{result.fetched_bytes / 1e6:.1f} MB fetched, {result.kept_files} already there\n")
    return 0
