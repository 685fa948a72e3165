"""Options: YAML and flags resolve to one config, flags win, and mistakes are clear."""
import logging

import pytest
import yaml
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from jobs import cli
from jobs.common import InputOptions
from pipeline.arguments import StrictArgumentParser
from pipeline.options import ConfigError, RunOptions, parse_options, resolved_config


def parse(argv):
    return parse_options(argv, "test", "test", InputOptions)


def test_yaml_values_apply_and_flags_override_them(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"output": "/tmp/a", "max_shard_count": 50, "input": ["x/", "y/"], "jpeg_quality": 80}))
    options = parse(["--config", str(config), "--max_shard_count", "7"])
    run = options.view_as(RunOptions)
    assert run.output == "/tmp/a" and run.max_shard_count == 7
    assert options.view_as(InputOptions).input == ["x/", "y/"]
    resolved = resolved_config(options, InputOptions)
    assert resolved["max_shard_count"] == 7 and resolved["jpeg_quality"] == 80 and resolved["runner"] == "FnApiRunner"
    assert "config" not in resolved


def test_saved_config_repeats_the_run(tmp_path):
    first = parse(["--output", "/tmp/b", "--max_pixels", "1000"])
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(resolved_config(first, InputOptions)))
    again = parse(["--config", str(saved)])
    assert resolved_config(again, InputOptions) == resolved_config(first, InputOptions)


def test_local_workers_select_the_multiprocess_direct_runner():
    options = parse(["--output", "/tmp/c", "--local_workers", "3"])
    assert options.view_as(StandardOptions).runner == "DirectRunner"
    direct = options.view_as(DirectOptions)
    assert direct.direct_running_mode == "multi_processing" and direct.direct_num_workers == 3
    explicit = parse(["--output", "/tmp/c", "--runner", "PortableRunner"])
    assert explicit.view_as(StandardOptions).runner == "PortableRunner"


@pytest.mark.parametrize(
    "content, message",
    [("- a list\n", "mapping"), ("a: [unclosed\n", "not valid YAML")],
)
def test_bad_config_files_are_explained(tmp_path, content, message):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message):
        parse(["--config", str(config), "--output", "/tmp/d"])


def test_missing_output_and_missing_config_file_are_explained(tmp_path):
    with pytest.raises(ConfigError, match="--output is required"):
        parse([])
    with pytest.raises(ConfigError, match="cannot read config file"):
        parse(["--config", str(tmp_path / "absent.yaml")])


def test_help_lists_our_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--max_shard_count" in out and "--annotations" in out and "Apache Beam pipeline option" in out


# --------------------------------------------------------------------------- unknown options (issue 19)

@pytest.mark.parametrize("argv, message", [
    (["--inptu", "DIR"], r"^unknown option --inptu \(did you mean --input\?\)$"),
    (["--inp", "DIR"], r"^unknown option --inp \(did you mean --input\?\)$"),  # no abbreviations
    (["--jpeg_qualty=80"], r"^unknown option --jpeg_qualty \(did you mean --jpeg_quality\?\)$"),
    (["--device", "cpu"], r"^unknown option --device$"),  # another job's option, not this one's
    (["stray"], r"^unexpected argument 'stray'$"),
    (["--max_shard_count", "many"], r"^--max_shard_count: invalid int value: 'many'$"),
])
def test_unknown_options_are_refused_in_one_line(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse(["--output", "/tmp/e", *argv])


def test_beam_runner_options_pass_through():
    options = parse(["--output", "/tmp/f", "--runner", "DirectRunner", "--project", "p", "--region", "r",
                     "--temp_location", "/tmp/t", "--direct_num_workers", "2", "--experiments", "a",
                     "--experiments=b", "--environment_type=LOOPBACK", "--flink_master=localhost:8081",
                     "--sdk_container_image", "img", "--no_use_public_ips", "--render_output", "g.svg"])
    all_options = options.get_all_options()
    assert all_options["project"] == "p" and all_options["experiments"] == ["a", "b"]
    assert all_options["direct_num_workers"] == 2 and all_options["use_public_ips"] is False


def test_unknown_config_keys_are_refused_and_beam_keys_pass(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"output": "/tmp/g", "inptu": ["x/"]}))
    with pytest.raises(ConfigError, match=rf"^unknown option 'inptu' in config file {config} \(did you mean input\?\)$"):
        parse(["--config", str(config)])
    config.write_text(yaml.safe_dump({"output": "/tmp/g", "runner": "DirectRunner", "project": "p"}))
    assert parse(["--config", str(config)]).view_as(StandardOptions).runner == "DirectRunner"
    with pytest.raises(ConfigError, match="unknown option --conf"):  # not an abbreviation of --config
        parse(["--conf", str(config)])


