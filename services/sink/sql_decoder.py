"""The SQL batch decoder: a whole batch of raw messages decoded by one DuckDB query.

Validating each message in Python (pydantic, about 10 µs) was most of the sink's time. DuckDB parses
a batch's JSON in vectorised C++, off the interpreter lock. The query accepts a strict subset of
what the reference decoder (``logmesh.common.reference_decoder``) accepts, and leaves everything else
to it, which decides and explains: plain lines, missing fields, unusual timestamps, non-ASCII ids,
escapes in the event's fields, deep nesting, anything odd.

DuckDB's JSON reader is lenient where RFC 8259 is not: it takes trailing commas, ``NaN``,
``Infinity`` and numbers beyond a float's range. So the query accepts only a body that is exactly the
compact text DuckDB writes back for what it read: then no byte of it was skipped or reinterpreted
(no whitespace, no trailing comma, numbers and escapes as DuckDB writes them), and the stored payload
is the text that was sent. What DuckDB writes back as it read although RFC 8259 or the reference
decoder refuses it (``NaN``, ``Infinity``, a number too large for a float) is left to the reference
decoder by cheap text guards.

The decoder has an in-memory DuckDB of its own: decoding never touches the store, and costs the same
as on the store's connection (a 20,000-message batch: see the commit that made it).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from logmesh.common.model import (
    EVENT_ID_MAX,
    KEYED_MARK,
    MAC_CHAR_CLASS,
    MAC_CHARS,
    SOURCE_MAX,
    TOPIC_MAX,
    TOPIC_PATTERN,
)
from logmesh.common.wire import WireMsg
from logmesh.sink.arrow import CANDIDATE_SCHEMA, rows_table
from logmesh.sink.decoding import SINGLE, DecodedBatch, StoredSubjects, decode_with_reference, first_deliveries
from logmesh.sink.seqranges import SeqRanges

assert "'" not in TOPIC_PATTERN + MAC_CHAR_CLASS + KEYED_MARK  # formatted into SQL string literals
_PREFIX = re.compile(r"(\d+\.)?logs\.")  # a stored subject's prefix, formatted into a literal too

# What comes before the id in the header block a publisher writes ("\r\n\r\n" ends it).
_BEFORE_ID = len("NATS/1.0\r\nNats-Msg-Id: ")

# incoming(i, subject BLOB, reply BLOB, hdr BLOB, body BLOB) is the batch as an Arrow table. One row
# out per message, each computed from its own row only, so DuckDB decodes the Arrow record batches in
# parallel. Which messages are first deliveries is worked out afterwards.
_DECODE_SQL = rf"""
WITH raw AS (
    SELECT
        i,
        TRY(decode(subject)) AS subject,
        decode(reply) AS reply,
        TRY(decode(hdr)) AS hdr,
        hdr IS NULL AS no_headers,
        TRY(decode(body)) AS text
    FROM incoming
), located AS (
    SELECT
        *,
        -- $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>..., or with <domain>.<hash> after ACK
        CAST(CASE WHEN len(string_split(reply, '.')) = 9 THEN split_part(reply, '.', 6)
                  ELSE split_part(reply, '.', 8) END AS UBIGINT) AS seq,
        substr(subject, {{topic_at}}) AS topic
    FROM raw
), parsed AS (
    SELECT
        *,
        CASE WHEN starts_with(subject, '{{prefix}}') AND starts_with(text, '{{')
                  -- Deep nesting is the reference decoder's to refuse; NaN and Infinity DuckDB would
                  -- write back as it read them.
                  AND strlen(text) - strlen(replace(replace(text, '{{', ''), '[', '')) <= 32
                  AND NOT contains(text, 'NaN') AND NOT contains(text, 'Infinity')
             THEN TRY(json(text)) END AS j
    FROM located
), fields AS (
    SELECT
        *,
        len(json_keys(j)) AS key_count,
        json_extract(j, ['$.topic', '$.event_id', '$.timestamp', '$.source', '$.payload']) AS v
    FROM parsed
), strings AS (
    SELECT
        *,
        -- A JSON string with no escape in it is the text between its quotes; with one, the reference
        -- decoder decides.
        list_transform(
            [CAST(v[1] AS VARCHAR), CAST(v[2] AS VARCHAR), CAST(v[3] AS VARCHAR), CAST(v[4] AS VARCHAR)],
            lambda x: CASE WHEN starts_with(x, '"') AND NOT contains(x, '\') THEN x[2:-2] END
        ) AS s,
        CAST(v[5] AS VARCHAR) AS payload_text
    FROM fields
), typed AS (
    SELECT
        *,
        CASE WHEN regexp_full_match(s[3], '[1-9]\d{{3}}-\d\d-\d\dT([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{{1,6}})?Z')
             THEN TRY_CAST(rtrim(s[3], 'Z') AS TIMESTAMP) END AS ts
    FROM strings
)
SELECT
    i,
    seq,
    topic,
    s[2] AS event_id,
    ts AS "timestamp",
    s[4] AS source,
    coalesce(payload_text, '{{}}') AS payload,
    coalesce(
        -- The body is the compact text of what DuckDB read: every byte of it was parsed as written.
        CAST(j AS VARCHAR) = text
        -- As many keys as there are known keys present: no unknown key, none twice.
        AND key_count = (v[1] IS NOT NULL)::INT + (v[2] IS NOT NULL)::INT + (v[3] IS NOT NULL)::INT
                        + (v[4] IS NOT NULL)::INT + (v[5] IS NOT NULL)::INT
        AND strlen(topic) <= {TOPIC_MAX}
        AND regexp_full_match(topic, '{TOPIC_PATTERN}')
        AND (v[1] IS NULL OR s[1] = topic)
        -- 1 to {EVENT_ID_MAX} printable ASCII characters, no space at either end (a counted repeat in
        -- the pattern would cost a millisecond to compile for every batch).
        AND strlen(s[2]) <= {EVENT_ID_MAX} AND regexp_full_match(s[2], '[!-~]|[!-~][ -~]*[!-~]')
        AND ts IS NOT NULL
        -- Bytes, not characters: a longer non-ASCII source is the reference decoder's to judge.
        AND strlen(s[4]) BETWEEN 1 AND {SOURCE_MAX}
        AND (v[5] IS NULL OR starts_with(payload_text, '{{')
             -- A float beyond 1.8e308 (RFC 8259 leaves the range to the reader; the reference decoder
             -- refuses it) is written back as it came. It has an exponent of three digits or a run of
             -- over 21 digits, which a number DuckDB writes back has only when it came so. Numbers
             -- can only be in the payload here (every other field is a string).
             AND NOT regexp_matches(payload_text, '[:,\[]-?(\d{{22}}|\d+(\.\d+)?[eE][+-]?\d{{3}})'))
        -- No Nats-Msg-Id header, or exactly the one a publisher writes for this event: <topic>:<event_id>,
        -- ingest's <topic>:{KEYED_MARK}<mac> (every HTTP event; its length first, so that other ids skip the
        -- rest), or the bare event_id when it names no other topic. Headers that are not UTF-8, and every
        -- id the reference decoder refuses, are the reference decoder's.
        AND (no_headers
             OR hdr = E'NATS/1.0\r\nNats-Msg-Id: ' || topic || ':' || s[2] || E'\r\n\r\n'
             OR CASE WHEN strlen(hdr) = {_BEFORE_ID + 2 + MAC_CHARS + 4} + strlen(topic)
                     THEN starts_with(hdr, E'NATS/1.0\r\nNats-Msg-Id: ' || topic || ':{KEYED_MARK}')
                          AND regexp_full_match(substr(hdr, {_BEFORE_ID + 3} + strlen(topic)),
                                                '{MAC_CHAR_CLASS}+\r\n\r\n')
                     ELSE false END
             OR (hdr = E'NATS/1.0\r\nNats-Msg-Id: ' || s[2] || E'\r\n\r\n'
                 AND (NOT contains(s[2], ':') OR starts_with(s[2], topic || ':')))
             OR (hdr IS NOT NULL AND NOT contains(hdr, 'Nats-Msg-Id'))),
        false
    ) AS fast
