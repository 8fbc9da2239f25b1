"""Bad input: every input is accepted or rejected with a message naming what is wrong and where;
nothing raises anything else, nothing is half-published, no service stops."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from logmesh.common.http import ApiError
from logmesh.common.model import EVENT_ADAPTER, field_errors
from logmesh.common.secrets_store import INGEST_TOKEN
from logmesh.common.strict_json import MAX_DEPTH
from logmesh.ingest.app import create_app
from logmesh.ingest.body import parse_events
from logmesh.ingest.settings import IngestSettings
from tests.harness import Up, event, nats_publish
from tests.test_timestamps import instant

pytestmark = pytest.mark.timeout(120)


def _json(floats: st.SearchStrategy[float]) -> Any:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | floats | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
        max_leaves=15,
    )


json_values = _json(st.floats())
# Each field is often valid, so that whole events get accepted and their fields compared.
FIELDS: dict[str, Any] = {
    "topic": st.sampled_from(["orders", "a.b-c_d", "x" * 128]),
    "event_id": st.sampled_from(["e1", "ü id", "x" * 256]) | st.text(min_size=1, max_size=5),
    "timestamp": st.sampled_from(["2026-11-22T10:00:00Z", "2026-11-22 10:00:00.5+01:30", "0001-01-01T00:00:00"]),
    "source": st.text(min_size=1, max_size=10),
    "payload": st.dictionaries(st.text(max_size=10), _json(st.floats(allow_nan=False, allow_infinity=False))),
}


@st.composite
def event_like(draw: st.DrawFn) -> dict[str, Any]:
    """An object with each field mostly present and mostly valid, sometimes an unknown field."""
    out = {}
    for name, valid in FIELDS.items():
        if draw(st.integers(0, 9)):
            out[name] = draw(valid if draw(st.integers(0, 9)) else json_values)
    if not draw(st.integers(0, 4)):
        out[draw(st.sampled_from(["extra", ""]))] = draw(json_values)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(event_like(), json_values))
def test_the_model_accepts_or_names_the_field(value: Any) -> None:
    raw = json.dumps(value).encode()  # stdlib: any integer, NaN as NaN
    try:
        accepted = EVENT_ADAPTER.validate_json(raw)
    except ValidationError as exc:
        errors = field_errors(exc, batch=False)
        assert errors and all(e.message for e in errors)
        if isinstance(value, dict):
            assert all(e.field for e in errors), errors  # an object's problems are always a field's
    else:
        assert (accepted.topic, accepted.event_id, accepted.source) == (
            value["topic"],
            value["event_id"],
            value["source"],
        )
        assert accepted.timestamp == instant(value["timestamp"])
        # json.dumps tells key order and the sign of a zero, which == on dicts does not.
        assert json.dumps(accepted.payload) == json.dumps(value.get("payload", {}))


bodies = st.one_of(
    st.binary(max_size=300),
    # JSON text, but no Unicode string: escaped lone surrogates
    st.builds(
        lambda e, s: json.dumps({**e, "payload": {"v": s}}).encode(),
        event_like(),
        st.sampled_from(["\ud800", "a\udc00b", "\udfff\ud800", "\ud83d"]),
    ),
    st.builds(
        lambda v, indent: json.dumps(v, indent=indent).encode(),
        st.one_of(event_like(), st.lists(event_like(), max_size=3)),
        st.sampled_from([None, 0, 2, "\t"]),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(bodies)
def test_any_request_body_is_events_or_a_clear_4xx(body: bytes) -> None:
    try:
        events, texts = parse_events(body, max_batch=10)
    except ApiError as exc:
        assert exc.status in (400, 422) and exc.message
        assert all(d["message"] for d in exc.details)
    else:
        assert 1 <= len(events) <= 10
        sent = json.loads(body)
        sent = sent if isinstance(sent, list) else [sent]
        # What ingest publishes: each event's own text, which reads as the event it was.
        assert [json.loads(t) for t in texts] == sent
        assert [EVENT_ADAPTER.validate_python(json.loads(t)) for t in texts] == events


@pytest.mark.parametrize(
    ("timestamp", "message"),
    [
        ("2026-11-22T10:00:00.123456789Z", "logmesh keeps microseconds"),
        ("1700000000", "ISO-8601"),
        ("0001-01-01T00:30:00+01:00", "within years 1-9999 in UTC"),
        ("9999-12-31T23:30:00-01:00", "within years 1-9999 in UTC"),
    ],
)
def test_a_timestamp_ingest_cannot_keep_is_a_422_naming_it(timestamp: str, message: str) -> None:
    """In the real ingest app, before it needs NATS: validation comes first."""

    async def post() -> httpx.Response:
        app = create_app(IngestSettings(no_auth=True))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingest") as client:
            return await client.post("/publish", json={**event("t", "e1"), "timestamp": timestamp})

    resp = asyncio.run(post())
    assert resp.status_code == 422, resp.text
    [detail] = resp.json()["error"]["details"]
    assert detail["field"] == "timestamp" and message in detail["message"]


# ---- HTTP abuse, against a real logmesh up --------------------------------------------------------


def test_a_chunked_body_over_the_limit_is_refused_while_streaming(make_up: Any) -> None:
    up = make_up({"LOGMESH_MAX_BODY_BYTES": "100000"})

    def chunks() -> Any:
        yield b"["
        for _ in range(1000):  # ~250 kB, with no Content-Length
            yield orjson.dumps(event()) + b","
        yield b"{}]"

    resp = up.http.post("/publish", content=chunks(), headers={"content-type": "application/json"})
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"


def test_a_body_that_trickles_in_times_out(make_up: Any) -> None:
    up = make_up({"LOGMESH_BODY_TIMEOUT": "1"})
    with socket.create_connection(("127.0.0.1", up.http_port), timeout=10) as s:
        token = (up.secret(INGEST_TOKEN) or "").encode()
        s.sendall(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n"
            b"Authorization: Bearer " + token + b"\r\n\r\n["
        )
        started = time.monotonic()
        reply = b""
        while b"request_timeout" not in reply and time.monotonic() - started < 10:
            chunk = s.recv(65536)  # the status line and the body may come in separate reads
            if not chunk:
                break
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"request_timeout"' in reply
    assert time.monotonic() - started < 5


def test_a_batch_of_ten_thousand_events_is_accepted(up: Up) -> None:
    events = [event(f"t{i % 7}", f"big-{i}") for i in range(10_000)]
    resp = up.http.post("/publish", content=orjson.dumps(events), headers={"content-type": "application/json"})
    assert resp.status_code == 202 and resp.json()["accepted"] == 10_000
    assert up.settled_stats(arrived=10_000)["unique_processed"] == 10_000


@pytest.mark.parametrize("depth", [50, MAX_DEPTH - 1, MAX_DEPTH, 5000])
def test_deeply_nested_payloads(up: Up, depth: int) -> None:
    """The event nests one level more than its payload: up to MAX_DEPTH, as deep as the sink reads."""
    nested = '{"a":' * depth + "1" + "}" * depth
    fields = f'"topic":"deep","event_id":"d{depth}","timestamp":"2026-11-22T10:00:00Z","source":"s"'
    body = ("{" + fields + ',"payload":' + nested + "}").encode()
    resp = up.http.post("/publish", content=body, headers={"content-type": "application/json"})
    if depth < MAX_DEPTH:
        assert resp.status_code == 202
    elif depth == MAX_DEPTH:
        assert resp.status_code == 422
        [detail] = resp.json()["error"]["details"]
        assert detail["field"] == "payload" and f"nested deeper than {MAX_DEPTH} levels" in detail["message"]
    else:
        assert resp.status_code == 400 and "recursion" in resp.json()["error"]["message"]


def test_the_service_survives_a_barrage_of_bad_requests(up: Up) -> None:
    bad = [
        (b"\xff" * 1000, "application/json"),
        (b"{" * 100_000, "application/json"),
        (b'[{"topic": 1}]' * 3, "application/json"),
        (b"null", "application/json"),
        (b'{"a":1}', "application/xml"),
        (b'"just a string"', "application/json; charset=utf-8"),
    ]
    for body, media in bad:
        resp = up.http.post("/publish", content=body, headers={"content-type": media})
        assert 400 <= resp.status_code < 500, (body[:20], resp.status_code)
        assert set(resp.json()) == {"error"}
    assert up.http.get("/healthz").status_code == 200
    assert up.publish(event("after", "ok")).status_code == 202


# ---- raw NATS garbage -----------------------------------------------------------------------------


def test_large_and_odd_nats_messages(up: Up) -> None:
    megabyte_text = b"x" * 1_000_000
    megabyte_binary = bytes(range(256)) * 3900
    nats_publish(
        up.nats_url,
        [
            ("logs.big", megabyte_text, {"Nats-Msg-Id": "big:text"}),
            ("logs.big", megabyte_binary, {"Nats-Msg-Id": "big:binary"}),
            ("logs.big", b'{"event_id": ["not", "a", "string"]}', None),
            ("logs.big", b'{"topic": "big", "event_id": "ok", "payload": {"n": 1}}', None),
        ],
    )
    stats = up.settled_stats(arrived=4, timeout=60)
    assert (stats["unique_processed"], stats["invalid"]) == (2, 2)
    text = up.http.get("/events/big/text").json()
    assert len(text["payload"]["message"]) == 1_000_000
    letters = up.http.get("/dead-letters").json()["dead_letters"]
    binary = next(d for d in letters if "UTF-8" in d["reason"])
    assert binary["body_bytes"] == len(megabyte_binary) and binary["body_truncated"]
    with httpx.Client(base_url=up.url, auth=up.auth) as client:
        assert client.get("/readyz").status_code == 200
