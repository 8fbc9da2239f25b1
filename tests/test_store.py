"""The DuckDB store on its own (a real file): batches, duplicates, and what listings rely on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import orjson
import pytest

from logmesh.common.wire import WireMsg
from logmesh.sink.decoding import BatchDecoder, ReferenceDecoder, refuse
from logmesh.sink.sql_decoder import SqlDecoder
from logmesh.sink.store import CommitResult, Store


def reply(seq: int) -> bytes:
    return b"$JS.ACK.LOGS.sink.1.%d.%d.1763805600000000000.0" % (seq, seq)


def message(seq: int, event_id: str) -> WireMsg:
    body = orjson.dumps({"topic": "t", "event_id": event_id, "timestamp": "2026-11-22T10:00:00Z", "source": "s"})
    return WireMsg(b"logs.t", reply(seq), None, body)


def receipt(seq: int, body: bytes) -> WireMsg:
    return WireMsg(b"logmesh.receipts", reply(seq), None, body)


class Sink:
    """A store and a decoder, committing as the sink's writer does."""

    def __init__(self, path: Path) -> None:
        self.store = Store(path, memory_limit="256MB", checkpoint_threshold="16MB")
        self.decoder = SqlDecoder(memory_limit="256MB", threads=1)
        state = self.store.load()
        self.counters, self.committed = state.counters, state.committed

    def commit(self, msgs: list[WireMsg]) -> CommitResult:
        decoded = self.decoder.decode(msgs, self.committed, 0)
        result = self.store.commit(decoded, self.counters, self.committed)
        self.counters, self.committed = result.counters, result.committed
        return result

    def close(self) -> None:
        self.store.close()
        self.decoder.close()


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[Sink]:
    s = Sink(tmp_path / "store.duckdb")
    yield s
    s.close()


def test_ids_stay_unique_after_a_batch_that_met_stored_keys(tmp_path: Path, sink: Sink) -> None:
    sink.commit([message(1, "a"), message(2, "b"), message(3, "c")])
    # "a" again, past the window: the conflict path runs and numbers every candidate.
    second = sink.commit([message(4, "a"), message(5, "d"), message(6, "e")])
    assert second.conflict_fallback and second.inserted == 2
    third = sink.commit([message(7, "f"), message(8, "g")])
    assert third.counters.unique_processed == 7 and third.counters.store_duplicates == 1
    sink.close()
    con = duckdb.connect(str(tmp_path / "store.duckdb"), read_only=True)
    [(rows, ids)] = con.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchall()
    con.close()
    assert rows == ids == 7, "two events share an id: cursor pagination would skip one"


def test_a_reopened_store_continues_the_ids(tmp_path: Path) -> None:
    path = tmp_path / "store.duckdb"
    first = Sink(path)
    first.commit([message(1, "a"), message(2, "b")])
    first.close()
    second = Sink(path)
    assert second.counters.unique_processed == 2 and 2 in second.committed
    second.commit([message(3, "c")])
    ids = [e["id"] for e in second.store.reader.list_events(None, 0, 10, newest_first=False)]
    second.close()
    assert ids == sorted(set(ids)) and len(ids) == 3


def test_a_key_twice_in_one_batch_keeps_its_first_copy_in_stream_order(sink: Sink) -> None:
    # Delivered out of stream order (as redeliveries are), "x" at seqs 5 and 4.
    result = sink.commit([message(5, "x"), message(3, "y"), message(4, "x")])
    assert result.inserted == 2 and not result.conflict_fallback
    assert (result.counters.unique_processed, result.counters.store_duplicates) == (2, 1)
    listed = sink.store.reader.list_events(None, 0, 10, newest_first=False)
    assert [(e["event_id"], e["seq"]) for e in listed] == [("y", 3), ("x", 4)]


def test_a_redelivered_batch_changes_nothing(sink: Sink) -> None:
    batch = [message(1, "a"), message(2, "b"), receipt(3, b'{"window_duplicates":{"t":1}}')]
    first = sink.commit(batch)
    again = sink.commit(batch)
    assert (first.inserted, first.redelivered) == (2, 0)
    assert (again.inserted, again.redelivered, again.dead) == (0, 3, {})
    assert again.counters == first.counters


def test_a_refused_batch_keeps_its_new_messages_as_dead_letters(sink: Sink) -> None:
    sink.commit([message(1, "a")])
    msgs = [message(1, "a"), message(2, "b")]
    result = sink.store.commit(refuse(msgs, sink.committed, "set aside"), sink.counters, sink.committed)
    assert result.dead == {1: "set aside"} and result.inserted == 0 and result.redelivered == 1
    assert result.counters.invalid == 1 and result.counters.invariant_holds
    [dead] = sink.store.reader.list_dead_letters(0, 10, newest_first=False)
    assert (dead["seq"], dead["reason"]) == (2, "set aside")


def test_the_stored_payload_is_the_text_that_was_sent(tmp_path: Path) -> None:
    payloads = [
        '{"n":18446744073709551616,"f":[0.1,1e308,5e-324,-0.0],"s":"\\ud800 \\u0000 😀 e\u0301"}',
        '{"b":1,"a":{"d":[1,{"c":null}]},"b":2}',
        '{ "spaced" : 1E5 }',
    ]
    decoders: list[BatchDecoder] = [SqlDecoder(memory_limit="256MB", threads=1), ReferenceDecoder()]
    for n, decoder in enumerate(decoders):
        store = Store(tmp_path / f"{n}.duckdb", memory_limit="256MB", checkpoint_threshold="16MB")
        state = store.load()
        msgs = [
            WireMsg(
                b"logs.t",
                reply(seq),
                None,
                b'{"event_id":"e%d","timestamp":"2026-11-22T10:00:00Z","source":"s","payload":%s}' % (seq, p.encode()),
            )
            for seq, p in enumerate(payloads, 1)
        ]
        store.commit(decoder.decode(msgs, state.committed, 0), state.counters, state.committed)
        decoder.close()
        store.close()
        con = duckdb.connect(str(tmp_path / f"{n}.duckdb"), read_only=True)
        stored = [p for (p,) in con.execute("SELECT payload FROM events ORDER BY seq").fetchall()]
        con.close()
        assert stored == payloads
