"""The sink's durable consumer deleted through the JetStream API, as an operator (or a script) may do:
the sink notices, says it is not ready while the consumer is missing, declares it again, and every
event JetStream acknowledged is stored exactly once."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from logmesh.common.natsio import NatsIo
from logmesh.sink.puller import _consumer_gone
from tests.harness import Up, event, over_nats, stored_keys, wait_for

pytestmark = pytest.mark.timeout(90)

# A second consumer that holds the stream's only consumer slot while the sink's is deleted, so that
# the sink cannot declare its consumer again until the test lets it.
BLOCKER = "blocker"


@pytest.mark.parametrize(
    ("status", "gone"),
    [
        # As nats-server 2.15 ends a pull request: the consumer deleted while the request was open,
        # and a request to a consumer that does not exist.
        (b"NATS/1.0 409 Consumer Deleted\r\n\r\n", "409 Consumer Deleted"),
        (b"NATS/1.0 503\r\nNats-Subject: $JS.API.CONSUMER.MSG.NEXT.LOGS.sink\r\n\r\n", "503"),
        # Ordinary ends of a request.
        (b"NATS/1.0 408 Request Timeout\r\n\r\n", None),
        (b"NATS/1.0 409 Exceeded MaxWaiting\r\n\r\n", None),
        (b"NATS/1.0 409 Message Size Exceeds MaxBytes\r\n\r\n", None),
        (b"NATS/1.0 404 No Messages\r\n\r\n", None),
    ],
)
def test_the_status_ending_a_pull_request_says_whether_the_consumer_is_gone(status: bytes, gone: str | None) -> None:
    assert _consumer_gone(status) == gone


def batch(prefix: str, n: int) -> list[dict[str, Any]]:
    return [event(f"t{i % 3}", f"{prefix}-{i}") for i in range(n)]


def publish(up: Up, events: list[dict[str, Any]]) -> None:
    resp = up.publish(events)
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"accepted": len(events), "duplicates": 0, "stored": len(events)}


def sink_readiness(up: Up) -> tuple[int, dict[str, Any]]:
    resp = up.http.get("/readyz")
    sink: dict[str, Any] = resp.json()["checks"]["sink"]
    return resp.status_code, sink


def take_the_consumer_slot(url: str) -> None:
    """Adds the blocker, limits the stream to one consumer, and deletes the sink's."""

    async def work(nc: Client) -> None:
        js = nc.jetstream()
        await js.add_consumer("LOGS", ConsumerConfig(durable_name=BLOCKER, ack_policy=AckPolicy.NONE))
        info = await js.stream_info("LOGS")
        await js.update_stream(dataclasses.replace(info.config, max_consumers=1))
        await js.delete_consumer("LOGS", "sink")

    over_nats(url, work)


def give_the_slot_back(url: str) -> None:
    async def work(nc: Client) -> None:
        js = nc.jetstream()
        await js.delete_consumer("LOGS", BLOCKER)
        info = await js.stream_info("LOGS")
        await js.update_stream(dataclasses.replace(info.config, max_consumers=-1))

    over_nats(url, work)


def delete_the_sink_consumer(url: str) -> None:
    async def work(nc: Client) -> None:
        await nc.jetstream().delete_consumer("LOGS", "sink")

    over_nats(url, work)


def assert_stored_exactly_once(up: Up, events: list[dict[str, Any]]) -> None:
    stats = up.settled_stats(arrived=len(events))
    assert stats["received"] == stats["unique_processed"] == len(events)
    assert stats["duplicates"] == {"window": 0, "store": 0}
    assert stats["invalid"] == 0 and stats["invariant_holds"]
    assert sorted(stored_keys(up.nats_url)) == sorted((e["topic"], e["event_id"]) for e in events)
    assert up.http.get("/readyz").status_code == 200


def test_a_deleted_consumer_is_recreated_and_nothing_is_lost(nats_io: NatsIo, up: Up) -> None:
    before, during, after = batch("before", 40), batch("during", 40), batch("after", 40)
    publish(up, before)
    up.settled_stats(arrived=len(before))

    publish(up, during)  # perhaps not delivered yet when the consumer goes
    delete_the_sink_consumer(up.nats_url)
    publish(up, after)

    assert_stored_exactly_once(up, before + during + after)
    log = up.service.log()
    assert "consumer sink of stream LOGS is gone (" in log and "consumer sink of stream LOGS recreated" in log
    for service in ("logmesh-sink", "logmesh-ingest", "logmesh-query"):
        assert f"{service} connected to {up.nats_address} ({nats_io} NATS path)" in log


def test_the_sink_is_not_ready_while_its_consumer_cannot_be_recreated(up: Up) -> None:
    before, during = batch("before", 30), batch("during", 30)
    publish(up, before)
    up.settled_stats(arrived=len(before))

    take_the_consumer_slot(up.nats_url)

    def refused() -> bool:
        return "maximum consumers limit reached" in (sink_readiness(up)[1].get("last_error") or "")

    wait_for(refused, 20, "the sink to report that it cannot recreate its consumer")
    # It stays so until the slot is given back.
    status, sink = sink_readiness(up)
    assert status == 503 and sink["ok"] is False
    assert sink["last_error"].startswith("consumer sink of stream LOGS cannot be recreated: ")
    # Accepted into the stream, but with no consumer nothing reaches the sink.
    publish(up, during)
    assert up.stats()["unique_processed"] == len(before)

    give_the_slot_back(up.nats_url)
    wait_for(lambda: sink_readiness(up)[0] == 200, 20, "the sink to be ready again")
    assert_stored_exactly_once(up, before + during)
