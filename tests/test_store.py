"""The DuckDB store on its own (a real file): batches, duplicates, what listings rely on, and receipts
that cannot corrupt the counters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import orjson
import pytest

from logmesh.common.query_contract import DeadLettersQuery, EventsQuery
from logmesh.common.wire import WireMsg
from logmesh.sink.decoding import BatchDecoder, ReferenceDecoder, refuse
from logmesh.sink.sql_decoder import SqlDecoder
from logmesh.sink.store import CommitResult, Store
from tests.stream_messages import reply


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
    ids = [e["id"] for e in orjson.loads(second.store.reader.list_events(EventsQuery(limit=10)))["events"]]
    second.close()
    assert ids == sorted(set(ids)) and len(ids) == 3


def test_a_key_twice_in_one_batch_keeps_its_first_copy_in_stream_order(sink: Sink) -> None:
    # Delivered out of stream order (as redeliveries are), "x" at seqs 5 and 4.
    result = sink.commit([message(5, "x"), message(3, "y"), message(4, "x")])
    assert result.inserted == 2 and not result.conflict_fallback
    assert (result.counters.unique_processed, result.counters.store_duplicates) == (2, 1)
    listed = orjson.loads(sink.store.reader.list_events(EventsQuery(limit=10)))["events"]
    assert [(e["event_id"], e["seq"]) for e in listed] == [("y", 3), ("x", 4)]


def test_a_redelivered_batch_changes_nothing(sink: Sink) -> None:
    batch = [message(1, "a"), message(2, "b"), receipt(3, b'{"events":2,"window_duplicates":{"t":1}}')]
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
    [dead] = orjson.loads(sink.store.reader.list_dead_letters(DeadLettersQuery(limit=10)))["dead_letters"]
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


ABSURD_RECEIPTS = [
    (b'{"events":3,"window_duplicates":{"t":18446744073709551615}}', "window_duplicates.t: must be an integer"),
    (b'{"events":18446744073709551615,"window_duplicates":{"t":1}}', "events: must be an integer from 1 to 1000000"),
    (b'{"events":2,"window_duplicates":{"t":2,"u":1}}', "add up to 3, more than its 2 events"),
    (b'{"window_duplicates":{"t":1}}', "events: field required"),
    (b'{"events":5,"window_duplicates":{"t":-1}}', "window_duplicates.t: must be an integer from 1 to 5, not -1"),
    (b'{"events":5,"window_duplicates":{"t":1.0}}', "not 1.0"),
    (b'{"events":5,"window_duplicates":{"t":1e3}}', "not 1e3"),
    (b'{"events":5,"window_duplicates":{"t":"1"}}', "not a string"),
    (b'{"events":5,"window_duplicates":{"t":1,"t":1}}', "name 't' appears twice"),
    (b'{"events":5,"window_duplicates":{"bad topic":1}}', "topic must be"),
    (b'{"events":5,"window_duplicates":{"t":1},}', "trailing comma"),
    (b'{"events":5,"window_duplicates":{"t":NaN}}', "NaN is not a JSON value"),
    (b'{"events":5,"window_duplicates":{"t":1},"extra":1}', "'extra': unknown field"),
]


@pytest.mark.parametrize(("body", "reason"), ABSURD_RECEIPTS)
def test_a_receipt_that_cannot_be_true_is_a_dead_letter_and_counts_nothing(
    sink: Sink, body: bytes, reason: str
) -> None:
    result = sink.commit([message(1, "a"), receipt(2, body)])
    assert list(result.dead) == [1] and reason in result.dead[1], result.dead
    assert result.dead[1].startswith("receipt: ")
    assert result.counters.window_duplicates == 0 and result.counters.invalid == 1
    assert result.counters.invariant_holds
    # The store keeps taking receipts and events.
    after = sink.commit([message(3, "b"), receipt(4, b'{"events":1000000,"window_duplicates":{"t":1000000}}')])
    assert after.dead == {} and after.counters.window_duplicates == 1_000_000


def test_counters_stay_far_from_overflow_at_the_largest_receipts(sink: Sink) -> None:
    # The most a batch of 20,000 messages can report, committed: the counters stay exact integers.
    batch = [receipt(seq, b'{"events":1000000,"window_duplicates":{"t":1000000}}') for seq in range(1, 20_001)]
    result = sink.commit(batch)
    assert result.dead == {} and result.counters.window_duplicates == 20_000 * 1_000_000
    stored = sink.store.load()
    assert stored.counters == result.counters and stored.committed.ranges() == [(1, 20_000)]
