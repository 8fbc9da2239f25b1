"""The sink's SQL fast path must agree with the reference decoder wherever it accepts a message, and
must accept what ingest publishes (or the sink silently gets slow)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import duckdb
import orjson
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from logmesh.common.model import EVENT_ADAPTER, Event
from logmesh.common.wire import Delivery, parse_headers
from logmesh.sink.arrow import incoming_table
from logmesh.sink.decode import Rejected, decode_message
from logmesh.sink.fastpath import DECODE_SQL

EPOCH = 1_700_000_000


def fast_decode(msgs: list[tuple[bytes, bytes, bytes | None, bytes]]) -> list[dict[str, Any]]:
    con = duckdb.connect()
    con.register("incoming", incoming_table(msgs))
    rows = con.sql(DECODE_SQL).to_arrow_table()
    order = pc.sort_indices(rows["i"])
    return rows.take(order).to_pylist()  # type: ignore[no-any-return]


def reply(seq: int) -> bytes:
    return b"$JS.ACK.LOGS.sink.1.%d.%d.1763805600000000000.0" % (seq, seq)


def reference(msg: tuple[bytes, bytes, bytes | None, bytes]) -> Any:
    subject, rep, block, body = msg
    try:
        return decode_message(subject.decode(), parse_headers(block), body, Delivery.from_reply(rep), EPOCH)
    except Rejected as exc:
        return exc


def test_what_ingest_publishes_takes_the_fast_path() -> None:
    events = [
        Event.model_validate_json(orjson.dumps(e))
        for e in [
            {"topic": "orders", "event_id": "o-1", "timestamp": "2026-11-22T10:00:00Z", "source": "shop"},
            {
                "topic": "a.b-c_d",
                "event_id": "x y",
                "timestamp": "2026-11-22T10:00:00.123456+02:00",
                "source": "s",
                "payload": {"nested": {"list": [1, 2.5, "three", None, True]}},
            },
            {"topic": "t", "event_id": "id", "timestamp": "2026-11-22T10:00:00", "source": "s", "payload": {}},
        ]
    ]
    msgs = [
        (
            b"logs." + e.topic.encode(),
            reply(n + 1),
            b"NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n" % e.msg_id.encode(),
            EVENT_ADAPTER.dump_json(e),
        )
        for n, e in enumerate(events)
    ]
    decoded = fast_decode(msgs)
    assert [r["fast"] for r in decoded] == [True, True, True]
    for row, event in zip(decoded, events, strict=True):
        assert (row["topic"], row["event_id"], row["source"]) == (event.topic, event.event_id, event.source)
        assert row["timestamp"] == event.timestamp.astimezone(UTC).replace(tzinfo=None)
        assert orjson.loads(row["payload"]) == event.payload


texts = st.one_of(
    st.sampled_from(
        [
            "e1",
            "abc-123",
            "x y",
            "ünï",
            " lead",
            "trail ",
            "tab\tid",
            "",
            "a" * 256,
            "a" * 257,
            'q"uote',
            "back\\slash",
            "nul\x00",
            "emoji 😀",
        ]
    ),
    st.text(max_size=12),
)
timestamps = st.one_of(
    st.sampled_from(
        [
            "2026-11-22T10:00:00Z",
            "2026-11-22T10:00:00.5Z",
            "2026-11-22T10:00:00.1234567Z",
            "2026-11-22T10:00:00+02:00",
            "2026-11-22T10:00:00",
            "2026-11-22",
            "2026-02-30T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "0000-01-01T00:00:00Z",
            "2026-11-22T10:00:60Z",
            "2026-11-22 10:00:00Z",
            "2026-11-22t10:00:00z",
            "9999-12-31T23:59:59.999999Z",
        ]
    ),
    st.integers(0, 2_000_000_000),
    st.none(),
)
json_values: Any = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
payloads = st.one_of(st.dictionaries(st.text(max_size=6), json_values, max_size=4), json_values)


VALID_IDS = st.one_of(
    st.sampled_from(["e1", "abc-123", "x y", "a" * 256, 'q"uote', "back\\slash"]),
    st.from_regex(r"[!-~]([ -~]{0,20}[!-~])?", fullmatch=True),
)
VALID_TIMES = st.sampled_from(["2026-11-22T10:00:00Z", "2026-11-22T10:00:00.5Z", "1999-01-31T23:59:59.999999Z"])


@st.composite
def messages(draw: Any) -> tuple[bytes, bytes, bytes | None, bytes]:
    """Mostly valid events (so the fast path has something to accept), each with a chance of a few
    mutations of the kinds that trip decoders up."""
    topic = draw(st.sampled_from(["orders", "a.b", "ok-1_x"]))
    body: dict[str, Any] = {
        "topic": topic,
        "event_id": draw(VALID_IDS),
        "timestamp": draw(VALID_TIMES),
        "source": draw(st.sampled_from(["svc", "s" * 128, "edge node"])),
        "payload": draw(st.dictionaries(st.text(max_size=6), json_values, max_size=4)),
    }
    header_kind = draw(st.sampled_from([None, "same", "prefixed"]))
    style = "orjson"
    for mutation in draw(st.lists(st.sampled_from(MUTATIONS), max_size=2)):
        if mutation == "subject":
            topic = draw(st.sampled_from(["bad topic", "x" * 129, "dot.", "ünï", "a..b"]))
        elif mutation == "drop":
            body.pop(draw(st.sampled_from(sorted(body))), None)
        elif mutation == "extra":
            body["extra"] = 1
        elif mutation == "header":
            header_kind = draw(st.sampled_from(["other", "", "spaced", "twice"]))
        elif mutation == "style":
            style = draw(st.sampled_from(["ascii", "spaced", "duplicate", "raw"]))
        else:
            body[mutation] = draw(
                {
                    "topic": st.sampled_from(["other", 5, None]),
                    "event_id": texts | st.integers(),
                    "timestamp": timestamps,
                    "source": texts | st.integers(),
                    "payload": payloads,
                }[mutation]
            )
    data = _serialise(body, style, draw)
    event_id = body.get("event_id") if isinstance(body.get("event_id"), str) else "x"
    header = {
        None: None,
        "same": f"Nats-Msg-Id: {event_id}",
        "prefixed": f"Nats-Msg-Id: {topic}:{event_id}",
        "other": "Nats-Msg-Id: something-else",
        "": "Nats-Msg-Id:",
        "spaced": f"Nats-Msg-Id:   {event_id}  ",
        "twice": f"Nats-Msg-Id: {event_id}\r\nNats-Msg-Id: {topic}:{event_id}",
    }[header_kind]
    block = f"NATS/1.0\r\n{header}\r\n\r\n".encode("utf-8", "surrogatepass") if header is not None else None
    return (f"logs.{topic}".encode(), reply(draw(st.integers(1, 10**9))), block, data)


FIELD_MUTATIONS = {
    "topic": st.sampled_from(["other", 5, None]),
    "event_id": texts | st.integers(),
    "timestamp": timestamps,
    "source": texts | st.integers(),
    "payload": payloads,
}
MUTATIONS = ["subject", "drop", "extra", "header", "style", "topic", "event_id", "timestamp", "source", "payload"]


def _serialise(body: dict[str, Any], style: str, draw: Any) -> bytes:
    if style == "orjson" and _plain(body):
        return orjson.dumps(body)
    if style == "spaced":
        return json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8", "surrogatepass")
    if style == "duplicate":
        return json.dumps(body)[:-1].encode() + b', "event_id": "dup"}' if body else b"{}"
    if style == "raw":
        return draw(
            st.sampled_from(
                [
                    b"plain line",
                    b"",
                    b"{",
                    b'{"event_id": NaN}',
                    b"\xff\xfe",
                    b"[1]",
                    b'{"event_id":"a","timestamp":"2026-11-22T10:00:00Z","source":"s","payload":{"n":1e999}}',
                ]
            )
        )
    return json.dumps(body).encode()


def _plain(value: Any) -> bool:
    try:
        orjson.dumps(value)
        return True
    except TypeError:
        return False


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages(), min_size=1, max_size=20))
def test_the_fast_path_agrees_with_the_reference_decoder(msgs: list[tuple[bytes, bytes, bytes | None, bytes]]) -> None:
    for row, msg in zip(fast_decode(msgs), msgs, strict=True):
        if not row["fast"]:
            continue  # left to the reference decoder, which decides alone
        expected = reference(msg)
        assert not isinstance(expected, Rejected), (msg, expected.reason)
        assert row["topic"] == expected.topic
        assert row["event_id"] == expected.event_id
        assert row["source"] == expected.source
        assert row["timestamp"] == expected.timestamp.astimezone(UTC).replace(tzinfo=None)
        assert orjson.loads(row["payload"]) == orjson.loads(expected.payload)
        assert row["seq"] == Delivery.from_reply(msg[1]).stream_seq


def test_times_come_out_as_naive_utc_as_the_table_stores_them() -> None:
    body = b'{"event_id":"a","timestamp":"2026-11-22T10:00:00Z","source":"s"}'
    row = fast_decode([(b"logs.t", reply(1), None, body)])[0]
    assert row["fast"] and row["timestamp"] == datetime(2026, 11, 22, 10, 0)
