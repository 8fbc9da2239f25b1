"""``logmesh tail [--topic T]``: follow events as they arrive, like ``nats sub``, from an ordered
consumer (ephemeral, in order, no acks), each line decoded as the sink decodes it."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Annotated

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from pydantic import AfterValidator, Field

from logmesh.cli.access import SecretsDir, nats_credentials
from logmesh.cli.runner import run
from logmesh.common.jetstream import LOG_SUBJECTS, close, connect, log_subject, shown_url
from logmesh.common.logs import setup_logging
from logmesh.common.model import check_topic
from logmesh.common.reference_decoder import Rejected, decode_message
from logmesh.common.settings import Logging, NatsServer, StreamName, add_command, settings_from_args
from logmesh.common.wire import Delivery


class TailSettings(StreamName, Logging, NatsServer, SecretsDir):
    topic: Annotated[str, AfterValidator(check_topic)] | None = Field(
        None, description="only this topic (all topics when left out)"
    )
    all: bool = Field(False, description="start from the first message in the stream, not the next one")
    count: int = Field(0, ge=0, description="stop after this many messages (0: follow until Ctrl+C)")


def render(msg: Msg) -> str:
    meta = msg.metadata
    delivery = Delivery(meta.sequence.stream, meta.num_delivered, int(meta.timestamp.timestamp() * 1e9))
    try:
        row = decode_message(msg.subject, msg.headers, msg.data, delivery, 0)
    except Rejected as exc:
        return f"{meta.timestamp.isoformat()} {msg.subject} INVALID: {exc.reason}"
    return f"{row.timestamp.isoformat()} {row.topic} {row.event_id} [{row.source}] {row.payload}"


def tail_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(TailSettings, args)
    setup_logging(settings.log_level, settings.log_format)

    async def main(stopping: asyncio.Event) -> int:
        # An ordered consumer is one the tail creates: the admin user's right (``nats_roles``).
        credentials = nats_credentials(settings, settings.data_dir, "admin")
        nc = await connect(settings.nats_url, "logmesh-tail", stopping=stopping, credentials=credentials)
        shown = 0
        enough = asyncio.Event()

        async def show(msg: Msg) -> None:
            nonlocal shown
            print(render(msg), flush=True)
            shown += 1
            if settings.count and shown >= settings.count:
                enough.set()

        subject = log_subject(settings.topic) if settings.topic else LOG_SUBJECTS
        policy = DeliverPolicy.ALL if settings.all else DeliverPolicy.NEW
        sub = await nc.jetstream().subscribe(
            subject, stream=settings.stream, cb=show, ordered_consumer=True, deliver_policy=policy
        )
        print(f"following {subject} on {shown_url(settings.nats_url)} (Ctrl+C to stop)", file=sys.stderr, flush=True)
        waiting = [asyncio.create_task(stopping.wait()), asyncio.create_task(enough.wait())]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        for task in waiting:
            task.cancel()
        await sub.unsubscribe()
        await close(nc)
        return 0

    return run(main)


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    add_command(commands, "tail", TailSettings, tail_command, "follow new events live, like nats sub")
