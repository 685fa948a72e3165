"""Options: command line and YAML -> ``PipelineOptions`` subclasses -> typed stage configs.

A YAML file given with ``--config`` holds option names as keys (``max_shard_count: 500``);
flags on the command line override it. The resolved options are saved as ``config.yaml``
with every output, and that file can be passed back with ``--config`` to repeat a run.

A job knows its own options and every option of the ``PipelineOptions`` classes Beam ships
(``--runner``, ``--project``, ``--temp_location``, ...); anything else, on the command line
or as a YAML key, is refused before the job does any work (Beam alone would drop it with a
warning), and so are abbreviations (``--inp``).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import Any, Iterable, Optional, Sequence, Type

import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, _BeamArgumentParser

from pipeline.arguments import argument_error, did_you_mean, option_strings, unknown_argument
from transforms.checks import check_device

#: Beam modules whose options classes are not imported with ``pipeline_options`` (their runner's options).
_RUNNER_OPTION_MODULES = ("apache_beam.runners.render", "apache_beam.runners.dask.dask_runner")


class ConfigError(ValueError):
    """A user-facing configuration mistake: printed without a traceback by the CLI."""


class RunOptions(PipelineOptions):
    """Options every counterfactory job takes."""

    @classmethod
    def _add_argparse_args(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--output", help="Output directory (local, gs://, s3://, ...).")
        parser.add_argument("--config", help="YAML file of option values; command-line flags override it.")
        parser.add_argument("--name", help="Dataset name recorded in the manifest and lineage (default: output folder name).")
        parser.add_argument("--overwrite", action="store_true",
                            help="Replace a finished run already in --output (refused without it; build versions "
                                 "are never overwritten).")
        parser.add_argument(
            "--local_workers",
            type=int,
            default=1,
            help="Without --runner: 1 runs in-process (FnApiRunner); N>1 uses the DirectRunner with N processes.",
        )
        parser.add_argument("--shard_prefix", default="shard", help="Shard file names: PREFIX-BUCKET-PART.tar.")
        parser.add_argument("--max_shard_count", type=int, default=1000, help="Most samples in one shard.")
        parser.add_argument("--max_shard_bytes", type=int, default=1 << 30, help="Most bytes in one shard.")
        parser.add_argument("--min_shards", type=int, default=8,
                            help="Fewest shards a run of at least that many samples writes (one per DataLoader worker).")


def _read_config(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as stream:
            values = yaml.safe_load(stream) or {}
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option names to values")
    return values


def _yaml_to_argv(values: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for name, value in values.items():
        flag = f"--{name}"
        items = value if isinstance(value, list) else [value]
        for item in items:
            if item is None:
                continue
            if isinstance(item, bool):
                if item:
                    argv.append(flag)
                continue
            if isinstance(item, dict):
                # A group of stage settings (``selection: {min_score: 0.5}``): see :func:`mapping_option`.
                item = json.dumps(item, sort_keys=True)
            argv.append(f"{flag}={item}")
    return argv


def mapping_option(text: str) -> dict[str, Any]:
    """argparse ``type`` of an option holding a group of settings: a YAML (or JSON) mapping.

    In a ``--config`` file such an option is a nested mapping; on the command line it is
    written inline, e.g. ``--selection '{allow_labels: [person, cup], min_score: 0.4}'``.
    """
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise argparse.ArgumentTypeError(f"not a YAML mapping: {error}") from error
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{name: value}}', got {text!r}")
    return value


def device_option(text: str) -> str:
    """argparse ``type`` of ``--device``, so a wrong device is blamed on that flag."""
    try:
        check_device(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error
    return text


class _CheckingParser(_BeamArgumentParser):
    """Beam's parser (it knows value-provider arguments) with its errors raised as :class:`ConfigError`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(argument_error(message))


