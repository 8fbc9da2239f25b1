"""``logmesh ingest``, ``logmesh query``, ``logmesh sink``: one service per process."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from logmesh.cli.runner import refuse, run, serve_http
from logmesh.common.claims import DirLock, Refused, listen_socket, lock_data_dir, lock_store
from logmesh.common.jetstream import StoppedWaiting
from logmesh.common.logs import setup_logging
from logmesh.common.settings import add_command, settings_from_args
from logmesh.ingest.settings import IngestSettings
from logmesh.query.settings import QuerySettings
from logmesh.sink.settings import SinkSettings

log = logging.getLogger("logmesh")

# Each command imports only its own service, inside the command: the sink's DuckDB and Arrow would
# slow the start of ingest and query and double their memory; a restarted service is back sooner.


def ingest_command(args: argparse.Namespace) -> int:
    from logmesh.ingest.app import create_app

    settings = settings_from_args(IngestSettings, args)
    setup_logging(settings.log_level, settings.log_format)
    try:
        listener = listen_socket(settings.host, settings.http_port, "--http-port")
    except Refused as exc:
        return refuse("ingest", exc)

    async def main(stopping: asyncio.Event) -> int:
        refused: list[str] = []

        def ready(port: int) -> None:
            log.info("ingest listening on %s://%s:%d (POST /publish)", settings.http_scheme, settings.host, port)

        def refuse_stream(reason: str) -> None:  # a stream of another number of partitions: exit 2
            refused.append(reason)
            stopping.set()

        code = await serve_http(create_app(settings, on_refused=refuse_stream), listener, stopping, ready, settings)
        if refused:
            print(f"logmesh ingest: {refused[0]}", file=sys.stderr, flush=True)
            return 2
        return code

    return run(main)


def query_command(args: argparse.Namespace) -> int:
    from logmesh.query.app import create_app

    settings = settings_from_args(QuerySettings, args)
    setup_logging(settings.log_level, settings.log_format)
    try:
        listener = listen_socket(settings.host, settings.http_port, "--http-port")
    except Refused as exc:
        return refuse("query", exc)

    async def main(stopping: asyncio.Event) -> int:
        def ready(port: int) -> None:
            url = f"{settings.http_scheme}://{settings.host}:{port}"
            log.info("query listening on %s (GET /stats /events /dead-letters)", url)

        return await serve_http(create_app(settings), listener, stopping, ready, settings)

    return run(main)


def sink_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(SinkSettings, args)
    setup_logging(settings.log_level, settings.log_format)
    claims: list[DirLock] = []
    try:
        # Under ``logmesh up`` the parent holds the data directory; any other holder is refused.
        whole = lock_data_dir(settings.data_dir, "logmesh sink", parent_may_hold=True)
        claims += [whole] if whole is not None else []
        if whole is not None:
            # A standalone sink owns the directory, store included. Under ``logmesh up`` several sinks
            # may share it: each claims the store files it serves (one lock per partition file).
            claims.append(lock_store(settings.data_dir, settings.db_path, "logmesh sink"))
    except Refused as exc:
        _release(claims)
        return refuse("sink", exc)

    from logmesh.sink.service import Sink, SinkRefused

    # A file-size limit (ulimit -f) then fails the write with an error the sink reports and retries,
    # as it does for a full disk, instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    async def main(stopping: asyncio.Event) -> int:
        try:
            await Sink(settings, claimed=[claim.path for claim in claims]).run(stopping)
        except StoppedWaiting as exc:
            log.info("%s", exc)
        except SinkRefused as exc:
            refuse("sink", exc)
            return 2
        return 0

    try:
        return run(main)
    finally:
        _release(claims)


def _release(claims: list[DirLock]) -> None:
    for claim in claims:
        claim.release()


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, settings_cls, handler, text in (
        ("ingest", IngestSettings, ingest_command, "run the ingest HTTP service (POST /publish)"),
        ("query", QuerySettings, query_command, "run the query HTTP service (stats, events, dead letters)"),
        ("sink", SinkSettings, sink_command, "run the sink: JetStream consumer writing to DuckDB"),
    ):
        add_command(commands, name, settings_cls, handler, text)
