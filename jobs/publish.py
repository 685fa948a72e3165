"""``counterfactory publish``: copy a finished version to a dataset repository researchers pull from.

    counterfactory publish out/datasets/demo/v3 --to gs://bucket/datasets
    counterfactory publish out/datasets/demo/v3 --to /srv/www/datasets   # served by any static file server

The version lands in ``REPO/NAME/VERSION/`` with a ``manifest.json`` of every file's sha256
and size, written last, and ``REPO/NAME/versions.json`` lists it. Publishing a version again
is a no-op when it is byte-identical and refused otherwise.
"""
from __future__ import annotations

import logging
import sys
from typing import Optional, Sequence

from pipeline.arguments import StrictArgumentParser
from pipeline.publish import PublishError, publish_version

LOG = logging.getLogger(__name__)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = StrictArgumentParser(prog="counterfactory publish", description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("version", help="A finished version folder: a build's OUTPUT/NAME/VERSION.")
    parser.add_argument("--to", required=True, dest="repository",
                        help="The repository root (local folder, gs://..., s3://...); the version goes to ROOT/NAME/VERSION.")
    args = parser.parse_args(argv)
    try:
        result = publish_version(args.version, args.repository)
    except PublishError as error:
        LOG.error("%s", error)
        return 2
    state = "already published, unchanged" if result.unchanged else "published"
    sys.stdout.write(f"{result.url}: {state} ({result.files} files, {result.bytes / 1e6:.1f} MB)\n")
    return 0
