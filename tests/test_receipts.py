"""Receipts on ``logmesh.receipts`` with numbers that cannot be true, through a real nats-server and
sink: each becomes a dead letter with the reason, and the counters stay right."""

from __future__ import annotations

import orjson
import pytest
from nats.aio.client import Client

from tests.harness import Up, event, over_nats

pytestmark = pytest.mark.timeout(90)

FORGED = [
    # A count that once overflowed the store's counters, stopped /stats and every later receipt.
    ({"events": 1, "window_duplicates": {"orders": 2**64 - 1}}, "window_duplicates.orders: must be an integer"),
    ({"events": 2**64 - 1, "window_duplicates": {"orders": 1}}, "events: must be an integer from 1 to 1000000"),
    ({"events": 2, "window_duplicates": {"orders": 2, "other": 1}}, "add up to 3, more than its 2 events"),
    ({"window_duplicates": {"orders": 1}}, "events: field required"),
]


def publish_receipts(url: str, bodies: list[bytes]) -> None:
    async def publish(nc: Client) -> None:
        js = nc.jetstream()
        for body in bodies:
            await js.publish("logmesh.receipts", body)

    over_nats(url, publish)


def test_a_receipt_that_cannot_be_true_is_a_dead_letter_and_the_counters_stay_right(up: Up) -> None:
    assert up.publish(event("orders", "r-1")).json()["stored"] == 1
    publish_receipts(up.nats_url, [orjson.dumps(body) for body, _ in FORGED])
    # A real duplicate afterwards: its receipt is counted, the forged ones did not stop the sink.
    assert up.publish(event("orders", "r-1")).json()["duplicates"] == 1
    stats = up.settled_stats(arrived=1 + len(FORGED) + 1)
    assert stats["duplicates"] == {"window": 1, "store": 0}
    assert (stats["unique_processed"], stats["invalid"], stats["received"]) == (1, len(FORGED), 1 + len(FORGED))
    assert stats["invariant_holds"]
    assert [t["duplicates"]["window"] for t in stats["topics"] if t["topic"] == "orders"] == [1]
    letters = up.http.get("/dead-letters", params={"limit": "100", "order": "asc"}).json()["dead_letters"]
    assert [letter["subject"] for letter in letters] == ["logmesh.receipts"] * len(FORGED)
    for (_, reason), letter in zip(FORGED, letters, strict=True):
        assert letter["reason"].startswith("receipt: ") and reason in letter["reason"], letter["reason"]
