"""``counterfactory review``: review a candidate set or a built version in the browser; ``review export``: its decisions.

    counterfactory review out/candidates --db review.sqlite     # prints http://127.0.0.1:PORT/?token=...
    counterfactory review export --db review.sqlite --output decisions.jsonl
    counterfactory build --candidates out/candidates --decisions decisions.jsonl --output out/datasets --name demo --version v2

The first run indexes the dataset once (``review.cache/`` beside the database, with the
cached thumbnails); decisions are rows of the SQLite database. docs/REVIEW.md has the keys.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Any, Mapping, Optional, Sequence

from pipeline.arguments import StrictArgumentParser
from pipeline.finalize import LINEAGE, MANIFEST, STATS
from pipeline.options import mapping_option
from review.app import ReviewApp, ReviewConfig, bind, create_app, serve
from review.images import ImageCache
from review.index import DatasetSource, open_index
from review.store import DecisionStore, export_all
from schemas.decisions import decisions_jsonl
from transforms.io.files import read_json
from transforms.io.shards import verify_shards
from transforms.thresholds import DEFAULT_THRESHOLDS, Thresholds

LOG = logging.getLogger(__name__)

#: Which finished runs can be reviewed: the job that wrote them -> where their thresholds come from.
_REVIEWABLE = ("bootstrap", "evaluate", "build")


def _thresholds(job: str, lineage: Mapping[str, Any], overrides: Mapping[str, Any]) -> Thresholds:
    """A build's own thresholds, or the defaults for a candidate set; ``--thresholds`` over either (null drops one)."""
    if job == "build":
        bounds = {name: next(iter(bound.values())) for name, bound in lineage.get("thresholds", {}).items()}
    else:
        bounds = dict(DEFAULT_THRESHOLDS)
    bounds.update(overrides)
    return Thresholds({name: bound for name, bound in bounds.items() if bound is not None})


def dataset_source(folder: str, overrides: Mapping[str, Any]) -> DatasetSource:
    """The dataset a folder holds (a finished bootstrap output or build version); ``ValueError`` saying why not."""
    folder = os.path.abspath(folder.rstrip("/"))
    if not os.path.isfile(os.path.join(folder, STATS)):
        raise ValueError(f"{folder} is not a finished candidate set or version (no {STATS})")
    job = read_json(os.path.join(folder, STATS)).get("job")
    if job not in _REVIEWABLE:
        raise ValueError(f"{folder} was written by {job!r}; review reads {' or '.join(_REVIEWABLE)} outputs")
    verify_shards(folder, read_json(os.path.join(folder, MANIFEST))["shardlist"])  # a changed or mixed folder
    lineage = read_json(os.path.join(folder, LINEAGE))
    name = lineage.get("dataset") or os.path.basename(folder)
    return DatasetSource(folder=folder, manifest=MANIFEST, version=f"{name}@{lineage['content_sha256'][:12]}",
                         thresholds=_thresholds(job, lineage, overrides))


def _serve(argv: Sequence[str]) -> int:
    parser = StrictArgumentParser(prog="counterfactory review", description=__doc__.split("\n")[0].split(": ", 1)[1])
    parser.add_argument("dataset", help="A finished bootstrap output (candidate shards) or build version folder.")
    parser.add_argument("--db", default="review.sqlite", help="Decisions database (created if missing).")
    parser.add_argument("--host", default="127.0.0.1", help="Address to listen on (default: this machine only).")
    parser.add_argument("--port", type=int, default=0, help="Port (0: any free one).")
    parser.add_argument("--thresholds", type=mapping_option, default={},
                        help="Thresholds shown and queued by, over the dataset's own, e.g. '{seam: 0.4}'.")
    args = parser.parse_args(argv)
    try:
        config = ReviewConfig(db=args.db, host=args.host, port=args.port)
        source = dataset_source(args.dataset, args.thresholds)
    except ValueError as error:
        LOG.error("%s", error)
        return 2
    index = open_index(source, config.cache_dir)
    store = DecisionStore(config.db, index.version, index.path)
    review = ReviewApp(index, store, ImageCache(os.path.join(config.cache_dir, "pictures")))
    sock = bind(config.host, config.port)
    host, port = sock.getsockname()[:2]
    shown_host = f"[{host}]" if ":" in host else host
    LOG.info("reviewing %s (%d samples, %s) with decisions in %s", source.folder, index.count, index.version, config.db)
    if index.corrupt:
        LOG.warning("%d samples left out of the review: their bytes differ from the digest recorded when they were "
                    "written (sample_digest_mismatch)", index.corrupt)
    sys.stdout.write(f"http://{shown_host}:{port}/?token={review.sessions.invite()}\n")
    sys.stdout.flush()
    try:
        serve(create_app(review), sock)
    finally:
        index.close()
    return 0


def _export(argv: Sequence[str]) -> int:
    parser = StrictArgumentParser(prog="counterfactory review export",
                                     description="Write the decisions file that 'counterfactory build --decisions' reads.")
    parser.add_argument("--db", default="review.sqlite", help="Decisions database.")
    parser.add_argument("--output", required=True, help="Decisions file to write (JSON Lines).")
    parser.add_argument("--dataset-version", dest="dataset_version",
                        help="Only this dataset version's decisions (as the review page shows it); default: all.")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.db):
        LOG.error("no decisions database at %s", args.db)
        return 2
    decisions = export_all(args.db, args.dataset_version)
    partial = f"{args.output}.partial"
    with open(partial, "wb") as file:
        file.write(decisions_jsonl(decisions))
    os.replace(partial, args.output)
    LOG.info("wrote %d decisions to %s", len(decisions), args.output)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["export"]:
        return _export(argv[1:])
    return _serve(argv)
