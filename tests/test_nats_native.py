"""Messages published straight into JetStream by any NATS client, as the `nats` CLI does: core
publishes with a Nats-Msg-Id header and no reply subject."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tests.harness import Up, event, jetstream_info, nats_publish

pytestmark = pytest.mark.timeout(90)


def events_of(up: Up, topic: str) -> list[dict[str, Any]]:
    page: list[dict[str, Any]] = up.http.get("/events", params={"topic": topic, "limit": "1000"}).json()["events"]
    return page


@pytest.mark.usefixtures("nats_io")
def test_a_core_publish_with_a_header_is_stored_and_the_window_drops_its_repeat(up: Up) -> None:
    body = orjson.dumps({"event_id": "e1", "timestamp": "2026-11-22T10:00:00Z", "source": "cli", "payload": {}})
    # Exactly what `nats pub logs.payments '<json>' -H Nats-Msg-Id:payments:e1` sends, twice.
    nats_publish(up.nats_url, [("logs.payments", body, {"Nats-Msg-Id": "payments:e1"})] * 2)
    stats = up.settled_stats(arrived=1)
    stream, _ = jetstream_info(up.nats_url)
    assert stream.state.messages == 1  # the repeat never reached the stream
    assert stats["unique_processed"] == 1
    [stored] = events_of(up, "payments")
    assert (stored["event_id"], stored["source"]) == ("e1", "cli")


@pytest.mark.usefixtures("nats_io")
def test_a_json_body_takes_what_it_lacks_from_the_message(up: Up) -> None:
    nats_publish(
        up.nats_url,
        [
            ("logs.app", orjson.dumps({"payload": {"k": 1}}), {"Nats-Msg-Id": "app:from-header"}),
            ("logs.app", orjson.dumps({"event_id": "plain-id"}), {"Logmesh-Source": "edge-7"}),
        ],
    )
    up.settled_stats(arrived=2)
    by_id = {e["event_id"]: e for e in events_of(up, "app")}
    assert set(by_id) == {"from-header", "plain-id"}
    assert by_id["from-header"]["source"] == "nats" and by_id["from-header"]["payload"] == {"k": 1}
    assert by_id["plain-id"]["source"] == "edge-7"
    # The stream time stands in for a missing timestamp.
    assert by_id["plain-id"]["timestamp"].startswith("20")


def test_plain_text_log_lines_are_stored_as_events(up: Up) -> None:
    nats_publish(
        up.nats_url,
        [
            ("logs.web", b"GET /index.html 200", {"Nats-Msg-Id": "web:line-1"}),
            ("logs.web", b"disk almost full", None),
            ("logs.web", b"disk almost full", None),  # sent twice on purpose: two events
            ("logs.web", b'["an", "array"]', None),
        ],
    )
    stats = up.settled_stats(arrived=4)
    assert stats["unique_processed"] == 4 and stats["invalid"] == 0
    stored = events_of(up, "web")
    messages = sorted(e["payload"]["message"] for e in stored)
    assert messages == sorted(["GET /index.html 200", "disk almost full", "disk almost full", '["an", "array"]'])
    with_header = next(e for e in stored if e["payload"]["message"].startswith("GET"))
    assert with_header["event_id"] == "line-1"
    derived = [e["event_id"] for e in stored if e["event_id"] != "line-1"]
    assert len(set(derived)) == 3 and all(i.startswith("nats-") for i in derived)


POISON = [
    ("logs.bad", b"\xff\xfe\x00binary", None, "not UTF-8"),
    ("logs.bad", b"", None, "empty"),
    ("logs.bad", b"   ", None, "empty"),
    ("logs.bad", b'{"event_id": "x", "timestamp": ', None, "not valid JSON"),
    ("logs.bad", b'{"event_id": 5}', None, "event_id"),
    ("logs.bad", b'{"event_id": "x", "colour": "red"}', None, "colour"),
    ("logs.bad", b'{"topic": "other", "event_id": "x"}', None, "disagrees with the subject"),
    ("logs.bad", b'{"event_id": "x"}', {"Nats-Msg-Id": "bad:y"}, "disagrees with event_id"),
    ("logs.bad", b'{"payload": {}}', None, "no Nats-Msg-Id"),
    ("logs.bad", b'{"event_id": "x", "timestamp": 12}', None, "timestamp"),
    ("logs.bad", b"line", {"Nats-Msg-Id": "x" * 300}, "1-256"),
    ("logs.bad", b"[" * 100_000, None, None),  # deeply nested but not an object: a plain line
    ("logs.bad", b'{"payload": ' * 5_000 + b"}" * 5_000, {"Nats-Msg-Id": "bad:deep"}, "JSON"),
]


@pytest.mark.usefixtures("nats_io")
def test_poison_messages_are_dead_lettered_and_the_stream_keeps_flowing(up: Up) -> None:
    nats_publish(up.nats_url, [(s, d, h) for s, d, h, _ in POISON])
    after = orjson.dumps(event("bad", "good-one"))
    nats_publish(up.nats_url, [("logs.bad", after, {"Nats-Msg-Id": "bad:good-one"})])
    expected_dead = [r for *_, r in POISON if r is not None]
    stats = up.settled_stats(arrived=len(POISON) + 1)
    assert stats["invalid"] == len(expected_dead)
    assert stats["unique_processed"] == len(POISON) + 1 - len(expected_dead)
    assert stats["invariant_holds"]
    assert any(e["event_id"] == "good-one" for e in events_of(up, "bad"))

    letters = up.http.get("/dead-letters", params={"limit": "100"}).json()["dead_letters"]
    assert len(letters) == len(expected_dead)
    reasons = [d["reason"] for d in letters]
    for expected in expected_dead:
        assert any(expected in r for r in reasons), (expected, reasons)
    assert all(d["subject"] == "logs.bad" and d["seq"] > 0 for d in letters)
    # Terminated, not left to redelivery: nothing is pending on the consumer.
    _, consumer = jetstream_info(up.nats_url)
    assert consumer.num_ack_pending == 0
    assert consumer.delivered.consumer_seq == len(POISON) + 1  # each delivered once, none again


def test_a_subject_that_is_not_a_valid_topic_is_dead_lettered(up: Up) -> None:
    nats_publish(up.nats_url, [("logs.a:b", b"hello", None)])
    stats = up.settled_stats(arrived=1)
    assert stats["invalid"] == 1
    [letter] = up.http.get("/dead-letters").json()["dead_letters"]
    assert "subject topic" in letter["reason"]
