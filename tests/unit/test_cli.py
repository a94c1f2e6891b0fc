import argparse

import pytest

from cli.main import EXIT_CONFIG, build_parser, main


def _all_command_paths(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _all_command_paths(sub, (*prefix, name))


COMMANDS = list(_all_command_paths(build_parser()))


def test_the_command_tree_has_the_documented_commands():
    assert {("stack", "up"), ("stack", "down"), ("stack", "status"), ("stack", "logs"), ("topics", "apply"),
            ("topics", "list"), ("config", "show"), ("sink", "elasticsearch"), ("demo",)} <= set(COMMANDS)


@pytest.mark.parametrize("path", [(), *COMMANDS], ids=lambda p: " ".join(p) or "tracetap")
def test_every_command_has_help(path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*path, "--help"])
    assert exit_.value.code == 0
    assert "usage: tracetap" in capsys.readouterr().out


def test_bad_configuration_exits_78_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv("TRACETAP_STACK__KAFKA_PORT", "abc")
    assert main(["config", "show"]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["tracetap: invalid setting stack.kafka_port: 'abc' is not a whole number"]


def test_missing_config_file_is_a_config_error(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.toml"), "config", "show"]) == EXIT_CONFIG
    assert "does not exist" in capsys.readouterr().err


def test_config_file_is_read(tmp_path, capsys):
    config = tmp_path / "tracetap.toml"
    config.write_text('[kafka]\nbootstrap_servers = "broker-1:9093"\n[elasticsearch]\npassword = "pw"\nusername = "elastic"\n')
    assert main(["--config", str(config), "config", "show"]) == 0
    out = capsys.readouterr().out
    assert '"broker-1:9093"' in out and '"pw"' not in out and '"****"' in out


def test_topics_list_markdown_names_every_topic(capsys):
    assert main(["topics", "list", "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "`tracetap.raw.socket-data`" in out and "`tracetap.deadletter`" in out


@pytest.mark.parametrize("argv, says", [
    (["streams", "flink", "--bounded", "--from-checkpoint", "latest"], "FLINK-31006"),
    (["streams", "flink", "--target", "remote"], "--jobmanager HOST:PORT"),
])
def test_flink_options_that_cannot_work_are_refused_as_usage_errors(argv, says, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]


def test_a_stream_flag_overrides_the_streams_section_for_one_run():
    from cli.main import _stream_settings
    from tracetap.config import load_settings

    settings = load_settings({"streams": {"window_s": 30, "trace_gap_s": 2, "flink_parallelism": 4}})
    args = build_parser().parse_args(["streams", "flink", "--window-s", "5", "--parallelism", "1"])
    streams = _stream_settings(settings, args)
    assert (streams.window_s, streams.flink_parallelism) == (5, 1)  # the flags
    assert streams.trace_gap_s == 2 and streams.flink_checkpoint_interval_s == 10  # the file, and the default


def test_a_stream_flag_out_of_range_exits_78(capsys):
    assert main(["streams", "faust", "--window-s", "0"]) == EXIT_CONFIG
    assert "streams.window_s" in capsys.readouterr().err