FROM typed
"""


class SqlDecoder:
    """Decodes a batch with one DuckDB query and the reference decoder for what the query leaves. Used
    from one thread at a time."""

    def __init__(self, *, memory_limit: str, threads: int, subjects: StoredSubjects = SINGLE) -> None:
        self._db = duckdb.connect(config={"memory_limit": memory_limit, "threads": threads})
        if not _PREFIX.fullmatch(subjects.prefix):
            raise ValueError(f"{subjects.prefix!r} is not a stored subject prefix")
        self._subjects = subjects
        # The stored subject's prefix is a constant of the query: no work per message.
        sql = _DECODE_SQL.replace("{prefix}", subjects.prefix).replace("{topic_at}", str(len(subjects.prefix) + 1))
        [self._statement] = duckdb.extract_statements(sql)

    def decode(self, msgs: Sequence[WireMsg], committed: SeqRanges, stream_epoch: int) -> DecodedBatch:
        decoded = self.query(msgs)
        new = first_deliveries(decoded["seq"], committed)
        fast = pc.and_(new, decoded["fast"])
        slow_positions = pc.filter(decoded["i"], pc.and_(new, pc.invert(fast))).to_pylist()
        slow = decode_with_reference(msgs, slow_positions, stream_epoch, self._subjects)
        candidates = pa.concat_tables(
            [decoded.filter(fast).select(CANDIDATE_SCHEMA.names).cast(CANDIDATE_SCHEMA), rows_table(slow.rows)]
        )
        first_seqs = pc.filter(decoded["seq"], new).to_pylist()
        return DecodedBatch(
            candidates, slow.dead_letters, slow.window_duplicates, first_seqs, len(msgs) - len(first_seqs)
        )

    def query(self, msgs: Sequence[WireMsg]) -> pa.Table:
        """What the query makes of each message (``i``, its position in the batch): the row, and
        ``fast`` when it is the query's to store."""
        con = self._db
        con.register("incoming", _incoming_table(msgs))
        try:
            with warnings.catch_warnings():
                # "Arrow output on a DB-API result makes an extra copy": a few columns of one batch,
                # against planning this query twice through the relation API.
                warnings.simplefilter("ignore", UserWarning)
                decoded = con.execute(self._statement).to_arrow_table()
        finally:
            con.unregister("incoming")
        assert decoded is not None
        return decoded.combine_chunks()

    def close(self) -> None:
        self._db.close()


def _incoming_table(msgs: Sequence[WireMsg]) -> pa.Table:
    # Several record batches, so that DuckDB decodes them on all its threads.
    one = pa.table(
        {
            "i": pa.array(range(len(msgs)), pa.uint32()),
            "subject": pa.array([m[0] for m in msgs], pa.binary()),
            "reply": pa.array([m[1] for m in msgs], pa.binary()),
            "hdr": pa.array([m[2] for m in msgs], pa.binary()),
            "body": pa.array([m[3] for m in msgs], pa.binary()),
        }
    )
    return pa.Table.from_batches(one.to_batches(max_chunksize=max(512, len(msgs) // 4)))
