"""Every command, given a value a setting does not take (as a flag or as an environment variable),
exits 2 with one line naming it and what it takes; given a flag it does not have, exits 2 with its
own usage. Never a traceback."""

from __future__ import annotations

import argparse
import math
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic_settings import BaseSettings

from logmesh.cli.main import build_parser, main, subcommands
from logmesh.common.processes import python_command
from logmesh.common.settings import SettingsError, settings_from_args
from logmesh.sink.settings import SinkSettings
from tests.harness import run_together

pytestmark = pytest.mark.timeout(120)

COMMANDS = (
    "up",
    "demo",
    "publish",
    "stats",
    "ingest",
    "query",
    "sink",
    "tail",
    "bench",
    "soak",
    "secrets",
    "nats-config",
)

JETSTREAM_NAME = "a JetStream name (1-255 characters, no spaces, '.', '*', '>', '/' or '\\')"
# command: (flag, a value it does not take, what it takes)
BAD_FLAGS = {
    "up": ("--http-port", "abc", "an integer from 0 to 65535"),
    "demo": ("--dup", "1", "a number >= 0 and < 1"),
    "publish": ("--events", "0", "an integer >= 1"),
    "stats": ("--url", "localhost:8080", "an http:// or https:// URL"),
    "ingest": ("--max-batch", "1e9", "an integer from 1 to 1000000"),
    "query": ("--log-level", "loud", "one of debug, info, warning, error"),
    "sink": ("--batch-size", "-1", "an integer from 1 to 100000"),
    "tail": ("--count", "-5", "an integer >= 0"),
    "bench": ("--runs", "zero", "an integer >= 1"),
    "soak": ("--duration", "nan", "a number > 0"),
    "secrets": ("--env-file", ".", "the path of a file to create"),
    "nats-config": ("--stream", "a.b", JETSTREAM_NAME),
}

