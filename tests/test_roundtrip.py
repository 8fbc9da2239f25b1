"""What goes in comes out: arbitrary JSON payloads (huge integers, floats at the edges of double
precision and past them, -0.0, NUL, emoji, combining marks, any key order, nesting) are published over
HTTP and straight into JetStream to one running ``logmesh up``, read back with
``GET /events/{topic}/{event_id}``, and must equal, value for value, what was sent.

Values are compared as Python's ``json`` reads them with decimals for non-integers: integers of any
size exactly, a number's digits past double precision, the sign of a zero, int against float, key
order. The events are written by hand here so that the text sent is exactly what the test chose
(number spellings such as 1E2, 1e-400 or 0.10000000000000000001, escaped or raw Unicode)."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from tests.harness import Up, over_nats

pytestmark = pytest.mark.timeout(120)

# One `logmesh up` serves every example of a test; each example adds a few new events. No shrinking:
# each example costs a publish and a commit, and a failure names the value and its path already.
EXAMPLES = settings(
    max_examples=15,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
_ids = itertools.count()


class Raw(str):
    """JSON written exactly as this text (a number spelt as chosen, an escape left as it is)."""


numbers = st.one_of(
    st.integers(),
    st.sampled_from([2**64, 10**30, -(2**63) - 1, 2**63, -(2**64) - 1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.1, 1e308, 5e-324, -0.0, 0.0, 2.2250738585072014e-308, 1.7976931348623157e308]),
    st.sampled_from(["1E2", "1e-400", "-1e-400", "0.10000000000000000001", "100000000000000000000.0", "-0"]).map(Raw),
    st.from_regex(r"\A-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][+-]?[0-9]{1,2})?\Z").map(Raw),
)
strings = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "\x00", "a\x00b", "😀", "e\u0301", "\u2028\u2029", "\ufeff", '"\\/', "\U0010ffff", "\x7f"]),
)
payloads = st.dictionaries(
    strings,
    st.recursive(
        st.none() | st.booleans() | numbers | strings,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strings, inner, max_size=4),
        max_leaves=12,
    ),
    max_size=6,
)


def _minutes(n: int) -> timedelta:
    return timedelta(minutes=n)


timestamps = st.builds(
    lambda moment, spec: moment.isoformat("T", spec),
    st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.one_of(st.none(), st.builds(timezone, st.integers(-1439, 1439).map(_minutes))),
    ),
    st.sampled_from(["seconds", "milliseconds", "microseconds"]),
)


def encode(value: Any, ascii_only: bool) -> str:
    """JSON text for ``value``, a Raw as it is, strings escaped or raw as asked."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(f"{encode(k, ascii_only)}:{encode(v, ascii_only)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v, ascii_only) for v in value) + "]"
    return json.dumps(value, ensure_ascii=ascii_only)


def read(text: str | bytes) -> Any:
    return json.loads(text, parse_float=Decimal)


def same(sent: Any, got: Any, path: str = "payload") -> None:
    """Equal value for value: types, exact numbers, the sign of a zero, keys in their order."""
    assert type(got) is type(sent), f"{path}: sent {sent!r}, got {got!r}"
    if isinstance(sent, dict):
        assert list(got) == list(sent), f"{path}: keys sent {list(sent)!r}, got {list(got)!r}"
        for key in sent:
            same(sent[key], got[key], f"{path}.{key}")
    elif isinstance(sent, list):
        assert len(got) == len(sent), f"{path}: sent {sent!r}, got {got!r}"
        for i, (s, g) in enumerate(zip(sent, got, strict=True)):
            same(s, g, f"{path}[{i}]")
    elif isinstance(sent, Decimal):
        assert got == sent and got.is_signed() == sent.is_signed(), f"{path}: sent {sent!r}, got {got!r}"
    else:
        assert got == sent, f"{path}: sent {sent!r}, got {got!r}"


def event_text(topic: str, event_id: str, timestamp: str, payload: dict[str, Any], ascii_only: bool) -> str:
    fields = {"topic": topic, "event_id": event_id, "timestamp": timestamp, "source": "roundtrip"}
    head = ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in fields.items())
    return "{" + head + ',"payload":' + encode(payload, ascii_only) + "}"


def mismatches(up: Up, topic: str, sent: dict[str, str], arrived: int) -> list[str]:
    """Once the sink has taken in ``arrived`` events in all, what differs between each event of
    ``sent`` (id -> the text published) and what GET /events/{topic}/{id} gives back."""
    up.settled_stats(arrived=arrived)
    found = []
    for event_id, text in sent.items():
        resp = up.http.get(f"/events/{topic}/{event_id}")
        if resp.status_code != 200:
            letters = up.http.get("/dead-letters", params={"limit": 5}).json().get("dead_letters", [])
            found.append(f"{event_id}: {resp.status_code} {resp.text[:300]}; dead letters: {letters} ; sent {text}")
            continue
        got, want = read(resp.content), read(text)
        try:
            assert got["event_id"] == event_id and got["source"] == "roundtrip"
            assert datetime.fromisoformat(got["timestamp"]) == _instant(want["timestamp"]), got["timestamp"]
            same(want["payload"], got["payload"])
        except AssertionError as exc:
            found.append(f"{event_id}: {str(exc).splitlines()[0]} ; sent {text}")
    return found


