"""No answer outgrows a NATS message: stats with very many topics, pages of large events or dead
letters, and one event larger than a NATS message all come back whole, on a real ``logmesh up``."""

from __future__ import annotations

import asyncio
import http.client
import statistics
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import nats
import orjson
import pytest

from logmesh.common.nats_answers import PART_HEADER, ask
from logmesh.common.nats_roles import inbox_prefix
from logmesh.common.query_contract import PAGE_BYTES
from logmesh.common.secrets_store import QUERY_TOKEN
from logmesh.sink.store import Store
from tests.harness import Up, event

pytestmark = pytest.mark.timeout(120)


def walk(up: Up, route: str, key: str, **params: str) -> list[dict[str, Any]]:
    """Every item of a paged route, following next_cursor; checks each page's size bound."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        resp = up.http.get(route, params={**params, **({"cursor": cursor} if cursor else {})})
        assert resp.status_code == 200, resp.text[:300]
        page = orjson.loads(resp.content)
        assert page["count"] == len(page[key])
        assert page[key] or page["next_cursor"] is None
        items += page[key]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def test_stats_and_readiness_with_ten_thousand_long_topics(up: Up) -> None:
    topics = [f"{'t' * 118}.{i:09d}" for i in range(10_000)]
    resp = up.publish([event(topic, "e") for topic in topics])
    assert resp.status_code == 202, resp.text[:300]
    stats = up.settled_stats(arrived=10_000)
    assert sorted(t["topic"] for t in stats["topics"]) == topics
    assert stats["invariant_holds"] and stats["unique_processed"] == 10_000
    assert up.http.get("/readyz").status_code == 200

    async def over_nats() -> tuple[dict[str, str], dict[str, Any]]:
        nc = await nats.connect(up.nats_url, inbox_prefix=inbox_prefix("admin"))
        try:
            first = await nc.request("logmesh.query.stats", b"", timeout=10)  # what `nats req` shows
            whole = await ask(nc, "logmesh.query.stats", b"", timeout=10)
            return first.headers or {}, orjson.loads(whole.data)
        finally:
            await nc.close()

    first_headers, whole = asyncio.run(over_nats())
    assert first_headers[PART_HEADER].startswith("1/")  # over 2 MB: sent in parts
    assert len(whole["topics"]) == 10_000 and whole["sink"]["ready"] is True


def test_pages_of_large_events_and_dead_letters(up: Up) -> None:
    blob = "x" * 15_000
    assert up.publish([event("big", f"e{i:03d}", payload={"blob": blob}) for i in range(100)]).status_code == 202

    async def dead_letters() -> None:
        nc = await nats.connect(up.nats_url, inbox_prefix=inbox_prefix("admin"))
        js = nc.jetstream()
        try:
            for i in range(300):
                await js.publish("logs.bad", b'{"broken %d' % i + b"y" * 15_000)
        finally:
            await nc.close()

    asyncio.run(dead_letters())
    up.settled_stats(arrived=400)
    started = time.monotonic()
    first = up.http.get("/events", params={"topic": "big", "limit": "100"})
    assert first.status_code == 200 and time.monotonic() - started < 2.0
    page = orjson.loads(first.content)
    assert 1 <= page["count"] < 100 and page["next_cursor"] is not None  # ended by size, not by count
    assert len(first.content) < PAGE_BYTES + 20_000
    events = walk(up, "/events", "events", topic="big", limit="100")
    assert [e["event_id"] for e in events] == [f"e{i:03d}" for i in range(100)]
    assert all(e["payload"] == {"blob": blob} for e in events)
    newest = walk(up, "/events", "events", topic="big", limit="1000", order="desc")
    assert [e["event_id"] for e in newest] == [f"e{i:03d}" for i in reversed(range(100))]
    letters = walk(up, "/dead-letters", "dead_letters", limit="1000")
    assert len(letters) == 300 and len({d["id"] for d in letters}) == 300
    assert all(d["body_truncated"] and d["body_bytes"] > 15_000 for d in letters)


def test_an_event_larger_than_a_nats_message_is_read_back_whole(up: Up) -> None:
    # A plain log line of control characters: stored as {"message": "\u0001..."}, six times its size.
    line = "\x01" * 600_000

    async def send() -> None:
        nc = await nats.connect(up.nats_url, inbox_prefix=inbox_prefix("admin"))
        try:
            await nc.jetstream().publish("logs.huge", line.encode(), headers={"Nats-Msg-Id": "huge:one"})
        finally:
            await nc.close()

    asyncio.run(send())
    up.settled_stats(arrived=1)
    one = up.http.get("/events/huge/one")
    assert one.status_code == 200, one.text[:300]
    assert len(one.content) > 1024 * 1024 and orjson.loads(one.content)["payload"] == {"message": line}
    [listed] = walk(up, "/events", "events", topic="huge")
    assert listed["payload"] == {"message": line}


def fill_topics(data_dir: Path, count: int) -> None:
    """A sink store whose counters hold ``count`` topics, written straight into its tables."""
    path = data_dir / "logmesh.duckdb"
    store = Store(path, memory_limit="256MB", checkpoint_threshold="16MB")
    store.load()
    store.close()
    con = duckdb.connect(str(path))
    con.execute(
        "INSERT INTO topics SELECT repeat('t', 118) || '.' || lpad(i::VARCHAR, 9, '0'), 1, 0, 0 FROM range(?) r(i)",
        [count],
    )
    con.execute("UPDATE counters SET received = ?, unique_processed = ?", [count, count])
    con.close()


def test_stats_with_100000_topics_answer_within_100_ms(make_up: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "many"
    data_dir.mkdir()
    fill_topics(data_dir, 100_000)
    up = make_up(data_dir=data_dir)
    url = urlsplit(up.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)

    def get(path: str) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        conn.request("GET", path, headers={"Authorization": f"Bearer {up.secret(QUERY_TOKEN)}"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, time.perf_counter() - started

    status, body, _ = get("/stats")
    assert status == 200, body[:300]
    assert len(orjson.loads(body)["topics"]) == 100_000
    took = [get("/stats")[2] for _ in range(15)]
    assert statistics.median(took) < 0.1, took
    ready = [get("/readyz") for _ in range(5)]
    assert all(status == 200 for status, _, _ in ready)
    assert statistics.median(t for _, _, t in ready) < 0.05
    conn.close()
