"""The acked publisher: PubAcks read as JetStream writes them, and a batch with its receipt, on both
NATS paths against a real nats-server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from nats.aio.client import Client

from logmesh.bench import truth
from logmesh.cli.workload import SendReport, make_workload, send_nats
from logmesh.common.jetstream import RECEIPT_SUBJECT, close, connect, ensure_stream
from logmesh.common.natsio import NatsIo
from logmesh.common.publisher import DUPLICATE, STORED, AckedPublisher, Outgoing, _read_ack
from logmesh.common.settings import ServiceSettings
from tests.harness import NatsServer

# PubAcks exactly as nats-server 2.15 sends them.
ACKS: list[tuple[bytes | None, bytes, int | str]] = [
    (None, b'{"stream":"LOGS","seq":1}', STORED),
    (None, b'{"stream":"LOGS","seq":1,"duplicate": true}', DUPLICATE),
    (None, b'{"stream":"LOGS","seq":7,"domain":"hub","duplicate":true}', DUPLICATE),
    (None, b'{"seq":7,"stream":"LOGS"}', STORED),  # another field order: read as JSON
    (None, b'{"seq":7,"stream":"LOGS","duplicate":true}', DUPLICATE),
    (
        None,
        b'{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"LOGS","seq":0}',
        "503 maximum messages exceeded",
    ),
    (None, b'{"error":{"code":400}}', "400"),
    # No stream listens on the subject: the server answers the reply subject with a status.
    (b"NATS/1.0 503\r\nNats-Subject: nobody.here\r\n\r\n", b"", "status 503"),
    (b"NATS/1.0 408 Request Timeout\r\n\r\n", b"", "status 408 Request Timeout"),
    (None, b"", "unreadable PubAck"),
    (None, b"+OK", "unreadable PubAck"),
    (None, b'{"stream":"LOGS","seq":', "unreadable PubAck"),
    (None, b"\xff\xfe{", "unreadable PubAck"),
    (None, b"[1]", "unreadable PubAck"),
    (None, b"7", "unreadable PubAck"),
    (None, b'{"error":"no"}', "error 'no'"),
]


@pytest.mark.parametrize(("headers", "data", "expected"), ACKS)
def test_a_puback_is_read_as_stored_duplicate_or_the_error(headers: bytes | None, data: bytes, expected: Any) -> None:
    assert _read_ack(headers, data) == expected


def events(*ids: str) -> list[Outgoing]:
    return [Outgoing(f"logs.{t}", orjson.dumps({"event_id": i}), f"{t}:{i}") for t, i in (x.split("/") for x in ids)]


async def receipts(nc: Client) -> list[dict[str, Any]]:
    js = nc.jetstream()
    info = await js.stream_info("LOGS", subjects_filter=RECEIPT_SUBJECT)
    found = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg("LOGS", seq)
        if msg.subject == RECEIPT_SUBJECT:
            found.append(orjson.loads(msg.data or b""))
    return found


@contextlib.asynccontextmanager
async def started_publisher(url: str, io: NatsIo) -> AsyncIterator[tuple[Client, AckedPublisher]]:
    """A connection on the given NATS path, the stream declared, and an acked publisher on it."""
    nc = await connect(url, "test", io=io)
    await ensure_stream(nc.jetstream(), ServiceSettings())
    publisher = AckedPublisher(nc)
    await publisher.start()
    try:
        yield nc, publisher
    finally:
        await publisher.stop()
        await close(nc)


def test_a_batch_with_duplicates_is_followed_by_its_receipt(nats_server: NatsServer, nats_io: NatsIo) -> None:
    async def run() -> None:
        async with started_publisher(nats_server.url, nats_io) as (nc, publisher):
            first = events("a/1", "a/2", "b/1", "a/1")
            outcome = await publisher.publish_counted(publisher.prepare(first), ["a", "a", "b", "a"], 10)
            assert outcome.batch.results == [STORED, STORED, STORED, DUPLICATE]
            assert outcome.receipt is not None and outcome.receipt.complete
            assert outcome.complete and outcome.problem(10) is None
            # Without duplicates there is no receipt.
            clean = await publisher.publish_counted(publisher.prepare(events("c/1")), ["c"], 10)
            assert clean.complete and clean.receipt is None
            # Sent again: every event is a duplicate, counted by a second receipt.
            again = await publisher.publish_counted(publisher.prepare(first), ["a", "a", "b", "a"], 10)
            assert again.batch.results == [DUPLICATE] * 4 and again.complete
            assert [r["window_duplicates"] for r in await receipts(nc)] == [{"a": 1}, {"a": 3, "b": 1}]

    asyncio.run(run())


def test_a_batch_no_stream_takes_is_not_complete_and_says_why(nats_server: NatsServer, nats_io: NatsIo) -> None:
    async def run() -> None:
        async with started_publisher(nats_server.url, nats_io) as (_, publisher):
            batch = [*events("a/1"), Outgoing("elsewhere.x", b"{}", "x:1")]
            outcome = await publisher.publish_counted(publisher.prepare(batch), ["a", "x"], 10)
            assert outcome.batch.results == [STORED, "status 503"]
            assert not outcome.complete
            assert outcome.problem(10) == "JetStream did not store every event (status 503)"

    asyncio.run(run())


def test_the_load_generator_publishes_batches_and_receipts(nats_server: NatsServer, nats_io: NatsIo) -> None:
    workload = make_workload(600, 0.3, 4, run_id="gen")

    async def run() -> tuple[SendReport, dict[str, int]]:
        nc = await connect(nats_server.url, "test", io=nats_io)
        try:
            await ensure_stream(nc.jetstream(), ServiceSettings())
            report = await send_nats(nats_server.url, workload.batches(100), 3, show_progress=False, nats_io=nats_io)
            return report, await truth.stream_truth(nc)
        finally:
            await close(nc)

    report, stream = asyncio.run(run())
    assert (report.accepted, report.duplicates, report.retries) == (600, workload.duplicates, 0)
    assert stream == {"received": workload.unique, "window": workload.duplicates}