def _instant(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    return parsed.replace(tzinfo=parsed.tzinfo or UTC).astimezone(UTC)


@EXAMPLES
@given(st.lists(st.tuples(payloads, timestamps, st.booleans()), min_size=1, max_size=4))
def test_http_publish_reads_back_exactly_what_was_sent(up: Up, batch: list[tuple[dict[str, Any], str, bool]]) -> None:
    sent = {}
    for payload, timestamp, ascii_only in batch:
        event_id = f"h{next(_ids)}"
        sent[event_id] = event_text("rt", event_id, timestamp, payload, ascii_only)
    arrived = up.stats()["arrived"] + len(sent)
    body = "[" + ",".join(sent.values()) + "]"
    resp = up.http.post("/publish", content=body.encode(), headers={"content-type": "application/json"})
    assert resp.status_code == 202, (resp.status_code, resp.text, body)
    assert not (wrong := mismatches(up, "rt", sent, arrived)), "\n".join(wrong)


def publish_nats(up: Up, topic: str, sent: dict[str, str]) -> None:
    """Acked JetStream publishes with the logmesh message id, as a publisher without ingest sends."""

    async def publish(nc: Client) -> None:
        js = nc.jetstream()
        for event_id, text in sent.items():
            ack = await js.publish(f"logs.{topic}", text.encode(), headers={"Nats-Msg-Id": f"{topic}:{event_id}"})
            assert not ack.duplicate

    over_nats(up.nats_url, publish)


@EXAMPLES
@given(st.lists(st.tuples(payloads, timestamps, st.booleans()), min_size=1, max_size=4))
def test_nats_publish_reads_back_exactly_what_was_sent(up: Up, batch: list[tuple[dict[str, Any], str, bool]]) -> None:
    sent = {}
    for payload, timestamp, ascii_only in batch:
        event_id = f"n{next(_ids)}"
        sent[event_id] = event_text("rtn", event_id, timestamp, payload, ascii_only)
    arrived = up.stats()["arrived"] + len(sent)
    publish_nats(up, "rtn", sent)
    assert not (wrong := mismatches(up, "rtn", sent, arrived)), "\n".join(wrong)


# Each value alone in its own event, so that a failure names exactly the values that do not survive.
NAMED: dict[str, Any] = {
    "2**64": 18446744073709551616,
    "10**30": 10**30,
    "-2**63-1": -(2**63) - 1,
    "0.1": 0.1,
    "1e308": 1e308,
    "5e-324": 5e-324,
    "-0.0": -0.0,
    "1E2": Raw("1E2"),
    "1e-400": Raw("1e-400"),
    "0.10000000000000000001": Raw("0.10000000000000000001"),
    "1.0": 1.0,
    "NUL": "a\x00b",
    "emoji": "\U0001f600",
    "combining": "e\u0301",
    "line separators": "\u2028\u2029",
    "key order": {"b": 1, "a": 2, "": 3, "é": 4},
    "nesting": [[[[{"x": [[], {}]}]]]],
}


def test_named_nasty_values_read_back_exactly_over_http_and_nats(up: Up) -> None:
    sent_http, sent_nats = {}, {}
    for n, (name, value) in enumerate(NAMED.items()):
        for ascii_only in (True, False):
            payload = {"case": name, "value": value}
            event_id = f"{n}-{ascii_only:d}"
            sent_http[event_id] = event_text("named", event_id, "2026-11-22T10:00:00.5+01:00", payload, ascii_only)
            sent_nats[event_id] = event_text("namedn", event_id, "2026-11-22T10:00:00Z", payload, ascii_only)
    body = "[" + ",".join(sent_http.values()) + "]"
    resp = up.http.post("/publish", content=body.encode(), headers={"content-type": "application/json"})
    assert resp.status_code == 202, resp.text
    publish_nats(up, "namedn", sent_nats)
    arrived = len(sent_http) + len(sent_nats)
    wrong = [f"http {m}" for m in mismatches(up, "named", sent_http, arrived)]
    wrong += [f"nats {m}" for m in mismatches(up, "namedn", sent_nats, arrived)]
    assert not wrong, "\n".join(wrong)


def test_an_escaped_lone_surrogate_comes_back_as_sent_over_http_and_nats(up: Up) -> None:
    """\\ud800 is valid JSON text (RFC 8259's grammar allows any \\u escape), though no Unicode
    string: accepted either way, and read back as it was sent."""
    escapes = ['"\\ud800"', '"a\\udc00b"', '"\\udfff\\ud800"']
    over_http = {
        f"h{n}": event_text("lone", f"h{n}", "2026-11-22T10:00:00Z", {"value": Raw(escape)}, True)
        for n, escape in enumerate(escapes)
    }
    over_nats = {
        f"n{n}": event_text("lone", f"n{n}", "2026-11-22T10:00:00Z", {"value": Raw(escape)}, True)
        for n, escape in enumerate(escapes)
    }
    for text in over_http.values():
        resp = up.http.post("/publish", content=text.encode(), headers={"content-type": "application/json"})
        assert resp.status_code == 202, resp.text
    publish_nats(up, "lone", over_nats)
    sent = {**over_http, **over_nats}
    assert not (wrong := mismatches(up, "lone", sent, len(sent))), "\n".join(wrong)
    assert up.settled_stats(arrived=len(sent))["invalid"] == 0
