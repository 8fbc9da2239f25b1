"""Throughput: the bare NATS ceiling, and logmesh end to end (first publish to last commit)."""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
from nats.js.api import AckPolicy, ConsumerConfig

from logmesh.bench.procs import UpProcess, peak_rss_mib
from logmesh.cli.access import bearer
from logmesh.cli.observe import wait_until_drained
from logmesh.cli.workload import SendReport, Workload, make_workload, send_http, send_nats
from logmesh.common.embedded import EmbeddedNats
from logmesh.common.fastnats import hpub, pub
from logmesh.common.jetstream import connect, ensure_stream
from logmesh.common.model import msg_id
from logmesh.common.processes import free_port
from logmesh.common.settings import CommonSettings

Sender = Callable[[UpProcess, Workload], Awaitable[SendReport]]


def http_sender(batch: int, clients: int) -> Sender:
    async def send(up: UpProcess, w: Workload) -> SendReport:
        return await send_http(
            up.http_url, w.batches(batch), clients, show_progress=False, headers=bearer(up.ingest_token)
        )

    return send


# The native runs keep 20,000 events in flight (4 senders x 5,000), as many as the ceiling's publisher.
NATIVE_BATCH, NATIVE_CLIENTS = 5000, 4


def nats_sender(batch: int = NATIVE_BATCH, clients: int = NATIVE_CLIENTS) -> Sender:
    async def send(up: UpProcess, w: Workload) -> SendReport:
        return await send_nats(
            up.nats_url, w.batches(batch), clients, show_progress=False, credentials=up.credentials("ingest")
        )

    return send


async def pipeline(
    name: str, events: int, dup: float, topics: int, send: Sender, *, auth: bool = True
) -> dict[str, Any]:
    """One run of logmesh end to end: events/s from the first publish to the sink's last commit;
    ``auth`` False runs ``up --no-auth`` (to see what authorization costs)."""
    workload = make_workload(events, dup, topics)
    async with UpProcess(name, auth=auth) as up:
        report = await send(up, workload)
        stats = await wait_until_drained(
            up.http_url, timeout=900, at_least=report.accepted, headers=bearer(up.query_token)
        )
        sink = up.sink_pid()
        elapsed = stats["sink"]["last_commit_at"] - report.first_send
        return {
            "events": events,
            "seconds": round(elapsed, 3),
            "events_per_second": round(events / elapsed),
            "correct": stats["unique_processed"] == workload.unique and stats["invariant_holds"],
            "retries": report.retries,
            "sink_peak_rss_mib": peak_rss_mib(sink) if sink else None,
        }


# ---- the ceiling -------------------------------------------------------------------------------

CEILING_CONSUMER = "ceiling"


async def ceiling(events: int, dup: float, topics: int) -> dict[str, Any]:
    """A bare core publisher (pre-encoded, with ``Nats-Msg-Id``) and a bare consumer (pull requests
    answered into a raw subscription, one ack-all per request, no validation, no database) in two
    processes against one nats-server: the most this machine and nats-py move, and what logmesh is
    compared with. The publisher asks for PubAcks only to pace itself: without them nats-server drops
    what its stream ingest queue cannot hold ("excessive stream ingest rate")."""
    workload = make_workload(events, dup, topics)
    inbox = f"_INBOX.ceiling.{time.time_ns()}"
    commands = [
        hpub(f"logs.{e['topic']}".encode(), _id_block(e), orjson.dumps(e), f"{inbox}.{n}".encode())
        for n, e in enumerate(workload.events)
    ]
    store = Path(tempfile.mkdtemp(prefix="logmesh-bench-ceiling-"))
    server = EmbeddedNats(store, port=free_port())
    await server.start()
    try:
        nc = await connect(server.url, "bench-ceiling")
        js = nc.jetstream()
        await ensure_stream(js, CommonSettings())
        config = ConsumerConfig(
            name=CEILING_CONSUMER, durable_name=CEILING_CONSUMER, ack_policy=AckPolicy.ALL, max_ack_pending=-1
        )
        await js.add_consumer("LOGS", config)
        acked = _Count()

        def on_ack(subject: bytes, reply: bytes, headers: bytes | None, data: bytes) -> None:
            acked.received += 1
            acked.request_done.set()

        await nc.subscribe_raw(inbox + ".*", on_ack)
        context = multiprocessing.get_context("spawn")
        receiving, sending = context.Pipe(duplex=False)
        consumer = context.Process(target=_consume, args=(server.url, workload.unique, sending), daemon=True)
        consumer.start()
        assert receiving.recv() == "ready"
        started = time.time()
        window = 20_000
        for i in range(0, len(commands), 1000):
            while i - acked.received > window:
                acked.request_done.clear()
                await acked.request_done.wait()
            await nc.publish_many(commands[i : i + 1000])
        await nc.flush()
        if not await asyncio.to_thread(receiving.poll, 300):
            consumer.kill()
            raise TimeoutError("the ceiling consumer did not receive every message within 300 s")
        finished: float = receiving.recv()
        consumer.join(10)
        await nc.close()
    finally:
        await server.stop()
        shutil.rmtree(store, ignore_errors=True)
    elapsed = finished - started
    return {"events": events, "seconds": round(elapsed, 3), "events_per_second": round(events / elapsed)}


def _id_block(event: dict[str, Any]) -> bytes:
    return b"NATS/1.0\r\nNats-Msg-Id: " + msg_id(event["topic"], event["event_id"]).encode() + b"\r\n\r\n"


def _consume(url: str, expected: int, done: Connection) -> None:
    asyncio.run(_consume_async(url, expected, done))


class _Count:
    def __init__(self) -> None:
        self.received = 0
        self.in_request = 0
        self.last_reply = b""
        self.request_done = asyncio.Event()


async def _consume_async(url: str, expected: int, done: Connection) -> None:
    nc = await connect(url, "bench-ceiling-consumer")
    batch = 10_000
    count = _Count()

    def on_message(subject: bytes, reply: bytes, headers: bytes | None, data: bytes) -> None:
        if reply:
            count.received += 1
            count.in_request += 1
            count.last_reply = reply
            if count.in_request < batch and count.received < expected:
                return
        count.request_done.set()  # the request is full, or the server ended it with a status

    inbox = nc.new_inbox()
    await nc.subscribe_raw(inbox, on_message)
    request = orjson.dumps({"batch": batch, "expires": 2_000_000_000})
    done.send("ready")
    while count.received < expected:
        count.in_request = 0
        count.request_done.clear()
        await nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.LOGS.{CEILING_CONSUMER}", request, reply=inbox)
        await count.request_done.wait()
        if count.last_reply:
            await nc.publish_many([pub(count.last_reply, b"+ACK")])  # one ack for the whole request
    done.send(time.time())
    await nc.close()