# command: (variable, a value its setting does not take, what it takes)
BAD_ENV = {
    "up": ("LOGMESH_HTTP_PORT", "abc", "an integer from 0 to 65535"),
    "demo": ("LOGMESH_SERVE", "maybe", "true or false"),
    "publish": ("LOGMESH_GIVE_UP_AFTER", "-1", "a number > 0"),
    "stats": ("LOGMESH_RAW", "2", "true or false"),
    "ingest": ("LOGMESH_MAX_BODY_BYTES", "12", "an integer >= 1024"),
    "query": ("LOGMESH_QUERY_TIMEOUT", "0", "a number > 0"),
    "sink": ("LOGMESH_BATCH_SIZE", "-1", "an integer from 1 to 100000"),
    "tail": ("LOGMESH_LOG_FORMAT", "xml", "one of text, json"),
    "bench": ("LOGMESH_BENCH_EVENTS", "10", "an integer >= 1000"),
    "soak": ("LOGMESH_SOAK_KILL_EVERY", "inf", "a number > 0"),
    "secrets": ("LOGMESH_ENV_FILE", "/", "the path of a file to create"),
    "nats-config": ("LOGMESH_CLUSTER_SIZE", "0", "an integer from 1 to 9"),
}
# What a command needs besides the bad value, so that nothing else is wrong.
NEEDS = {"publish": ["--url", "http://127.0.0.1:1"]}


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``logmesh *argv`` in this process, for arguments that argparse refuses: nothing starts."""
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out = capsys.readouterr()
    return int(exited.value.code or 0), out.out, out.err


def refusal(*argv: str) -> str:
    """What ``logmesh *argv`` says of its settings, read as its handler reads them, without running it."""
    args = build_parser().parse_args(list(argv))
    with pytest.raises(SettingsError) as refused:
        settings_from_args(args.settings_cls, args)
    return f"{args.command_parser.prog}: {refused.value}"


def test_every_command_is_covered() -> None:
    assert set(subcommands(build_parser())) == set(COMMANDS) == set(BAD_FLAGS) == set(BAD_ENV)


@pytest.fixture(scope="module")
def bad_flag_runs() -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """``logmesh <command> <flag> <bad value>`` for every command, as real processes, run together."""
    yield run_together(
        {
            command: [command, *NEEDS.get(command, []), f"{flag}={value}"]
            for command, (flag, value, _) in BAD_FLAGS.items()
        },
        timeout=30,
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_flag_value_is_one_line_naming_the_flag_and_exit_2(
    bad_flag_runs: dict[str, subprocess.CompletedProcess[str]], command: str
) -> None:
    done = bad_flag_runs[command]
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    flag, value, rule = BAD_FLAGS[command]
    assert done.stderr.splitlines() == [f"logmesh {command}: {flag}: must be {rule}, not '{value}'"]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_environment_variable_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    variable, value, rule = BAD_ENV[command]
    monkeypatch.setenv(variable, value)
    said = refusal(command, *NEEDS.get(command, []))
    assert said == f"logmesh {command}: {variable}: must be {rule}, not '{value}'"


def test_a_bad_environment_variable_from_a_real_process() -> None:
    env = {**os.environ, "LOGMESH_BATCH_SIZE": "lots"}
    done = subprocess.run(python_command("sink"), capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "logmesh sink: LOGMESH_BATCH_SIZE: must be an integer from 1 to 100000, not 'lots'"
    ]


def test_a_flag_beats_a_bad_variable_and_is_named_when_it_is_bad_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGMESH_HTTP_PORT", "abc")
    said = refusal("up", "--http-port", "-2")
    assert said == "logmesh up: --http-port: must be an integer from 0 to 65535, not '-2'"


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unknown_flag_gets_the_commands_own_usage(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, err = run_main(capsys, command, "--no-such-flag", "1")
    assert code == 2 and out == ""
    assert err.startswith(f"usage: logmesh {command} [-h]")
    assert err.splitlines()[-1] == f"logmesh {command}: error: unrecognized arguments: --no-such-flag 1"


def test_an_unknown_flag_from_a_real_process() -> None:
    done = subprocess.run(python_command("stats", "--stream", "LOGS"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: logmesh stats [-h] [--url URL] [--raw | --no-raw]")
    assert done.stderr.splitlines()[-1] == "logmesh stats: error: unrecognized arguments: --stream LOGS"
    assert "Traceback" not in done.stderr


def test_several_bad_values_are_said_together_on_one_line() -> None:
    assert refusal("sink", "--batch-size", "0", "--log-format", "xml") == (
        "logmesh sink: --log-format: must be one of text, json, not 'xml'; "
        "--batch-size: must be an integer from 1 to 100000, not '0'"
    )


def test_a_long_bad_value_is_cut_short() -> None:
    line = refusal("sink", "--batch-size", "9" * 10_000)
    assert line.startswith("logmesh sink: --batch-size: must be an integer from 1 to 100000, not '999")
    assert line.endswith("...'") and len(line) < 200


# ---- the translation, for any text at all -----------------------------------------------------

_text = st.one_of(
    st.text(),
    st.sampled_from(
        ["", " ", "١٢", "\uff11\uff12", "1_000", "1e3", "0x10", "-0", "+5", "nan", "inf", "-inf", "🙂", "\udcff"]
    ),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def _outcome(settings_cls: type[BaseSettings], name: str, value: str) -> Any:
    """The setting's value, or the error line (which must name the flag and be one line)."""
    try:
        return getattr(settings_from_args(settings_cls, argparse.Namespace(**{name: value})), name)
    except SettingsError as exc:
        return str(exc)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(_text)
def test_an_integer_setting_takes_a_number_in_range_or_says_what_it_takes(value: str) -> None:
    got = _outcome(SinkSettings, "batch_size", value)
    if isinstance(got, str):
        assert got.startswith("--batch-size: must be an integer from 1 to 100000, not ")
        assert "\n" not in got and "\r" not in got and len(got) < 200
    else:
        assert isinstance(got, int) and 1 <= got <= 100_000


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(_text)
def test_a_number_setting_takes_a_finite_number_in_range_or_says_what_it_takes(value: str) -> None:
    got = _outcome(SinkSettings, "linger", value)
    if isinstance(got, str):
        assert got.startswith("--linger: must be a number from 0 to 5, not ")
        assert "\n" not in got and "\r" not in got and len(got) < 200
    else:
        assert isinstance(got, float) and math.isfinite(got) and 0 <= got <= 5


_settable = st.text(st.characters(codec="utf-8", exclude_characters="\x00"))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(_settable)
def test_a_choice_from_the_environment_is_one_of_the_choices_or_named(value: str) -> None:
    os.environ["LOGMESH_LOG_LEVEL"] = value
    try:
        level = settings_from_args(SinkSettings, argparse.Namespace()).log_level
    except SettingsError as exc:
        assert str(exc).startswith("LOGMESH_LOG_LEVEL: must be one of debug, info, warning, error, not ")
        assert "\n" not in str(exc)
    else:
        assert level == value and value in ("debug", "info", "warning", "error")
    finally:
        del os.environ["LOGMESH_LOG_LEVEL"]
