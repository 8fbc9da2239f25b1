"""The ``logmesh`` command."""

from __future__ import annotations

import argparse
import sys

from logmesh import __version__
from logmesh.bench import command as bench
from logmesh.bench import soak
from logmesh.cli import commands, services, tail


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
    bench.register(sub)
    soak.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
