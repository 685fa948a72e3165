"""``counterfactory build``: candidate shards -> a versioned dataset of removal and insertion pairs.

    counterfactory build --candidates out/candidates --output out/datasets --name demo --version v1

writes ``out/datasets/demo/v1/``: pair shards, manifest, Parquet, stats, lineage and the
funnel report (``report.html``). A finished version is never overwritten: building
again needs a new ``--version``. Thresholds, ranking weights and review decisions are the
only inputs besides the candidates, so a build is cheap to repeat with other values
(``counterfactory thresholds`` previews a threshold's effect first).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import posixpath
import re
from typing import Any, Mapping, Optional, Sequence

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from jobs.common import build_config, cli_main, parse_job_options, run_info, run_pipeline, writer_config
from pipeline.build import FUNNEL_STEPS, BuildConfig, CandidateSet, build_pairs, load_candidate_set
from pipeline.finalize import STATS
from pipeline.options import ConfigError, RunOptions, mapping_option
from pipeline.versions import write_versions_index
from schemas.decisions import NO_DECISIONS, Decisions, DecisionsError, parse_decisions
from schemas.sample import PAIR_METADATA_SCHEMA
from transforms.io.files import read_bytes
from transforms.repaste import RepasteConfig
from transforms.thresholds import DEFAULT_THRESHOLDS, SCORES, Ranking, SelectionRules, Thresholds

LOG = logging.getLogger(__name__)

DESCRIPTION = "Candidate shards -> versioned removal and insertion pair shards, with a funnel report."
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def thresholds_option(text: str) -> dict[str, Any]:
    """``--thresholds``: a YAML file, or an inline mapping ``{seam: 0.4, redetect_score: null}``."""
    if not text.lstrip().startswith("{") and FileSystems.exists(text):
        text = read_bytes(text).decode("utf-8")
    return mapping_option(text)


class SelectionOptions(PipelineOptions):
    """How the candidate of each object is chosen: what ``build`` and ``thresholds`` share."""

    INPUTS = ("candidates", "decisions")  # checked by pipeline.preflight
    FILE_INPUTS = ("decisions",)

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        bounds = ", ".join(f"{name}: {bound}" for name, bound in DEFAULT_THRESHOLDS.items())
        directions = ", ".join(f"{name} ({spec.better})" for name, spec in SCORES.items())
        parser.add_argument("--candidates", action="append", default=None,
                            help="A finished bootstrap output folder; repeatable (the sets are merged).")
        parser.add_argument("--thresholds", type=thresholds_option, default={},
                            help=f"YAML file or inline mapping of score -> bound, over the defaults {{{bounds}}}; "
                                 f"null removes one. Scores and their good side: {directions}.")
        parser.add_argument("--ranking", type=mapping_option, default={},
                            help="Weights of the combined score that ranks candidates (default 1 each), e.g. '{seam: 2}'.")
        parser.add_argument("--decisions", help="Review decisions (JSON Lines, docs/FORMAT.md); they override thresholds.")


class BuildOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--version", help="Dataset version, e.g. v1 or 2026-11-21 (required; never overwritten).")
        parser.add_argument("--repaste", type=mapping_option, default={},
                            help="Re-paste settings (RepasteConfig), e.g. '{feather_px: 2, jpeg_quality: 95}'.")
        parser.add_argument("--thumbnails_per_side", type=int, default=4,
                            help="Report pictures per threshold, on each side of it.")
        parser.add_argument("--allow_empty", action="store_true",
                            help="Let a version that keeps no sample become 'latest' in versions.json (without it, "
                                 "such a version is recorded and listed, but latest stays the previous one).")


def selection_rules(options: SelectionOptions) -> SelectionRules:
    """Thresholds (defaults overridden per score), ranking weights and decisions from the options."""
    bounds = {**DEFAULT_THRESHOLDS, **options.thresholds}
    try:
        thresholds = Thresholds({name: bound for name, bound in bounds.items() if bound is not None})
    except ValueError as error:
        raise ConfigError(f"--thresholds: {error}") from error
    try:
        ranking = Ranking({**Ranking().weights, **options.ranking})
    except ValueError as error:
        raise ConfigError(f"--ranking: {error}") from error
    return SelectionRules(thresholds, ranking, _decisions(options.decisions))


def _decisions(path: Optional[str]) -> Decisions:
    if path is None:
        return NO_DECISIONS
    if not FileSystems.exists(path):
        raise ConfigError(f"--decisions {path!r} does not exist")
    try:
        decisions = parse_decisions(read_bytes(path), path)
    except (DecisionsError, UnicodeDecodeError) as error:
        raise ConfigError(f"--decisions: {error}") from error
    LOG.info("%s: %d decisions on %d keys", path, decisions.lines, len(decisions))
    return decisions


def candidate_sets(options: SelectionOptions) -> tuple[CandidateSet, ...]:
    if not options.candidates:
        raise ConfigError("--candidates is required (a bootstrap output folder)")
    try:
        return tuple(load_candidate_set(path) for path in options.candidates)
    except (ValueError, OSError, KeyError) as error:
        raise ConfigError(f"--candidates: {error}") from error


def _version_dir(options: PipelineOptions) -> tuple[str, str, str]:
    """(name, version, folder) of the dataset version; refuses a finished one."""
    run, build = options.view_as(RunOptions), options.view_as(BuildOptions)
    if not run.name or not build.version:
        raise ConfigError("--name and --version are required: a build writes OUTPUT/NAME/VERSION")
    for flag, value in (("--name", run.name), ("--version", build.version)):
        if not _PLAIN_NAME.match(value):
            raise ConfigError(f"{flag} must be a plain name (letters, digits, '.', '_', '-'), got {value!r}")
    folder = FileSystems.join(run.output.rstrip("/"), run.name, build.version)
    if FileSystems.exists(FileSystems.join(folder, STATS)):
        raise ConfigError(f"{run.name} {build.version} already exists in {folder}; versions are never overwritten, "
                          f"choose a new --version")
    return run.name, build.version, folder


def build_job_config(options: PipelineOptions) -> BuildConfig:
    """Typed configs from the parsed options; candidate sets and decisions read and checked."""
    name, version, folder = _version_dir(options)
    selection, job = options.view_as(SelectionOptions), options.view_as(BuildOptions)
    sets = candidate_sets(selection)
    rules = selection_rules(selection)
    repaste = build_config(RepasteConfig, job.repaste, "repaste")
    if job.thumbnails_per_side < 0:
        raise ConfigError(f"--thumbnails_per_side must be >= 0, got {job.thumbnails_per_side}")
    models: dict[str, str] = {}
    for candidate_set in sets:
        for role, model in candidate_set.models.items():
            if models.setdefault(role, model) != model:
                models[role] = f"{models[role]} + {model}"  # candidate sets mined with different models
    decisions = rules.decisions
    lineage = {
        "version": version,
        "candidate_sets": [candidate_set.lineage() for candidate_set in sets],
        "thresholds": rules.thresholds.to_json(),
        "ranking_weights": dict(rules.ranking.weights),
        "decisions": None if decisions.sha256 is None else {
            "path": selection.decisions, "sha256": decisions.sha256, "lines": decisions.lines, "keys": len(decisions)},
        "repaste": dataclasses.asdict(repaste),
        "allow_empty": job.allow_empty,
    }
    run = run_info(options, "build", [SelectionOptions, BuildOptions], [s.path for s in sets], FUNNEL_STEPS,
                   models=models, lineage=lineage)
    return BuildConfig(
        candidate_sets=sets,
        rules=rules,
        repaste=repaste,
        writer=writer_config(options, PAIR_METADATA_SCHEMA, directory=folder),
        run=dataclasses.replace(run, dataset_name=f"{name}-{version}"),
        thumbnails_per_side=job.thumbnails_per_side,
    )


def run(argv: Optional[Sequence[str]] = None) -> Mapping[str, Any]:
    """Build a dataset version; returns its stats, raises ``LedgerError`` if its ledger does not close."""
    options = parse_job_options(argv, "build", DESCRIPTION, SelectionOptions, BuildOptions)
    config = build_job_config(options)
    stats = run_pipeline(options, lambda pipeline: build_pairs(pipeline, config), config.writer.output_dir)
    LOG.info("report: %s", FileSystems.join(config.writer.output_dir, "report.html"))
    index = write_versions_index(posixpath.dirname(config.writer.output_dir.rstrip("/")))
    if not stats["shards"]["samples"] and not options.view_as(BuildOptions).allow_empty:
        LOG.warning("%s keeps no sample: it is recorded and listed, but latest stays %s (pass --allow_empty to make "
                    "an empty version latest)", config.run.dataset_name, index["latest"])
    return stats


def main(argv: Optional[Sequence[str]] = None) -> int:
    return cli_main(run, argv)