def _beam_option_classes() -> list[Type[PipelineOptions]]:
    """Every options class Beam ships that declares options (each once; subclasses searched recursively)."""
    for module in _RUNNER_OPTION_MODULES:
        try:
            importlib.import_module(module)
        except ImportError:  # an optional runner that is not installed: its options cannot be used either
            pass
    found: dict[int, Type[PipelineOptions]] = {}
    pending = list(PipelineOptions.__subclasses__())
    while pending:
        cls = pending.pop()
        pending += cls.__subclasses__()
        if cls.__module__.startswith("apache_beam.") and "_add_argparse_args" in cls.__dict__:
            found.setdefault(id(cls), cls)
    return list(found.values())


def _check_arguments(argv: Sequence[str], config: Optional[str], values: dict[str, Any],
                     option_classes: Sequence[Type[PipelineOptions]]) -> None:
    """Refuse an unknown flag or config key, an abbreviation, or a value its option's type refuses."""
    ours, parser = _CheckingParser(allow_abbrev=False), _CheckingParser(allow_abbrev=False)
    for options_class in option_classes:
        options_class._add_argparse_args(ours)
        options_class._add_argparse_args(parser)
    for options_class in _beam_option_classes():
        options_class._add_argparse_args(parser)
    own, known = option_strings(ours), option_strings(parser)
    for key in values:
        if f"--{key}" not in known:
            names = [flag[2:] for flag in own]
            raise ConfigError(f"unknown option {key!r} in config file {config}"
                              f"{did_you_mean(str(key), names, [flag[2:] for flag in known])}")
    _, extras = parser.parse_known_args(list(argv))
    if extras:
        raise ConfigError(unknown_argument(extras, own, known))


def _config_path(argv: Sequence[str]) -> Optional[str]:
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--config")
    known, _ = parser.parse_known_args(argv)
    return known.config


def _print_help(prog: str, description: str, option_classes: Iterable[Type[PipelineOptions]]) -> None:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog="Any Apache Beam pipeline option is accepted too (--runner, --project, --temp_location, ...).",
    )
    for options_class in option_classes:
        group = parser.add_argument_group(options_class.__name__)
        options_class._add_argparse_args(group)
    parser.print_help(sys.stdout)


def parse_options(
    argv: Optional[Sequence[str]], prog: str, description: str, *option_classes: Type[PipelineOptions]
) -> PipelineOptions:
    """Parse a job's argv (plus its ``--config`` YAML) into PipelineOptions with a local default runner."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _print_help(prog, description, (RunOptions, *option_classes))
        raise SystemExit(0)
    config = _config_path(argv)
    values = _read_config(config) if config else {}
    argv = _yaml_to_argv(values) + argv
    _check_arguments(argv, config, values, (RunOptions, *option_classes))
    options = PipelineOptions(argv)
    run = options.view_as(RunOptions)
    if not run.output:
        raise ConfigError("--output is required")
    if run.local_workers < 1:
        raise ConfigError(f"--local_workers must be >= 1, got {run.local_workers}")
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        if run.local_workers == 1:
            standard.runner = "FnApiRunner"
        else:
            from apache_beam.options.pipeline_options import DirectOptions

            standard.runner = "DirectRunner"
            direct = options.view_as(DirectOptions)
            direct.direct_running_mode = "multi_processing"
            direct.direct_num_workers = run.local_workers
    return options


#: Options that say how to run, not what the run is: left out of config.yaml and its checksum.
_NOT_RECORDED = frozenset({"config", "overwrite"})


def resolved_config(options: PipelineOptions, *option_classes: Type[PipelineOptions]) -> dict[str, Any]:
    """Our options' values (defaults included) plus the runner, for ``config.yaml``."""
    names: set[str] = set()
    for options_class in (RunOptions, *option_classes):
        parser = argparse.ArgumentParser(add_help=False)
        options_class._add_argparse_args(parser)
        names.update(action.dest for action in parser._actions)
    values = options.get_all_options(drop_default=False, retain_unknown_options=False)
    config = {name: values[name] for name in sorted(names) if name in values and name not in _NOT_RECORDED}
    config["runner"] = options.view_as(StandardOptions).runner
    return config
