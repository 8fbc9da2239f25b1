"""``logmesh publish``: the load generator, over HTTP or straight into JetStream."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import Field, model_validator

from logmesh.cli.access import TOKEN_HINT, IngestTokenGiven, bearer, ingest_token, nats_credentials
from logmesh.cli.delivery import Delivery, OncePerMessage, deliver, wait_for_nats
from logmesh.cli.runner import Stopping, run
from logmesh.cli.workload import Rejected, SendReport, Workload, make_workload, send_http, send_nats
from logmesh.common.logs import setup_logging
from logmesh.common.natsio import NatsIo
from logmesh.common.settings import HttpUrl, Logging, NatsAuth, add_command, settings_from_args


class WorkloadSettings(Logging):
    events: int = Field(20_000, ge=1, description="events to send")
    dup: float = Field(0.35, ge=0, lt=1, description="fraction of events that repeat an earlier one")
    topics: int = Field(10, ge=1, description="number of topics")
    batch: int = Field(500, ge=1, description="events per request or per acked NATS batch")
    clients: int = Field(4, ge=1, description="concurrent senders")
    run_id: str | None = Field(None, description="event id prefix; reuse one to send the same events again")


class PublishSettings(WorkloadSettings, IngestTokenGiven, NatsAuth):
    url: HttpUrl | None = Field(None, description="publish over HTTP to this ingest URL")
    nats_url: str | None = Field(None, description="publish straight into JetStream at this NATS URL")
    nats_io: NatsIo = Field("fast", description="NATS publishing path: 'fast' or 'plain'")
    give_up_after: float = Field(
        30.0, gt=0, description="seconds to keep retrying once sending fails, while nothing is acknowledged"
    )

    @model_validator(mode="after")
    def _one_target(self) -> PublishSettings:
        if bool(self.url) == bool(self.nats_url):
            raise ValueError("give exactly one of --url (HTTP) or --nats-url (NATS)")
        return self


def publish_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(PublishSettings, args)
    setup_logging(settings.log_level, settings.log_format)
    # A lost NATS connection is retried twice a second, each time with the same words.
    logging.getLogger("logmesh.nats").addFilter(OncePerMessage())
    workload = make_workload(settings.events, settings.dup, settings.topics, settings.run_id)
    batches = workload.batches(settings.batch)
    show = sys.stderr.isatty()

    async def over_http(report: SendReport) -> SendReport:
        assert settings.url is not None
        return await send_http(
            settings.url,
            batches,
            settings.clients,
            show_progress=show,
            report=report,
            headers=bearer(ingest_token(settings)),
        )

    async def over_nats(report: SendReport) -> SendReport:
        assert settings.nats_url is not None
        await wait_for_nats(settings.nats_url, report)
        return await send_nats(
            settings.nats_url,
            batches,
            settings.clients,
            show_progress=show,
            report=report,
            nats_io=settings.nats_io,
            credentials=nats_credentials(settings, settings.data_dir, "ingest"),
        )

    target = settings.url or settings.nats_url or ""

    async def main(stopping: Stopping) -> int:
        try:
            sent = await deliver(
                over_http if settings.url else over_nats,
                total=len(workload.events),
                target=target,
                give_up_after=settings.give_up_after,
                stopping=stopping,
            )
        except Rejected as exc:
            hint = f"; {TOKEN_HINT % 'ingest'}" if str(exc).startswith(("401", "403")) else ""
            print(f"logmesh publish: the server refused a batch: {exc}{hint}", file=sys.stderr)
            return 1
        return report_delivery("publish", sent, workload, settings.give_up_after)

    return run(main)


def report_delivery(command: str, sent: Delivery, workload: Workload, give_up_after: float) -> int:
    """Prints what was sent: the figures when complete (exit 0), else one line saying why it stopped,
    how much was acknowledged and how to send the rest (exit 1, or 128 + the signal's number)."""
    if sent.complete:
        print(report_line(sent.report, workload.unique, sent.seconds))
        return 0
    again = f"the same command with --run-id {workload.run_id} sends them again (duplicates are dropped)"
    if sent.stopped_by is not None:
        why, code = f"stopped by {sent.stopped_by.name}", 128 + sent.stopped_by.value
    elif sent.gave_up is not None:
        why, code = f"gave up after {give_up_after:g} s: {sent.gave_up} at {sent.target}", 1
    else:
        why, code = f"failed: {sent.failed} at {sent.target}", 1
    print(f"logmesh {command}: {why}; {sent.acknowledged()}; {again}", file=sys.stderr, flush=True)
    return code


def report_line(report: SendReport, unique: int, elapsed: float) -> str:
    return (
        f"sent {report.accepted:,} events ({unique:,} distinct) in {elapsed:.2f} s "
        f"= {report.accepted / elapsed:,.0f} events/s; JetStream flagged {report.duplicates:,} as duplicates; "
        f"{report.retries} retries"
    )


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    add_command(
        commands, "publish", PublishSettings, publish_command, "send a workload with duplicates over HTTP or NATS"
    )
