"""The HTTP contract of ingest and query, on a real `logmesh up` (NATS, sink, DuckDB)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.harness import Up, event

pytestmark = pytest.mark.timeout(90)


def assert_error_shape(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The one JSON error shape every service answers with."""
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error"}
    err = body["error"]
    assert set(err) == {"status", "code", "message", "details"}
    assert err["status"] == status
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["details"], list)
    if code is not None:
        assert err["code"] == code
    return err  # type: ignore[no-any-return]


def test_publish_one_event_then_read_it_back(up: Up) -> None:
    resp = up.publish(event("orders", "o-1", payload={"amount": 42}))
    assert resp.status_code == 202
    assert resp.json() == {"accepted": 1, "duplicates": 0, "stored": 1}
    stats = up.settled_stats(arrived=1)
    assert stats["unique_processed"] == 1
    got = up.http.get("/events/orders/o-1").json()
    assert got["topic"] == "orders" and got["event_id"] == "o-1"
    assert got["payload"] == {"amount": 42}
    assert got["timestamp"] == "2026-11-22T10:00:00Z"


def test_a_batch_with_invalid_events_is_refused_whole_with_every_error(up: Up) -> None:
    batch = [
        event("orders", "ok-1"),
        event("bad topic", "x"),
        event("orders", " padded"),
        {**event("orders", "ok-2"), "colour": "red"},
        event("orders", "ok-3"),
    ]
    err = assert_error_shape(up.publish(batch), 422, "validation_error")
    found = {(d["index"], d["field"]) for d in err["details"]}
    assert found == {(1, "topic"), (2, "event_id"), (3, "colour")}
    assert all(d["message"] for d in err["details"])
    # Nothing was published: the stream is empty.
    assert up.stats()["stream"]["messages"] == 0