def test_the_strict_parser_refuses_unknown_and_abbreviated_options_first(caplog):
    parser = StrictArgumentParser(prog="counterfactory thing")
    parser.add_argument("--to", required=True)
    parser.add_argument("--limit", type=int)
    assert parser.parse_args(["--to", "x", "--limit=3"]).limit == 3
    for argv, line in ((["--t", "x"], "counterfactory thing: unknown option --t (did you mean --to?)"),
                       (["--to", "x", "--limt", "3"], "counterfactory thing: unknown option --limt (did you mean --limit?)"),
                       (["--to", "x", "extra"], "counterfactory thing: unexpected argument 'extra'"),
                       (["--limit", "3"], "counterfactory thing: the following arguments are required: --to")):
        caplog.clear()
        with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
            parser.parse_args(argv)
        assert exit_info.value.code == 2 and [record.getMessage() for record in caplog.records] == [line]


#: A first argument some commands need before they read options.
_LEADING = {"review": ["export"], "models": ["list"]}


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_refuses_an_unknown_option(command, caplog, tmp_path):
    with caplog.at_level(logging.ERROR):
        try:
            code = cli.main([command, *_LEADING.get(command, []), "--outptu", str(tmp_path / "out")])
        except SystemExit as exit_info:
            code = exit_info.code
    assert code == 2
    messages = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len(messages) == 1 and "unknown option --outptu" in messages[0], messages
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- the top-level command (issue 19)

@pytest.mark.parametrize("argv, line", [
    (["buidl"], "counterfactory: unknown command 'buidl' (did you mean build?)"),
    (["--log-level", "WARNING", "revew", "x"], "counterfactory: unknown command 'revew' (did you mean review?)"),
    (["zzz"], "counterfactory: unknown command 'zzz' (counterfactory --help lists them)"),
    (["--log-levl", "DEBUG", "build"], "counterfactory: unknown option --log-levl (did you mean --log-level?)"),
])
def test_an_unknown_command_is_refused_in_one_line_with_the_closest(argv, line, caplog, capsys):
    """Before: argparse's two lines (usage, then 'invalid choice' and all sixteen commands)."""
    with caplog.at_level(logging.ERROR), pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2 and [record.getMessage() for record in caplog.records] == [line]
    assert capsys.readouterr().err == ""  # nothing but the logged line (no usage)


def test_the_help_lists_every_command_and_models_says_bundle_and_install(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0
    listed = {line.split()[0] for line in out.split("commands:\n", 1)[1].splitlines() if line.startswith("  ") and
              not line.startswith("   ")}
    assert listed == set(cli.COMMANDS)
    models = out.split("  models", 1)[1].split("\n\n")[0]
    assert "bundle" in models and "install" in models


def test_a_command_gets_every_argument_after_its_name(monkeypatch):
    seen = []
    monkeypatch.setitem(cli.COMMANDS, "echo", cli.Command("test", "builtins:print"))
    monkeypatch.setattr(cli.Command, "load", lambda self: seen.append)
    assert cli.main(["--log-level", "WARNING", "echo", "export", "--help", "--log-level", "DEBUG"]) == 0
    assert seen == [["export", "--help", "--log-level", "DEBUG"]]
