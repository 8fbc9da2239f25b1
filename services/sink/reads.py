"""Reads of the sink's store, from any thread: each thread has its own cursor on the same database,
and DuckDB's MVCC means a read never waits for the writer.

Answers are finished JSON (query_contract.py says their shape). A stored payload, and a dead
letter's stored headers, are spliced in as the text that was stored: parsing and serialising them
again would turn 18446744073709551616 into 1.8446744073709552e+19.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import duckdb
import orjson

from logmesh.common.query_answers import page, parts
from logmesh.common.query_contract import BODY_PREVIEW, PAGE_BYTES, DeadLettersQuery, EventQuery, EventsQuery

_EVENT_COLUMNS = 'id, topic, event_id, "timestamp", source, payload, seq, stored_at'
_LETTER_COLUMNS = "id, seq, subject, reason, headers, body, stored_at"
# What a row adds to a page, near enough to bound it: what is stored, not its JSON escaping.
_EVENT_BYTES = "strlen(payload) + strlen(event_id) + strlen(source) + strlen(topic) + 100"
_LETTER_BYTES = f"least(octet_length(body), {BODY_PREVIEW}) + coalesce(strlen(headers), 0) + strlen(reason) + 100"


def _page_sql(columns: str, table: str, where: str, newest_first: bool, row_bytes: str) -> str:
    """At most ``limit`` rows after the cursor, less those past PAGE_BYTES (never the first), with
    how many rows the page had before it was cut."""
    order = "DESC" if newest_first else "ASC"
    return (
        f"SELECT {columns}, fetched FROM ("
        f" SELECT *, count(*) OVER () AS fetched,"
        f"  sum({row_bytes}) OVER (ORDER BY id {order} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before"
        f" FROM (SELECT {columns} FROM {table} WHERE {where} ORDER BY id {order} LIMIT ?)"
        f") WHERE coalesce(before, 0) < {PAGE_BYTES} ORDER BY id {order}"
    )


def _after(after: int, newest_first: bool) -> tuple[str, list[Any]]:
    if not after:
        return "true", []
    return ("id < ?" if newest_first else "id > ?"), [after]


def _part(rows: list[Any], limit: int, item: Any, seq_at: int) -> bytes:
    """A partition's part of a merged page. ``rows`` were fetched with one row more than ``limit``:
    ``more`` is exact, whether the page was cut by its length or by PAGE_BYTES."""
    more = len(rows) > limit or (bool(rows) and rows[-1][-1] > len(rows))
    kept = rows[:limit]
    return parts([(int(row[0]), int(row[seq_at]), item(*row[:-1])) for row in kept], more)


def _next_cursor(rows: list[Any], limit: int) -> int | None:
    """The last id, unless this page holds the last rows: it is full, or was cut by size."""
    if rows and (len(rows) == limit or rows[-1][-1] > len(rows)):
        return int(rows[-1][0])
    return None


class Reader:
    def __init__(self, db: duckdb.DuckDBPyConnection) -> None:
        self._db = db
        self._readers = threading.local()

    def _reader(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._readers, "cursor", None)
        if cursor is None:
            cursor = self._db.cursor()
            self._readers.cursor = cursor
        return cursor

    def list_events(self, q: EventsQuery) -> bytes:
        where, params = _after(q.after, q.newest_first)
        if q.topic is not None:
            where += " AND topic = ?"
            params.append(q.topic)
        sql = _page_sql(_EVENT_COLUMNS, "events", where, q.newest_first, _EVENT_BYTES)
        rows = self._reader().execute(sql, [*params, q.limit + q.parts]).fetchall()
        if q.parts:
            return _part(rows, q.limit, _event_json, 6)
        return page("events", [_event_json(*row[:-1]) for row in rows], _next_cursor(rows, q.limit))

    def get_event(self, q: EventQuery) -> bytes | None:
        found = (
            self._reader()
            .execute(
                f"SELECT {_EVENT_COLUMNS} FROM events "
                "WHERE key = md5_number(? || ':' || ?) AND topic = ? AND event_id = ?",
                [q.topic, q.event_id, q.topic, q.event_id],
            )
            .fetchall()
        )
        return _event_json(*found[0]) if found else None

    def list_dead_letters(self, q: DeadLettersQuery) -> bytes:
        where, params = _after(q.after, q.newest_first)
        sql = _page_sql(_LETTER_COLUMNS, "dead_letters", where, q.newest_first, _LETTER_BYTES)
        rows = self._reader().execute(sql, [*params, q.limit + q.parts]).fetchall()
        if q.parts:
            return _part(rows, q.limit, _letter_json, 1)
        return page("dead_letters", [_letter_json(*row[:-1]) for row in rows], _next_cursor(rows, q.limit))


def _event_json(
    id_: int, topic: str, event_id: str, ts: datetime, source: str, payload: str, seq: int, stored: datetime
) -> bytes:
    head = orjson.dumps({"id": id_, "topic": topic, "event_id": event_id, "timestamp": _iso(ts), "source": source})
    return b'%s,"payload":%s,"seq":%d,"stored_at":"%s"}' % (head[:-1], payload.encode(), seq, _iso(stored).encode())


def _letter_json(
    id_: int, seq: int, subject: str, reason: str, headers: str | None, body: bytes, stored: datetime
) -> bytes:
    head = orjson.dumps(
        {
            "id": id_,
            "seq": seq,
            "subject": subject,
            "reason": reason,
            "body": bytes(body[:BODY_PREVIEW]).decode("utf-8", errors="replace"),
            "body_bytes": len(body),
            "body_truncated": len(body) > BODY_PREVIEW,
            "stored_at": _iso(stored),
        }
    )
    return b'%s,"headers":%s}' % (head[:-1], headers.encode() if headers else b"null")


def _iso(naive_utc: datetime) -> str:
    return naive_utc.isoformat() + "Z"
