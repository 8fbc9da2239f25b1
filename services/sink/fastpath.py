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
                  -- escaped surrogates, NaN and Infinity, which the two parsers treat differently (huge
                  -- exponents: see the payload below).
                  AND strlen(text) - strlen(replace(replace(text, '{', ''), '[', '')) <= 32
                  AND NOT contains(text, '\u') AND NOT contains(text, 'NaN') AND NOT contains(text, 'Infinity')
             THEN TRY_CAST(text AS JSON) END AS j
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
        ) AS s
    FROM fields
), typed AS (
    SELECT
        *,
        CASE WHEN regexp_full_match(s[3], '[1-9]\d{3}-\d\d-\d\dT([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?Z')
             THEN TRY_CAST(rtrim(s[3], 'Z') AS TIMESTAMP) END AS ts
    FROM strings
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
        -- As many keys as there are known keys present: no unknown key, none twice.
        AND key_count = (v[1] IS NOT NULL)::INT + (v[2] IS NOT NULL)::INT + (v[3] IS NOT NULL)::INT
                        + (v[4] IS NOT NULL)::INT + (v[5] IS NOT NULL)::INT
        AND strlen(topic) <= 128
        AND regexp_full_match(topic, '[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*')
        AND (v[1] IS NULL OR s[1] = topic)
        -- 1 to 256 printable ASCII characters, no space at either end (a counted repeat in the
        -- pattern would cost a millisecond to compile for every batch).
        AND strlen(s[2]) <= 256 AND regexp_full_match(s[2], '[!-~]|[!-~][ -~]*[!-~]')
        AND ts IS NOT NULL
        AND strlen(s[4]) BETWEEN 1 AND 128
        AND (v[5] IS NULL OR starts_with(CAST(v[5] AS VARCHAR), '{')
             -- A number with a three-digit exponent overflows in one parser and not the other. Numbers
             -- can only be in the payload here (every other field is a string), and the payload's
             -- text is shorter to search than the whole body; the parser writes such numbers back
             -- as they came.
             AND NOT regexp_matches(CAST(v[5] AS VARCHAR), '[:,\[]\s*-?\d+(\.\d+)?[eE][+-]?\d{3}'))
        -- No Nats-Msg-Id header, or exactly the one a publisher writes for this event.
        AND (hdr IS NULL
             OR hdr = E'NATS/1.0\r\nNats-Msg-Id: ' || topic || ':' || s[2] || E'\r\n\r\n'
             OR hdr = E'NATS/1.0\r\nNats-Msg-Id: ' || s[2] || E'\r\n\r\n'
             OR NOT contains(hdr, 'Nats-Msg-Id')),
        false
    ) AS fast
FROM typed
"""