def test_a_single_invalid_object_has_no_index(up: Up) -> None:
    err = assert_error_shape(up.publish(event(source="")), 422, "validation_error")
    assert err["details"] == [{"index": None, "field": "source", "message": err["details"][0]["message"]}]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b'{"topic": ', "application/json", 400, "malformed_json"),
        (b"", "application/json", 400, "malformed_json"),
        (b"\xff\xfe{}", "application/json", 400, "malformed_json"),
        (b"[]", "application/json", 422, "validation_error"),
        (b"42", "application/json", 422, "validation_error"),
        (b"[1, 2]", "application/json", 422, "validation_error"),
        (b'{"topic": "a"}', "text/plain", 415, "unsupported_media_type"),
        (b'{"topic": "a"}', "", 415, "unsupported_media_type"),
    ],
)
def test_bad_requests_get_clear_errors(up: Up, body: bytes, content_type: str, status: int, code: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    resp = up.http.post("/publish", content=body, headers=headers)
    assert_error_shape(resp, status, code)


def test_too_many_events_and_too_large_bodies(make_up: Any) -> None:
    up = make_up({"LOGMESH_MAX_BATCH": "3", "LOGMESH_MAX_BODY_BYTES": "4096"})
    err = assert_error_shape(up.publish([event(event_id=f"e{i}") for i in range(4)]), 422, "too_many_events")
    assert "3" in err["message"]
    big = [event(event_id="big", payload={"blob": "x" * 5000})]
    assert_error_shape(up.publish(big), 413, "payload_too_large")
    assert up.stats()["stream"]["messages"] == 0


def test_unknown_routes_methods_and_events_use_the_error_shape(up: Up) -> None:
    assert_error_shape(up.http.get("/nope"), 404)
    assert_error_shape(up.http.get("/publish"), 405)
    assert_error_shape(up.http.get("/events/orders/missing"), 404, "not_found")
    assert_error_shape(up.http.get("/events/bad topic/x"), 422, "validation_error")
    assert_error_shape(up.http.get("/events?limit=0"), 422, "validation_error")
    assert_error_shape(up.http.get("/events?limit=1001"), 422, "validation_error")
    assert_error_shape(up.http.get("/events?cursor=abc"), 422, "validation_error")
    assert_error_shape(up.http.get("/events?topic=a..b"), 422, "validation_error")


def test_events_are_paginated_in_a_stable_order(up: Up) -> None:
    events = [event(f"t{i % 3}", f"e{i:03d}") for i in range(250)]
    assert up.publish(events).status_code == 202
    up.settled_stats(arrived=250)

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": "100", **({"cursor": cursor} if cursor else {})}
        page = up.http.get("/events", params=params).json()
        seen += [f"{e['topic']}/{e['event_id']}" for e in page["events"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 250
    # Stable: the same walk gives the same order.
    again = up.http.get("/events", params={"limit": "1000"}).json()["events"]
    assert [f"{e['topic']}/{e['event_id']}" for e in again] == seen

    t1 = up.http.get("/events", params={"topic": "t1", "limit": "1000"}).json()
    assert t1["count"] == 83 and {e["topic"] for e in t1["events"]} == {"t1"}
    newest = up.http.get("/events", params={"limit": "1", "order": "desc"}).json()["events"][0]
    assert f"{newest['topic']}/{newest['event_id']}" == seen[-1]


def test_stats_carry_the_seed_fields_and_the_details(up: Up) -> None:
    assert up.publish([event("a", "1"), event("a", "1"), event("b", "2")]).status_code == 202
    stats = up.settled_stats(arrived=3)
    assert stats["received"] == 2
    assert stats["unique_processed"] == 2
    assert stats["duplicate_dropped"] == 1
    assert stats["duplicates"] == {"window": 1, "store": 0}
    assert stats["invalid"] == 0
    assert {t["topic"]: t["count"] for t in stats["topics"]} == {"a": 1, "b": 1}
    assert stats["uptime_seconds"] > 0
    assert stats["consumer"]["pending"] == 0 and stats["consumer"]["ack_pending"] == 0
    assert stats["stream"]["messages"] == 3  # two events and one receipt
    assert stats["invariant_holds"] is True


def test_health_and_readiness(up: Up) -> None:
    assert up.http.get("/healthz").json() == {"status": "ok"}
    ready = up.http.get("/readyz")
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True
    assert body["checks"]["jetstream"]["ok"] and body["checks"]["sink"]["ok"] and body["checks"]["nats"]["ok"]


BAD_PARAMETERS = [
    ("/events?limit=%C2%B2", "limit"),  # '²': str.isdigit() says yes, int() says no
    ("/events?cursor=%E2%91%A0", "cursor"),  # '①'
    ("/events?limit=%D9%A3", "limit"),  # Arabic-Indic 3
    ("/events?cursor=%EF%BC%91", "cursor"),  # fullwidth 1
    ("/dead-letters?limit=%C2%B2", "limit"),
    ("/dead-letters?cursor=%E2%91%A0", "cursor"),
    ("/events?limit=", "limit"),
    ("/events?cursor=", "cursor"),
    ("/events?topic=", "topic"),
    ("/events?order=", "order"),
    ("/events?limit=1e3", "limit"),
    ("/events?limit=-1", "limit"),
    ("/events?limit=+5", "limit"),
    ("/events?limit=%205", "limit"),
    ("/events?limit=" + "9" * 5000, "limit"),
    ("/events?cursor=" + "9" * 20, "cursor"),
    ("/dead-letters?cursor=" + "1" * 5000, "cursor"),
    ("/events?limit=1&limit=2", "limit"),
    ("/events?topic=a&topic=a", "topic"),
    ("/events?order=DESC", "order"),
    ("/events?colour=red", "colour"),
    ("/stats?x=1", "x"),
    ("/dead-letters?topic=a", "topic"),
    ("/events/orders/%20padded", "event_id"),
    ("/events/a..b/x", "topic"),
]


def test_every_bad_parameter_gets_a_422_naming_it(up: Up) -> None:
    for url, name in BAD_PARAMETERS:
        err = assert_error_shape(up.http.get(url), 422, "validation_error")
        assert [d["field"] for d in err["details"]] == [name], (url, err)
        assert err["message"].startswith(f"{name}: ") and err["details"][0]["message"], (url, err)


def test_good_parameters_at_their_bounds(up: Up) -> None:
    assert up.publish([event("orders", f"o{i}") for i in range(3)]).status_code == 202
    up.settled_stats(arrived=3)
    for url in ["/events?limit=1000", "/events?limit=0001", "/events?cursor=0", "/events?cursor=" + "9" * 19]:
        assert up.http.get(url).status_code == 200, url
    page = up.http.get("/events", params={"limit": "2", "order": "desc"}).json()
    assert [e["event_id"] for e in page["events"]] == ["o2", "o1"] and page["next_cursor"] is not None
    rest = up.http.get("/events", params={"limit": "2", "order": "desc", "cursor": page["next_cursor"]}).json()
    assert [e["event_id"] for e in rest["events"]] == ["o0"] and rest["next_cursor"] is None
    assert up.http.get("/dead-letters", params={"limit": "1000", "cursor": "0", "order": "asc"}).status_code == 200
