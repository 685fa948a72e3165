"""Options: YAML and flags resolve to one config, flags win, and mistakes are clear."""
import pytest
import yaml
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from jobs.common import InputOptions
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
