"""The sink's fast path: a whole batch of raw messages decoded by one DuckDB query.

Validating each message in Python (pydantic, about 10 µs) was most of the sink's time. DuckDB parses
a batch's JSON in vectorised C++, off the interpreter lock. The query accepts a strict subset of
what the reference decoder (``decode.py``) accepts: canonical events as ingest publishes them and as
most clients write them. Everything it does not accept (plain lines, missing fields, unusual
timestamps, non-ASCII ids, deep nesting, anything odd) goes to the reference decoder, which decides
and explains. ``tests/test_fastpath.py`` checks that the two agree wherever the fast path accepts.
"""

from __future__ import annotations

# incoming(i, subject BLOB, reply BLOB, hdr BLOB, body BLOB) is an Arrow table registered by the store.
# One row out per message, each computed from its own row only, so DuckDB decodes the Arrow record
# batches in parallel. Which messages are first deliveries is worked out afterwards (store.py).
DECODE_SQL = r"""
WITH raw AS (
    SELECT
        i,
        decode(subject) AS subject,
        decode(reply) AS reply,
        TRY(decode(hdr)) AS hdr,
        TRY(decode(body)) AS text
    FROM incoming
), located AS (
    SELECT
        *,
        -- $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>..., or with <domain>.<hash> after ACK
        CAST(CASE WHEN len(string_split(reply, '.')) = 9 THEN split_part(reply, '.', 6)
                  ELSE split_part(reply, '.', 8) END AS UBIGINT) AS seq,
        starts_with(subject, 'logs.') AS is_log,
        substr(subject, 6) AS topic
    FROM raw
), parsed AS (
    SELECT
        *,
        CASE WHEN is_log AND left(ltrim(text), 1) = '{'
                  -- Guards that keep the subset strict, leaving to the reference decoder: deep nesting,
                  -- escaped surrogates, NaN, Infinity and huge exponents, which the two parsers treat
                  -- differently.
                  AND strlen(text) - strlen(replace(replace(text, '{', ''), '[', '')) <= 32
                  AND NOT contains(text, '\u') AND NOT contains(text, 'NaN') AND NOT contains(text, 'Infinity')
                  AND NOT regexp_matches(text, '[:,\[]\s*-?\d+(\.\d+)?[eE][+-]?\d{3}')
             THEN TRY_CAST(text AS JSON) END AS j
    FROM located
), fields AS (
    SELECT
        *,
        json_keys(j) AS k,
        json_extract(j, ['$.topic', '$.event_id', '$.timestamp', '$.source', '$.payload']) AS v,
        json_extract_string(j, ['$.topic', '$.event_id', '$.timestamp', '$.source']) AS s,
        CASE WHEN regexp_full_match(s[3], '[1-9]\d{3}-\d\d-\d\dT([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?Z')
             THEN TRY_CAST(rtrim(s[3], 'Z') AS TIMESTAMP) END AS ts
    FROM parsed
)
SELECT
    i,
    seq,
    is_log,
    topic,
    s[2] AS event_id,
    ts AS "timestamp",
    s[4] AS source,
    coalesce(CAST(v[5] AS VARCHAR), '{}') AS payload,
    coalesce(
        j IS NOT NULL
        AND len(k) = len(list_distinct(k))
        AND list_has_all(['topic', 'event_id', 'timestamp', 'source', 'payload'], k)
        AND strlen(topic) <= 128
        AND regexp_full_match(topic, '[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*')
        AND (v[1] IS NULL OR (left(CAST(v[1] AS VARCHAR), 1) = '"' AND s[1] = topic))
        AND left(CAST(v[2] AS VARCHAR), 1) = '"'
        AND regexp_full_match(s[2], '[!-~]([ -~]{0,254}[!-~])?')
        AND left(CAST(v[3] AS VARCHAR), 1) = '"'
        AND ts IS NOT NULL
        AND left(CAST(v[4] AS VARCHAR), 1) = '"'
        AND strlen(s[4]) BETWEEN 1 AND 128
        AND (v[5] IS NULL OR left(CAST(v[5] AS VARCHAR), 1) = '{')
        -- No Nats-Msg-Id header, or exactly one, written the usual way, naming this event.
        AND (hdr IS NULL OR NOT contains(hdr, 'Nats-Msg-Id')
             OR (strlen(hdr) - strlen(replace(hdr, 'Nats-Msg-Id', '')) = 11
                 AND (contains(hdr, E'\r\nNats-Msg-Id: ' || topic || ':' || s[2] || E'\r\n')
                      OR contains(hdr, E'\r\nNats-Msg-Id: ' || s[2] || E'\r\n')))),
        false
    ) AS fast
FROM fields
"""
