"""Reads of the sink's store, from any thread: each thread has its own cursor on the same database,
and DuckDB's MVCC means a read never waits for the writer."""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

import duckdb
import orjson

EVENT_COLUMNS = 'id, topic, event_id, "timestamp", source, payload, seq, stored_at'
# Dead letters keep the whole body; listings show its start.
BODY_PREVIEW = 4096


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

    def list_events(self, topic: str | None, after: int, limit: int, newest_first: bool) -> list[dict[str, Any]]:
        order, compare = ("DESC", "<") if newest_first else ("ASC", ">")
        where = [f"id {compare} ?"]
        params: list[Any] = [after]
        if topic is not None:
            where.append("topic = ?")
            params.append(topic)
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?"
        return _event_dicts(self._reader().execute(sql, [*params, limit]))

    def get_event(self, topic: str, event_id: str) -> dict[str, Any] | None:
        found = _event_dicts(
            self._reader().execute(
                f"SELECT {EVENT_COLUMNS} FROM events "
                "WHERE key = md5_number(? || ':' || ?) AND topic = ? AND event_id = ?",
                [topic, event_id, topic, event_id],
            )
        )
        return found[0] if found else None

    def list_dead_letters(self, after: int, limit: int, newest_first: bool) -> list[dict[str, Any]]:
        order, compare = ("DESC", "<") if newest_first else ("ASC", ">")
        rows = (
            self._reader()
            .execute(
                "SELECT id, seq, subject, reason, headers, body, stored_at FROM dead_letters "
                f"WHERE id {compare} ? ORDER BY id {order} LIMIT ?",
                [after, limit],
            )
            .fetchall()
        )
        return [
            {
                "id": id_,
                "seq": seq,
                "subject": subject,
                "reason": reason,
                "headers": orjson.loads(headers) if headers else None,
                "body": bytes(body[:BODY_PREVIEW]).decode("utf-8", errors="replace"),
                "body_bytes": len(body),
                "body_truncated": len(body) > BODY_PREVIEW,
                "stored_at": _iso(stored_at),
            }
            for id_, seq, subject, reason, headers, body, stored_at in rows
        ]


def _event_dicts(cursor: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    return [
        {
            "id": id_,
            "topic": topic,
            "event_id": event_id,
            "timestamp": _iso(ts),
            "source": source,
            "payload": orjson.loads(payload),
            "seq": seq,
            "stored_at": _iso(stored),
        }
        for id_, topic, event_id, ts, source, payload, seq, stored in cursor.fetchall()
    ]


def _iso(naive_utc: datetime) -> str:
    return naive_utc.isoformat() + "Z"
