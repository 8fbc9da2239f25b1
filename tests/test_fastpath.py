"""The sink's two decoders give one verdict and store the same row for every message, the SQL batch
decoder takes what ingest publishes, and a stored payload is the JSON text that was sent."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings

from logmesh.common.model import MsgIdKey
from logmesh.common.reference_decoder import Rejected, decode_message
from logmesh.common.wire import Delivery, WireMsg, parse_headers
from logmesh.ingest.body import parse_events
from logmesh.sink.decoding import DecodedBatch, ReferenceDecoder
from logmesh.sink.seqranges import SeqRanges
from logmesh.sink.sql_decoder import SqlDecoder
from tests.stream_messages import BAD_PAYLOADS, Generated, batches, reply

EPOCH = 1_700_000_000
CANONICAL = '{"topic":"orders","event_id":"e1","timestamp":"2026-11-22T10:00:00Z","source":"s","payload":%s}'


class RecordingSqlDecoder(SqlDecoder):
    """Keeps what the query made of the last batch, so that a test looks at it without running the
    query twice."""

    last: pa.Table

    def query(self, msgs: Sequence[WireMsg]) -> pa.Table:
        self.last = super().query(msgs)
        return self.last


@pytest.fixture(scope="module")
def sql() -> Iterator[RecordingSqlDecoder]:
    decoder = RecordingSqlDecoder(memory_limit="256MB", threads=1)
    yield decoder
    decoder.close()


def reference(msg: WireMsg) -> Any:
    subject, rep, block, body = msg
    try:
        return decode_message(subject.decode(), parse_headers(block), body, Delivery.from_reply(rep), EPOCH)
    except Rejected as exc:
        return exc


def outcomes(decoded: DecodedBatch, msgs: list[WireMsg]) -> list[Any]:
    """Per message, what the batch made of it: the stored row, the dead letter, or nothing to store
    (a receipt, or a redelivery)."""
    rows = {r["seq"]: r for r in decoded.candidates.to_pylist()}
    assert len(rows) == decoded.candidates.num_rows, "two candidate rows for one stream sequence"
    out = []
    for i, msg in enumerate(msgs):
        dead = decoded.dead_letters.get(i)
        seq = Delivery.from_reply(msg[1]).stream_seq
        row = rows.pop(seq, None)
        assert dead is None or row is None
        out.append(("dead", dead.seq, dead.subject, dead.reason, dead.headers, dead.body) if dead else row)
    assert not rows, "rows for messages not in the batch"
    return out


def test_what_ingest_publishes_takes_the_sql_path(sql: SqlDecoder) -> None:
    # Ingest publishes each event's own text (parse_events gives it) under its keyed id: compact JSON with
    # UTC times, as the load generator and most clients send it, must stay on the SQL path.
    body = orjson.dumps(
        [
            {"topic": "orders", "event_id": "o-1", "timestamp": "2026-11-22T10:00:00Z", "source": "shop"},
            {
                "topic": "a.b-c_d",
                "event_id": "x y",
                "timestamp": "2026-11-22T10:00:00.123456Z",
                "source": "s",
                "payload": {"nested": {"list": [1, 2.5, "three", None, True]}, "big": 2**63 - 1, "f": 0.1},
            },
            {"topic": "t", "event_id": "id", "timestamp": "2026-11-22T10:00:00Z", "source": "s", "payload": {}},
        ]
    )
    events, texts = parse_events(body, 10)
    ids = MsgIdKey(b"k" * 32)  # ingest's ids: every HTTP event carries one
    msgs = [
        WireMsg(
            b"logs." + e.topic.encode(),
            reply(n + 1),
            b"NATS/1.0\r\nNats-Msg-Id: %s\r\n\r\n" % ids.msg_id(e.topic, e.event_id).encode(),
            text,
        )
        for n, (e, text) in enumerate(zip(events, texts, strict=True))
    ]
    decoded = sql.query(msgs).to_pylist()
    assert [r["fast"] for r in decoded] == [True, True, True]
    for row, event, msg in zip(decoded, events, msgs, strict=True):
        assert (row["topic"], row["event_id"], row["source"]) == (event.topic, event.event_id, event.source)
        assert row["timestamp"] == event.timestamp.astimezone(UTC).replace(tzinfo=None)
        assert row["payload"] == json.dumps(json.loads(msg.data).get("payload", {}), separators=(",", ":"))


def test_times_come_out_as_naive_utc_as_the_table_stores_them(sql: SqlDecoder) -> None:
    body = b'{"event_id":"a","timestamp":"2026-11-22T10:00:00Z","source":"s"}'
    [row] = sql.query([WireMsg(b"logs.t", reply(1), None, body)]).to_pylist()
    assert row["fast"] and row["timestamp"] == datetime(2026, 11, 22, 10, 0)


PAYLOADS = [
    '{"big":18446744073709551616,"bigger":1000000000000000000000000000000,"low":-9223372036854775809}',
    '{"floats":[0.1,1e308,5e-324,-0.0,1.5e-300,0.30000000000000004]}',
    '{"as written":[1E5,1.50,2.5e+3,-0,1e-400,123456789012345678901234567890.5]}',
    '{"nul":"a\\u0000b","emoji":"😀","combining":"e\u0301","escaped pair":"\\ud83d\\ude00"}',
    '{"lone":"\\ud800","low":"x\\udc00","escapes":"\\/\\"\\\\\\b\\f\\n\\r\\t\\u00e9"}',
    '{"z":1,"a":{"y":[{"x":[]},{}],"b":null},"m":[true,false]}',
    '{"twice":1,"twice":2}',
    '{ "spaced" : [ 1 , 2 ] ,\n  "out" : { } }',
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_payload_is_stored_as_the_text_that_was_sent(sql: RecordingSqlDecoder, payload: str) -> None:
    body = (CANONICAL % payload).encode()
    msgs = [WireMsg(b"logs.orders", reply(1), None, body), WireMsg(b"logs.orders", reply(2), None, body + b"\n")]
    for decoder in (sql, ReferenceDecoder()):
        decoded = decoder.decode(msgs, SeqRanges(), EPOCH)
        assert not decoded.dead_letters
        assert decoded.candidates["payload"].to_pylist() == [payload, payload]


@pytest.mark.parametrize(
    "body",
    [
        # Stored by DuckDB's JSON reader before; the same body with an escape went to the reference
        # decoder and was refused.
        '{"event_id":"e","timestamp":"2026-11-22T10:00:00Z","source":"s","payload": {"a": [1,2,],},}',
        '{"event_id":"e","timestamp":"2026-11-22T10:00:00Z","source":"s","payload":{"a":[1,2,]}}',
        CANONICAL[:-1] + ",}",
        "{/* c */" + CANONICAL[1:],
        *(CANONICAL % p for bad in BAD_PAYLOADS.values() for p in bad),
    ],
)
def test_json_the_strict_grammar_refuses_is_refused_by_both_decoders(sql: RecordingSqlDecoder, body: str) -> None:
    msgs = [WireMsg(b"logs.orders", reply(1), None, body.encode())]
    by_sql = sql.decode(msgs, SeqRanges(), EPOCH)
    assert not sql.last["fast"][0].as_py()
    by_reference = ReferenceDecoder().decode(msgs, SeqRanges(), EPOCH)
    assert by_sql.candidates.num_rows == by_reference.candidates.num_rows == 0
    assert by_sql.dead_letters[0].reason == by_reference.dead_letters[0].reason
    assert by_sql.dead_letters[0].reason.startswith("body starts with '{' but is not valid JSON: ")


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches())
def test_both_decoders_give_every_message_the_same_verdict_and_row(
    sql: RecordingSqlDecoder, batch: tuple[list[Generated], SeqRanges]
) -> None:
    generated, committed = batch
    msgs = [g.msg for g in generated]
    by_sql = sql.decode(msgs, committed, EPOCH)
    by_reference = ReferenceDecoder().decode(msgs, committed, EPOCH)
    assert outcomes(by_sql, msgs) == outcomes(by_reference, msgs)
    assert by_sql.window_duplicates == by_reference.window_duplicates
    assert sorted(by_sql.first_seqs) == sorted(by_reference.first_seqs)
    assert by_sql.redelivered == by_reference.redelivered == len(msgs) - len(by_sql.first_seqs)

    # What the query stores itself, it stores as the reference decoder does; the canonical event is
    # always among it.
    query = sql.last.to_pylist()
    assert query[0]["fast"], "the SQL path did not take a canonical event"
    for row in query:
        if not row["fast"]:
            continue
        expected = reference(msgs[row["i"]])
        assert not isinstance(expected, Rejected), (msgs[row["i"]], expected.reason)
        assert (row["topic"], row["event_id"], row["source"], row["payload"], row["seq"]) == (
            expected.topic,
            expected.event_id,
            expected.source,
            expected.payload,
            expected.seq,
        )
        assert row["timestamp"] == expected.timestamp.astimezone(UTC).replace(tzinfo=None)

    # Each message's verdict against what was sent: malformed JSON is refused, and a stored payload
    # is the text that was sent.
    first = set(by_reference.first_seqs)
    seen: set[int] = set()
    for g, outcome in zip(generated, outcomes(by_reference, msgs), strict=True):
        seq = Delivery.from_reply(g.msg.reply).stream_seq
        if seq not in first or seq in seen:
            continue
        seen.add(seq)
        if g.malformed:
            assert isinstance(outcome, tuple) and outcome[0] == "dead", (g.msg.data, outcome)
        if g.valid:
            assert isinstance(outcome, dict), (g.msg, outcome)
        if isinstance(outcome, dict):
            assert outcome["payload"] == g.payload
