"""What is read back is exactly what was stored: the read path splices stored payloads (and a dead
letter's stored headers) into its answers as text, never parsing them, so big integers, float
spellings, escapes and key order come back as they went in. Compared with Python's ``json`` module,
whose integers are exact."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import duckdb
import nats
import orjson
import pytest

from logmesh.common.query_contract import DeadLettersQuery, EventQuery, EventsQuery
from logmesh.sink.store import Store
from tests.harness import Up

pytestmark = pytest.mark.timeout(90)

# Payload texts as a faithful decoder stores them; each one loses something if parsed and re-serialised.
PAYLOADS = {
    "ints": '{"z":1,"a":18446744073709551616,"b":1000000000000000000000000000000,"c":-18446744073709551617}',
    "floats": '{"tenth":0.1,"max":1e308,"min":5e-324,"negzero":-0.0,"next":1.0000000000000002,"e":1E+2}',
    "strings": '{"nul":"a\\u0000b","emoji":"\U0001f600","lone":"\\ud800 and \\udfff","pair":"\\ud83d\\ude00"}',
    "order": '{"b":1,"a":2,"nested":{"y":[3,{"q":1,"p":2}],"x":null}}',
    "spacing": '{ "spaced" : [ 1 , 2.50 ] , "t" : true }',
}


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down; floats compared by their exact value and sign."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _stored(path: Path) -> Store:
    store = Store(path, memory_limit="256MB", checkpoint_threshold="16MB")
    store.load()
    store.close()
    con = duckdb.connect(str(path))
    for i, (name, text) in enumerate(PAYLOADS.items(), start=1):
        con.execute(
            "INSERT INTO events VALUES (md5_number(? || ':' || ?), ?, ?, ?, TIMESTAMP '2026-11-22 10:00:00', 's', ?, ?,"
            " TIMESTAMP '2026-11-22 10:00:01')",
            ["t", name, i, "t", name, text, i],
        )
    headers = '{"X-Big":"18446744073709551616","Emoji":"\U0001f600","Esc":"\\ud800"}'
    con.execute(
        "INSERT INTO dead_letters VALUES (1, 9, 'logs.t', 'why', ?, ?, TIMESTAMP '2026-11-22 10:00:02')",
        [headers, b"body"],
    )
    con.close()
    store = Store(path, memory_limit="256MB", checkpoint_threshold="16MB")
    store.load()
    return store


def test_the_reader_splices_stored_text_verbatim(tmp_path: Path) -> None:
    store = _stored(tmp_path / "store.duckdb")
    try:
        page = store.reader.list_events(EventsQuery(limit=10))
        for name, text in PAYLOADS.items():
            assert b'"payload":' + text.encode() + b',"seq"' in page, name
            one = store.reader.get_event(EventQuery(topic="t", event_id=name))
            assert one is not None and b'"payload":' + text.encode() + b',"seq"' in one
            assert same(json.loads(one)["payload"], json.loads(text)), name
        events = json.loads(page)["events"]
        assert [e["event_id"] for e in events] == list(PAYLOADS)
        assert all(same(e["payload"], json.loads(PAYLOADS[e["event_id"]])) for e in events)
        letters = store.reader.list_dead_letters(DeadLettersQuery())
        assert b'"headers":{"X-Big":"18446744073709551616","Emoji":"\xf0\x9f\x98\x80","Esc":"\\ud800"}' in letters
        assert json.loads(letters)["dead_letters"][0]["headers"]["Esc"] == "\ud800"
    finally:
        store.close()


def event_body(event_id: str, payload: str) -> bytes:
    head = orjson.dumps({"event_id": event_id, "timestamp": "2026-11-22T10:00:00Z", "source": "s"})
    return head[:-1] + b',"payload":' + payload.encode() + b"}"


def publish(url: str, messages: list[tuple[str, bytes, dict[str, str] | None]]) -> None:
    async def go() -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        try:
            for subject, body, headers in messages:
                await js.publish(subject, body, headers=headers)
        finally:
            await nc.close()

    asyncio.run(go())


def read_back(up: Up, event_id: str) -> Any:
    one = up.http.get(f"/events/fidelity/{event_id}")
    assert one.status_code == 200, one.text
    page = up.http.get("/events", params={"topic": "fidelity", "limit": "1000"})
    [listed] = [e for e in json.loads(page.content)["events"] if e["event_id"] == event_id]
    payload = json.loads(one.content)["payload"]
    assert same(payload, listed["payload"])
    return payload


@pytest.mark.parametrize("name", ["ints", "floats", "order"])
def test_values_published_over_nats_come_back_as_sent(up: Up, name: str) -> None:
    text = PAYLOADS[name]
    publish(up.nats_url, [("logs.fidelity", event_body(name, text), {"Nats-Msg-Id": f"fidelity:{name}"})])
    up.settled_stats(arrived=1)
    assert same(read_back(up, name), json.loads(text))


def test_strings_with_nul_emoji_and_escaped_lone_surrogates_come_back_as_sent(up: Up) -> None:
    text = PAYLOADS["strings"]
    publish(up.nats_url, [("logs.fidelity", event_body("strings", text), None)])
    stats = up.settled_stats(arrived=1)
    reasons = [d["reason"] for d in up.http.get("/dead-letters").json()["dead_letters"]]
    assert stats["unique_processed"] == 1, reasons
    assert same(read_back(up, "strings"), json.loads(text))


def test_dead_letter_headers_come_back_as_sent(up: Up) -> None:
    headers = {"X-Big": "18446744073709551616", "X-Emoji": "\U0001f600", "X-Quote": 'say "hi" \\ back'}
    publish(up.nats_url, [("logs.fidelity", b'{"not json', headers)])
    up.settled_stats(arrived=1)
    [letter] = json.loads(up.http.get("/dead-letters").content)["dead_letters"]
    assert {k: v for k, v in letter["headers"].items() if k.startswith("X-")} == headers
