"""The ``logmesh`` command."""

from __future__ import annotations

import argparse
import sys

from logmesh import __version__
from logmesh.bench import command as bench
from logmesh.bench import soak_command as soak
from logmesh.cli import commands, secrets_commands, services, tail
from logmesh.common.settings import SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="logmesh",
        description="Pub-sub log aggregator: NATS JetStream in, each distinct event stored once in DuckDB.",
    )
    parser.add_argument("--version", action="version", version=f"logmesh {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(sub)
    services.register(sub)
    tail.register(sub)
    secrets_commands.register(sub)
    bench.register(sub)
    soak.register(sub)
    return parser


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command's own parser, by name."""
    found = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(found.choices)


def main(argv: list[str] | None = None) -> int:
    """Runs one command. A flag the command does not have gets the command's own usage; a value a
    setting does not take (flag or environment variable) gets one line naming it. Both exit 2."""
    args, unknown = build_parser().parse_known_args(argv)
    command: argparse.ArgumentParser = args.command_parser
    if unknown:
        command.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        code: int = args.handler(args)
    except SettingsError as exc:
        print(f"{command.prog}: {exc}", file=sys.stderr, flush=True)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
