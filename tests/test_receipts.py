"""Receipts on ``logmesh.receipts`` with numbers that cannot be true, through a real nats-server and
sink: each becomes a dead letter with the reason, and the counters stay right."""

from __future__ import annotations

import orjson
import pytest
from nats.aio.client import Client

from logmesh.common.reference_decoder import MAX_RECEIPT_EVENTS, Rejected, decode_receipt
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


# Each number checked against what it can truthfully be: the batch it speaks for, and no more.
CANNOT_BE_TRUE = [
    (
        b'{"events":2,"window_duplicates":{"orders":-1}}',
        "window_duplicates.orders: must be an integer from 1 to 2, not -1",
    ),
    (
        b'{"events":2,"window_duplicates":{"orders":0}}',
        "window_duplicates.orders: must be an integer from 1 to 2, not 0",
    ),
    (
        b'{"events":1,"window_duplicates":{"orders":2}}',
        "window_duplicates.orders: must be an integer from 1 to 1, not 2",
    ),
    (b'{"events":2,"window_duplicates":{"a":1,"b":1,"c":1}}', "window_duplicates add up to 3, more than its 2 events"),
    (b'{"events":0,"window_duplicates":{}}', f"events: must be an integer from 1 to {MAX_RECEIPT_EVENTS}, not 0"),
    (b'{"events":-5,"window_duplicates":{}}', "events: must be an integer from 1 to 1000000, not -5"),
    (b'{"events":1000001,"window_duplicates":{}}', "events: must be an integer from 1 to 1000000, not 1000001"),
    (b'{"events":2,"window_duplicates":{"orders":1.0}}', "must be an integer from 1 to 2, not 1.0"),
    (b'{"events":2,"window_duplicates":{"orders":1e0}}', "must be an integer from 1 to 2, not 1e0"),
    (b'{"events":2,"window_duplicates":{"orders":"1"}}', "must be an integer from 1 to 2, not a string"),
    (b'{"events":2,"window_duplicates":{"orders":true}}', "must be an integer from 1 to 2, not true"),
    (b'{"events":2,"window_duplicates":{"orders":1' + b"0" * 400 + b"}}", "not a number of 401 characters"),
    (b'{"events":2,"window_duplicates":{"orders":\xd9\xa1}}', "not valid JSON"),  # a Unicode digit
    (b'{"events":2,"window_duplicates":{"orders":01}}', "not valid JSON: number with a leading zero"),
    (b'{"events":1,"window_duplicates":{"orders":99999999999999999999999,"orders":1}}', "'orders' appears twice"),
    (b'{"events":2,"events":2,"window_duplicates":{}}', "name 'events' appears twice"),
    (b'{"events":2,"window_duplicates":[]}', "window_duplicates: must be an object of counts by topic, not an array"),
    (b'{"events":2,"window_duplicates":{"bad topic":1}}', "window_duplicates: 'bad topic': topic must be"),
    (b'{"events":2,"window_duplicates":{},"extra":1}', "'extra': unknown field"),
    (b"\xff", "body is not UTF-8"),
]


@pytest.mark.parametrize(("body", "reason"), CANNOT_BE_TRUE)
def test_a_receipts_numbers_are_checked_against_its_batch(body: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as refused:
        decode_receipt(body)
    assert refused.value.reason.startswith("receipt: ") and reason in refused.value.reason, refused.value.reason


def test_a_receipt_for_its_whole_batch_is_counted() -> None:
    assert decode_receipt(b'{"events":3,"window_duplicates":{"a":2,"b.c":1}}') == {"a": 2, "b.c": 1}
