"""``logmesh up``, ``logmesh demo`` and ``logmesh publish``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field, model_validator

from logmesh.cli.observe import render_stats, wait_until_drained
from logmesh.cli.runner import refuse, run
from logmesh.cli.stack import Stack, UpSettings
from logmesh.cli.workload import Rejected, SendReport, make_workload, send_http, send_nats
from logmesh.common.claims import Refused
from logmesh.common.logs import setup_logging
from logmesh.common.natsio import NatsIo
from logmesh.common.settings import (
    CommonSettings,
    DataDirPath,
    EmbeddedNatsPort,
    HttpListen,
    ListenPort,
    NatsPort,
    add_command,
    settings_from_args,
)

log = logging.getLogger("logmesh")


def up_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(UpSettings, args)
    setup_logging(settings.log_level, settings.log_format)

    async def main(stopping: asyncio.Event) -> int:
        stack = Stack(settings)
        try:
            await stack.start()
        except Refused as exc:
            await stack.stop()
            return refuse("up", exc)
        except (RuntimeError, OSError) as exc:
            log.error("%s", exc)
            await stack.stop()
            return 1
        if await stack.wait_ready(stopping):
            print(
                f"logmesh is up: {stack.http_url}  (dashboard /, POST /publish, GET /stats /events /metrics)"
                f"  NATS {stack.nats_url}  sink metrics :{settings.metrics_port}  data {settings.data_dir}",
                flush=True,
            )
        await stopping.wait()
        return await stack.stop()

    return run(main)


class WorkloadSettings(CommonSettings):
    events: int = Field(20_000, ge=1, description="events to send")
    dup: float = Field(0.35, ge=0, lt=1, description="fraction of events that repeat an earlier one")
    topics: int = Field(10, ge=1, description="number of topics")
    batch: int = Field(500, ge=1, description="events per request or per acked NATS batch")
    clients: int = Field(4, ge=1, description="concurrent senders")
    run_id: str | None = Field(None, description="event id prefix; reuse one to send the same events again")


class PublishSettings(WorkloadSettings):
    url: str | None = Field(None, description="publish over HTTP to this ingest URL")
    nats_url: str | None = Field(None, description="publish straight into JetStream at this NATS URL")
    nats_io: NatsIo = Field("fast", description="NATS publishing path: 'fast' or 'plain'")

    @model_validator(mode="after")
    def _one_target(self) -> PublishSettings:
        if bool(self.url) == bool(self.nats_url):
            raise ValueError("give exactly one of --url (HTTP) or --nats-url (NATS)")
        return self


def publish_command(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(PublishSettings, args)
    except ValueError as exc:
        print(f"logmesh publish: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format)
    workload = make_workload(settings.events, settings.dup, settings.topics, settings.run_id)

    async def main(stopping: asyncio.Event) -> int:
        started = time.perf_counter()
        batches = workload.batches(settings.batch)
        try:
            if settings.url:
                report = await send_http(settings.url, batches, settings.clients)
            else:
                assert settings.nats_url is not None
                report = await send_nats(settings.nats_url, batches, settings.clients, nats_io=settings.nats_io)
        except Rejected as exc:
            print(f"logmesh publish: the server refused a batch: {exc}", file=sys.stderr)
            return 1
        elapsed = time.perf_counter() - started
        print(_report_line(report, workload.unique, elapsed))
        return 0

    return run(main)


def _report_line(report: SendReport, unique: int, elapsed: float) -> str:
    return (
        f"sent {report.accepted:,} events ({unique:,} distinct) in {elapsed:.2f} s "
        f"= {report.accepted / elapsed:,.0f} events/s; JetStream flagged {report.duplicates:,} as duplicates; "
        f"{report.retries} retries"
    )


class DemoSettings(WorkloadSettings, HttpListen, EmbeddedNatsPort):
    """Scratch resources by default: a temporary data directory and free ports."""

    log_level: Literal["debug", "info", "warning", "error"] = Field("warning", description="log level")
    data_dir: DataDirPath | None = Field(None, description="keep the data here instead of a temporary directory")
    http_port: ListenPort = 0
    nats_port: NatsPort = 0
    serve: bool = Field(False, description="keep running after the workload, until Ctrl+C")


def demo_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(DemoSettings, args)
    setup_logging(settings.log_level, settings.log_format)
    temporary = settings.data_dir is None
    data_dir = settings.data_dir or Path(tempfile.mkdtemp(prefix="logmesh-demo-"))
    common = {name: getattr(settings, name) for name in CommonSettings.model_fields}
    up = UpSettings(
        **common,
        data_dir=data_dir,
        host=settings.host,
        http_port=settings.http_port,
        nats_port=settings.nats_port,
        metrics_port=0,
    )
    workload = make_workload(settings.events, settings.dup, settings.topics, settings.run_id)

    async def main(stopping: asyncio.Event) -> int:
        stack = Stack(up, command="demo", sink_log_level="warning")
        try:
            try:
                await stack.start()
            except Refused as exc:
                return refuse("demo", exc)
            print(f"logmesh demo: {stack.http_url}  NATS {stack.nats_url}  data {data_dir}", flush=True)
            print(
                f"sending {settings.events:,} events ({workload.duplicates:,} duplicates, {settings.topics} topics) "
                f"in batches of {settings.batch} from {settings.clients} HTTP clients ...",
                flush=True,
            )
            report = await send_http(stack.http_url, workload.batches(settings.batch), settings.clients)
            stats = await wait_until_drained(stack.http_url, timeout=120, at_least=report.accepted)
            ok = _print_outcome(stats, workload.unique, report)
            if settings.serve:
                print(f"serving {stack.http_url} until Ctrl+C", flush=True)
                await stopping.wait()
            return 0 if ok else 1
        finally:
            await stack.stop()
            if temporary and not settings.serve:
                shutil.rmtree(data_dir, ignore_errors=True)

    return run(main)


def _print_outcome(stats: dict[str, Any], unique: int, report: SendReport) -> bool:
    print()
    print(render_stats(stats))
    sink = stats["sink"]
    elapsed = (sink["last_commit_at"] or time.time()) - report.first_send
    checks = {
        "received = unique + store duplicates + invalid": bool(stats["invariant_holds"]),
        f"every distinct event stored once ({unique:,})": stats["unique_processed"] == unique,
        "every accepted event counted": report.retries > 0 or stats["arrived"] == report.accepted,
    }
    print()
    for label, passed in checks.items():
        print(f"  [{'ok' if passed else 'FAILED'}] {label}")
    print(
        f"\n  {report.accepted:,} events from first publish to last commit in {elapsed:.2f} s "
        f"= {report.accepted / elapsed:,.0f} events/s"
    )
    return all(checks.values())


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for name, settings_cls, handler, text in (
        ("up", UpSettings, up_command, "run everything: embedded NATS, sink, ingest and query on one port"),
        ("demo", DemoSettings, demo_command, "run everything on a temporary directory and send the seed workload"),
        ("publish", PublishSettings, publish_command, "send a workload with duplicates over HTTP or NATS"),
        ("stats", StatsSettings, stats_command, "print the counters as a table"),
    ):
        add_command(commands, name, settings_cls, handler, text)


class StatsSettings(CommonSettings):
    url: str = Field("http://127.0.0.1:8080", description="query service URL")
    raw: bool = Field(False, description="print the JSON as the query service answers it, not a table")


def stats_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(StatsSettings, args)
    try:
        stats = httpx.get(settings.url.rstrip("/") + "/stats", timeout=10)
    except httpx.HTTPError as exc:
        print(f"logmesh stats: cannot reach {settings.url}: {exc}", file=sys.stderr)
        return 1
    if stats.status_code != 200:
        print(f"logmesh stats: {stats.status_code} {stats.text}", file=sys.stderr)
        return 1
    print(stats.text if settings.raw else render_stats(stats.json()))
    return 0
