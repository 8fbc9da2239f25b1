"""``--help``: each command lists the flags it uses and no other, with readable defaults and the
values each takes; the README's usage block is the parser's."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

import pytest

from logmesh.cli.main import build_parser, subcommands
from logmesh.cli.usage import BEGIN, END, with_usage
from logmesh.common.processes import python_command
from logmesh.common.settings import settings_from_args
from logmesh.sink.settings import SinkSettings

pytestmark = pytest.mark.timeout(60)

README = Path(__file__).resolve().parent.parent / "README.md"

LOGGING = {"--log-level", "--log-format"}
STREAM_SHAPE = {"--duplicate-window", "--max-age", "--stream-max-bytes", "--replicas", "--stream-partitions"}
WORKLOAD = {"--events", "--dup", "--topics", "--batch", "--clients", "--run-id"}
HTTP_AUTH = {"--ingest-token", "--query-token", "--ingest-token-file", "--query-token-file", "--no-auth"}
HTTP = {"--host", "--http-port", "--tls-cert", "--tls-key"} | HTTP_AUTH
NATS_AUTH = {"--nats-user", "--nats-password", "--nats-creds", "--nats-tls-ca", "--nats-tls-cert", "--nats-tls-key"}

# What each command uses: its --help lists exactly these (and -h).
FLAGS = {
    "up": {"--data-dir", "--nats-port", "--nats-url", "--nats-io", "--metrics-port", "--stream"}
    | {"--nats-nodes", "--partitions", "--sinks", "--lease-ttl"}
    | {"--publisher-password", "--admin-nats-password"}
    | NATS_AUTH
    | HTTP
    | LOGGING
    | STREAM_SHAPE,
    "demo": {"--data-dir", "--nats-port", "--serve"} | HTTP | LOGGING | WORKLOAD,
    "publish": {"--url", "--nats-url", "--nats-io", "--give-up-after", "--ingest-token", "--data-dir"}
    | NATS_AUTH
    | LOGGING
    | WORKLOAD,
    "stats": {"--url", "--raw", "--no-raw", "--query-token", "--data-dir"},
    "tail": {"--nats-url", "--stream", "--topic", "--all", "--count", "--data-dir"} | NATS_AUTH | LOGGING,
    "ingest": {"--nats-url", "--nats-io", "--stream", "--max-batch", "--max-body-bytes", "--body-timeout"}
    | {"--publish-timeout", "--msg-id-key"}
    | NATS_AUTH
    | HTTP
    | LOGGING
    | STREAM_SHAPE,
    "query": {"--nats-url", "--nats-io", "--stream", "--consumer", "--query-timeout", "--cluster-nodes"}
    | NATS_AUTH
    | HTTP
    | LOGGING,
    "sink": {"--nats-url", "--nats-io", "--stream", "--data-dir", "--metrics-host", "--metrics-port", "--consumer"}
    | {"--decoder", "--batch-size", "--linger", "--poison-after", "--ack-wait", "--max-ack-pending"}
    | {"--memory-limit", "--db-threads", "--checkpoint-threshold"}
    | {"--partitions", "--standby", "--sink-name", "--lease-ttl"}
    | NATS_AUTH
    | LOGGING
    | STREAM_SHAPE,
    "bench": {"--parts", "--runs", "--events", "--dup", "--topics", "--preload", "--growth-events", "--json-out"},
    "soak": {"--duration", "--rate", "--kill-every", "--seed", "--data-dir"},
    "secrets": {"--env-file"},
    "nats-config": {"--stream", "--cluster-size"},
}
FLAGS["tail"] |= {"--no-all"}
FLAGS["demo"] |= {"--no-serve"}


def parsers() -> dict[str, argparse.ArgumentParser]:
    return subcommands(build_parser())


def flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings} - {"-h", "--help"}


def help_text(command: str) -> str:
    return parsers()[command].format_help()


def test_every_command_lists_the_flags_it_uses_and_no_other() -> None:
    assert {name: flags(parser) for name, parser in parsers().items()} == FLAGS


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_help_shows_readable_defaults_and_no_test_aid(command: str) -> None:
    text = help_text(command)
    assert "failpoints" not in text.lower()
    assert "PosixPath" not in text and "default None" not in text and "default ''" not in text
    assert not re.search(r"default '[^']*'", text), "a default in quotes: shown as repr, not as typed"


@pytest.mark.parametrize("command", sorted(c for c, f in FLAGS.items() if "--log-level" in f))
def test_help_shows_the_choices(command: str) -> None:
    text = help_text(command)
    assert "--log-level {debug,info,warning,error}" in text
    assert "--log-format {text,json}" in text


def test_help_shows_defaults_as_typed_and_ranges_from_the_field_constraints() -> None:
    up = " ".join(help_text("up").split())  # argparse wraps lines where the terminal ends
    assert "[env LOGMESH_DATA_DIR; default data]" in up
    assert (
        "HTTP listen port (0 picks a free one); an integer from 0 to 65535 [env LOGMESH_HTTP_PORT; default 8080]" in up
    )
    said = "use this NATS server instead of starting one (every part connects with the --nats-user, --nats-creds or "
    assert said + "URL credentials given) [env LOGMESH_NATS_URL; default none]" in up
    assert "a number > 0 [env LOGMESH_DUPLICATE_WINDOW; default 120]" in up
    sink = " ".join(help_text("sink").split())
    assert "--decoder {sql,reference}" in sink
    assert "an integer from 1 to 100000 [env LOGMESH_BATCH_SIZE; default 20000]" in sink
    assert "a number from 0 to 5 [env LOGMESH_LINGER; default 0.05]" in sink
    stats = " ".join(help_text("stats").split())
    assert "--raw, --no-raw" in stats and "[env LOGMESH_RAW; default off]" in stats
    publish = " ".join(help_text("publish").split())
    assert "a number >= 0 and < 1 [env LOGMESH_DUP; default 0.35]" in publish
    assert "a number > 0 [env LOGMESH_GIVE_UP_AFTER; default 30]" in publish


def test_help_of_a_real_process() -> None:
    done = subprocess.run(python_command("tail", "--help"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "--nats-url" in done.stdout and "--topic" in done.stdout
    for unused in ("--duplicate-window", "--max-age", "--replicas", "--nats-io", "--failpoints"):
        assert unused not in done.stdout


def test_failpoints_are_an_environment_variable_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGMESH_FAILPOINTS", "sink.before_commit=kill")
    args = build_parser().parse_args(["sink"])
    assert settings_from_args(SinkSettings, args).failpoints == "sink.before_commit=kill"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["sink", "--failpoints", "sink.before_commit=kill"])


# ---- the README -------------------------------------------------------------------------------


def test_the_readme_usage_block_is_the_parsers() -> None:
    """Fails when a command gains a flag the README does not show: regenerate the block with
    ``python -m logmesh.cli.usage README.md``."""
    readme = README.read_text()
    assert readme.count(BEGIN) == 1 and readme.count(END) == 1
    assert with_usage(readme) == readme, "README.md: run `python -m logmesh.cli.usage README.md`"


@pytest.mark.parametrize("command", sorted(FLAGS))
def test_the_readme_shows_every_flag_of_every_command(command: str) -> None:
    block = README.read_text().split(BEGIN, 1)[1].split(END, 1)[0]
    usage = block.split(f"\nlogmesh {command} [-h]", 1)[1].split("\nlogmesh ", 1)[0].split("```", 1)[0]
    for flag in flags(parsers()[command]):
        assert re.search(rf"\[{re.escape(flag)}[ \]|]|\| {re.escape(flag)}\]", usage), (command, flag)
