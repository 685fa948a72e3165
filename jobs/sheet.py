"""``counterfactory sheet``: a contact sheet (PNG/JPEG) of candidates, self-reference, frame or built pairs, for a first look."""
from __future__ import annotations

import glob
import logging
import os
from typing import Optional, Sequence

from pipeline.arguments import StrictArgumentParser
from pipeline.finalize import MANIFEST
from review.contact_sheet import SHEETS, sample_kind
from transforms.io.files import read_json
from transforms.io.shards import ShardMismatch, verify_shards

LOG = logging.getLogger(__name__)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = StrictArgumentParser(prog="counterfactory sheet", description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("--candidates", "--shards", dest="candidates", required=True,
                        help="Folder of shards: a bootstrap --output, a built version (OUTPUT/NAME/VERSION), "
                             "pbe-pairs or video-pairs shards.")
    parser.add_argument("--output", required=True, help="Picture to write (.png or .jpg).")
    parser.add_argument("--keys", nargs="*", default=(), help="Only these sample keys (default: the first ones).")
    parser.add_argument("--limit", type=int, default=12, help="Most rows (objects) on the sheet.")
    parser.add_argument("--side", type=int, default=224, help="Tile size in pixels.")
    args = parser.parse_args(argv)
    shards = sorted(glob.glob(os.path.join(args.candidates, "*.tar")))
    if not shards:
        LOG.error("no shard (*.tar) in %s", args.candidates)
        return 2
    manifest = os.path.join(args.candidates, MANIFEST)
    try:
        if os.path.isfile(manifest):  # a run's folder: its shards must be the ones its manifest lists
            verify_shards(args.candidates, read_json(manifest)["shardlist"])
    except ShardMismatch as error:
        LOG.error("%s", error)
        return 2
    kind = sample_kind(shards)
    if kind not in SHEETS:
        LOG.error("no contact sheet for samples of kind %r (known: %s)", kind, ", ".join(SHEETS))
        return 2
    sheet = SHEETS[kind](shards, args.keys, limit=args.limit, side=args.side)
    sheet.save(args.output, quality=88)
    LOG.info("wrote %s (%dx%d) from %d shards", args.output, sheet.width, sheet.height, len(shards))
    return 0
