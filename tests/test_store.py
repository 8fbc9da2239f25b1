"""The DuckDB store on its own (a real file): batches, duplicates, and what listings rely on."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson

from logmesh.common.query_contract import EventsQuery
from logmesh.sink.store import Store


def message(seq: int, event_id: str) -> tuple[bytes, bytes, bytes | None, bytes]:
    body = orjson.dumps({"topic": "t", "event_id": event_id, "timestamp": "2026-11-22T10:00:00Z", "source": "s"})
    return (b"logs.t", b"$JS.ACK.LOGS.sink.1.%d.%d.1763805600000000000.0" % (seq, seq), None, body)


def test_ids_stay_unique_after_a_batch_that_met_stored_keys(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    store = Store(path, memory_limit="256MB", checkpoint_threshold="16MB")
    state = store.load()
    first = store.commit([message(1, "a"), message(2, "b"), message(3, "c")], state.counters, state.committed, 0)
    # "a" again, past the window: the conflict path runs and numbers every candidate.
    second = store.commit([message(4, "a"), message(5, "d"), message(6, "e")], first.counters, first.committed, 0)
    assert second.conflict_fallback and second.inserted == 2
    third = store.commit([message(7, "f"), message(8, "g")], second.counters, second.committed, 0)
    assert third.counters.unique_processed == 7 and third.counters.store_duplicates == 1
    store.close()
    con = duckdb.connect(str(path), read_only=True)
    [(rows, ids)] = con.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchall()
    con.close()
    assert rows == ids == 7, "two events share an id: cursor pagination would skip one"


def test_a_reopened_store_continues_the_ids(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    store = Store(path, memory_limit="256MB", checkpoint_threshold="16MB")
    state = store.load()
    store.commit([message(1, "a"), message(2, "b")], state.counters, state.committed, 0)
    store.close()
    store = Store(path, memory_limit="256MB", checkpoint_threshold="16MB")
    state = store.load()
    assert state.counters.unique_processed == 2 and 2 in state.committed
    store.commit([message(3, "c")], state.counters, state.committed, 0)
    ids = [e["id"] for e in orjson.loads(store.reader.list_events(EventsQuery(limit=10)))["events"]]
    store.close()
    assert ids == sorted(set(ids)) and len(ids) == 3


def test_a_key_twice_in_one_batch_keeps_its_first_copy_in_stream_order(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    store = Store(path, memory_limit="256MB", checkpoint_threshold="16MB")
    state = store.load()
    # Delivered out of stream order (as redeliveries are), "x" at seqs 5 and 4.
    result = store.commit([message(5, "x"), message(3, "y"), message(4, "x")], state.counters, state.committed, 0)
    assert result.inserted == 2 and not result.conflict_fallback
    assert (result.counters.unique_processed, result.counters.store_duplicates) == (2, 1)
    listed = orjson.loads(store.reader.list_events(EventsQuery(limit=10)))["events"]
    store.close()
    assert [(e["event_id"], e["seq"]) for e in listed] == [("y", 3), ("x", 4)]
