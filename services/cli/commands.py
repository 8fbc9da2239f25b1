"""``logmesh up``, ``logmesh demo`` and ``logmesh stats`` (``logmesh publish`` is in ``publish``)."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import Field

from logmesh.cli.access import TOKEN_HINT, QueryTokenGiven, bearer, query_token
from logmesh.cli.delivery import deliver
from logmesh.cli.observe import render_stats, wait_until_drained
from logmesh.cli.publish import PublishSettings, WorkloadSettings, report_delivery
from logmesh.cli.publish import register as register_publish
from logmesh.cli.runner import Stopping, refuse, run
from logmesh.cli.stack import Stack, UpSettings
from logmesh.cli.workload import SendReport, describe_failure, make_workload, send_http
from logmesh.common.auth import INGEST, READ
from logmesh.common.claims import Refused
from logmesh.common.jetstream import shown_url
from logmesh.common.logs import setup_logging
from logmesh.common.partitions import PartitionsMismatch
from logmesh.common.settings import (
    DataDirPath,
    EmbeddedNatsPort,
    HttpAuth,
    HttpListen,
    HttpTls,
    HttpUrl,
    ListenPort,
    NatsPort,
    add_command,
    settings_from_args,
)

__all__ = ["PublishSettings"]

log = logging.getLogger("logmesh")

# The demo sends to the stack it has just started: a failure to deliver there is a fault to report,
# soon, not an outage to wait out.
DEMO_GIVE_UP_AFTER = 60.0


def up_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(UpSettings, args)
    setup_logging(settings.log_level, settings.log_format)

    async def main(stopping: Stopping) -> int:
        stack = Stack(settings)
        try:
            await stack.start()
        except Refused as exc:
            await stack.stop()
            return refuse("up", exc)
        except PartitionsMismatch as exc:  # never re-partitioned in place: the operator decides
            print(f"logmesh up: {exc}", file=sys.stderr, flush=True)
            await stack.stop()
            return 2
        except (RuntimeError, OSError) as exc:
            log.error("%s", exc)
            await stack.stop()
            return 1
        if await stack.wait_ready(stopping):
            print(await _ready_line(stack), flush=True)
        await stopping.wait()
        return await stack.stop()

    return run(main)


async def _ready_line(stack: Stack) -> str:
    """What is up, where: the ports actually bound and the data directory's absolute path."""
    s = stack.settings
    line = (
        f"logmesh is up: {stack.http_url}  (dashboard /, POST /publish, GET /stats /events /metrics)"
        f"  NATS {shown_url(stack.nats_url)}  data {s.data_dir.resolve()}"
    )
    line += f"  secrets {stack.auth.where}" if stack.auth.where is not None else "  AUTHENTICATION OFF"
    if s.nats_nodes > 1 or s.sinks > 1 or s.stream_partitions > 1:
        nodes = ", ".join(f"{m.name} {m.url} pid {m.pid}" for m in stack.members())
        sinks = ", ".join(f"sink-{i} pid {pid}" for i, pid in enumerate(stack.sinks.pids))
        line += f"  nodes [{nodes}]  partitions {s.stream_partitions}  sinks [{sinks}]"
    if s.metrics_port is not None:
        port = await stack.sink_metrics_port()
        line += (
            f"  sink metrics also on {s.host}:{port}"
            if port
            else f"  sink metrics not served on port {s.metrics_port} (see the log)"
        )
    return line


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
    up = UpSettings(
        log_level=settings.log_level,
        log_format=settings.log_format,
        data_dir=data_dir,
        host=settings.host,
        http_port=settings.http_port,
        nats_port=settings.nats_port,
        **{name: getattr(settings, name) for name in (*HttpAuth.model_fields, *HttpTls.model_fields)},
    )
    workload = make_workload(settings.events, settings.dup, settings.topics, settings.run_id)

    async def main(stopping: Stopping) -> int:
        stack = Stack(up, command="demo", sink_log_level="warning")
        try:
            try:
                await stack.start()
            except Refused as exc:
                return refuse("demo", exc)
            print(f"logmesh demo: {stack.http_url}  NATS {stack.nats_url}  data {data_dir.resolve()}", flush=True)
            print(
                f"sending {settings.events:,} events ({workload.duplicates:,} duplicates, {settings.topics} topics) "
                f"in batches of {settings.batch} from {settings.clients} HTTP clients ...",
                flush=True,
            )
            batches = workload.batches(settings.batch)
            show = sys.stderr.isatty()

            async def send(report: SendReport) -> SendReport:
                return await send_http(
                    stack.http_url,
                    batches,
                    settings.clients,
                    show_progress=show,
                    report=report,
                    **stack.client_options(INGEST),
                )

            sent = await deliver(
                send,
                total=len(workload.events),
                target=stack.http_url,
                give_up_after=DEMO_GIVE_UP_AFTER,
                stopping=stopping,
            )
            if not sent.complete:
                return report_delivery("demo", sent, workload, DEMO_GIVE_UP_AFTER)
            stats = await wait_until_drained(
                stack.http_url, timeout=120, at_least=sent.report.accepted, **stack.client_options(READ)
            )
            ok = _print_outcome(stats, workload.unique, sent.report)
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
    text = "run everything: embedded NATS, sink, ingest and query on one port"
    add_command(commands, "up", UpSettings, up_command, text)
    text = "run everything on a temporary directory and send the seed workload"
    add_command(commands, "demo", DemoSettings, demo_command, text)
    register_publish(commands)
    add_command(commands, "stats", StatsSettings, stats_command, "print the counters as a table")


class StatsSettings(QueryTokenGiven):
    url: HttpUrl = Field("http://127.0.0.1:8080", description="query service URL")
    raw: bool = Field(False, description="print the JSON as the query service answers it, not a table")


def stats_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(StatsSettings, args)
    try:
        stats = httpx.get(settings.url.rstrip("/") + "/stats", headers=bearer(query_token(settings)), timeout=10)
    except httpx.HTTPError as exc:
        print(f"logmesh stats: cannot reach {settings.url}: {describe_failure(exc)}", file=sys.stderr)
        return 1
    if stats.status_code != 200:
        hint = f"; {TOKEN_HINT % 'query'}" if stats.status_code in (401, 403) else ""
        print(f"logmesh stats: {stats.status_code} {stats.text}{hint}", file=sys.stderr)
        return 1
    print(stats.text if settings.raw else render_stats(stats.json()))
    return 0
