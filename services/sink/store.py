"""The DuckDB store: one writer connection, read cursors for queries.

Each batch is one transaction: events, dead letters, counters and the committed sequence ranges move
together, so a crash leaves either the whole batch or none of it.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from services.sink.counters import Counters, TopicCounts
from services.sink.decode import DecodedBatch, Row
from services.sink.seqranges import SeqRanges

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id UBIGINT NOT NULL,
    topic VARCHAR NOT NULL,
    event_id VARCHAR NOT NULL,
    "timestamp" TIMESTAMP NOT NULL,
    source VARCHAR NOT NULL,
    payload VARCHAR NOT NULL,
    seq UBIGINT NOT NULL,
    stored_at TIMESTAMP NOT NULL,
    PRIMARY KEY (topic, event_id)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id UBIGINT NOT NULL,
    seq UBIGINT NOT NULL,
    subject VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    headers VARCHAR,
    body BLOB NOT NULL,
    stored_at TIMESTAMP NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    singleton BOOLEAN PRIMARY KEY DEFAULT true,
    received UBIGINT NOT NULL,
    unique_processed UBIGINT NOT NULL,
    window_duplicates UBIGINT NOT NULL,
    store_duplicates UBIGINT NOT NULL,
    invalid UBIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS topics (
    topic VARCHAR PRIMARY KEY,
    unique_events UBIGINT NOT NULL,
    window_duplicates UBIGINT NOT NULL,
    store_duplicates UBIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS committed_seqs (lo UBIGINT NOT NULL, hi UBIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL);
INSERT INTO counters VALUES (true, 0, 0, 0, 0, 0) ON CONFLICT DO NOTHING;
"""

EVENT_COLUMNS = 'id, topic, event_id, "timestamp", source, payload, seq, stored_at'
# Times are stored as TIMESTAMP holding UTC: TIMESTAMPTZ would need DuckDB's ICU extension.
_UTC = pa.timestamp("us", tz="UTC")
_TS = pa.timestamp("us")
# Dead letters keep the whole body; listings show its start.
BODY_PREVIEW = 4096


@dataclass(frozen=True)
class StoreState:
    counters: Counters
    committed: SeqRanges
    stream_epoch: str | None


@dataclass(frozen=True)
class CommitResult:
    counters: Counters
    committed: SeqRanges
    inserted: int
    conflict_fallback: bool


class Store:
    def __init__(self, path: Path, *, memory_limit: str, checkpoint_threshold: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = duckdb.connect(
            str(path),
            config={
                "memory_limit": memory_limit,
                "checkpoint_threshold": checkpoint_threshold,
            },
        )
        self._readers = threading.local()
        self._next_id = 0
        self._next_dead_id = 0

    # ---- lifecycle -------------------------------------------------------------------------

    def load(self) -> StoreState:
        con = self._db
        con.execute(SCHEMA)
        row = con.execute(
            "SELECT received, unique_processed, window_duplicates, store_duplicates, invalid FROM counters"
        ).fetchone()
        assert row is not None
        topics = {
            t: TopicCounts(u, w, s)
            for t, u, w, s in con.execute(
                "SELECT topic, unique_events, window_duplicates, store_duplicates FROM topics"
            ).fetchall()
        }
        received, unique, window, store_dups, invalid = row
        counters = Counters(received, unique, window, store_dups, invalid, topics)
        ranges = SeqRanges(con.execute("SELECT lo, hi FROM committed_seqs").fetchall())
        epoch_row = con.execute("SELECT value FROM meta WHERE key = 'stream_epoch'").fetchone()
        self._next_id = _scalar(con, "SELECT coalesce(max(id), 0) + 1 FROM events")
        self._next_dead_id = _scalar(con, "SELECT coalesce(max(id), 0) + 1 FROM dead_letters")
        return StoreState(counters, ranges, epoch_row[0] if epoch_row else None)

    def set_stream_epoch(self, epoch: str) -> None:
        """A new stream starts its sequences again at 1: forget the sequences of the old one."""
        con = self._db
        con.execute("BEGIN")
        try:
            con.execute("DELETE FROM committed_seqs")
            con.execute("INSERT OR REPLACE INTO meta VALUES ('stream_epoch', ?)", [epoch])
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise

    def probe(self) -> None:
        """A small committed write: raises when the store cannot take writes."""
        con = self._db
        con.execute("BEGIN")
        try:
            con.execute("INSERT OR REPLACE INTO meta VALUES ('probed_at', ?)", [datetime.now(UTC).isoformat()])
            con.execute("COMMIT")
        except BaseException:
            _rollback(con)
            raise

    def close(self) -> None:
        self._db.close()

    # ---- the one writer ----------------------------------------------------------------------

    def commit(self, batch: DecodedBatch, counters: Counters, committed: SeqRanges) -> CommitResult:
        """Writes a batch in one transaction. Called from one thread only."""
        rows = _first_of_each_key(batch.rows)
        valid = Counter(r.topic for r in batch.rows)
        now = datetime.now(UTC).replace(tzinfo=None)
        new_committed = committed.union(batch.new_seqs)
        try:
            inserted, updated = self._write(batch, rows, valid, counters, new_committed, now, fallback=False)
            fallback = False
        except duckdb.ConstraintException:
            # Some key is already stored (re-sent after the window): rare, so only then pay for the
            # ON CONFLICT plan, which scans the whole table.
            inserted, updated = self._write(batch, rows, valid, counters, new_committed, now, fallback=True)
            fallback = True
        return CommitResult(updated, new_committed, inserted, fallback)

    def _write(
        self,
        batch: DecodedBatch,
        rows: list[Row],
        valid: Counter[str],
        counters: Counters,
        committed: SeqRanges,
        now: datetime,
        *,
        fallback: bool,
    ) -> tuple[int, Counters]:
        con = self._db
        con.execute("BEGIN")
        try:
            inserted = self._insert_rows(rows, now, fallback=fallback)
            if batch.dead_letters:
                self._insert_dead_letters(batch, now)
            updated, changed = counters.after(
                inserted=inserted, valid=valid, window=batch.window_duplicates, invalid=len(batch.dead_letters)
            )
            self._save_counters(updated, changed)
            if batch.new_seqs:
                con.execute("DELETE FROM committed_seqs")
                con.executemany("INSERT INTO committed_seqs VALUES (?, ?)", committed.ranges())
            con.execute("COMMIT")
        except BaseException:
            # After an error DuckDB's COMMIT would silently roll back; make the failure explicit.
            _rollback(con)
            raise
        finally:
            with contextlib.suppress(duckdb.Error):
                con.unregister("incoming")
        self._next_id += len(rows)
        self._next_dead_id += len(batch.dead_letters)
        return sum(inserted.values()), updated

    def _insert_rows(self, rows: list[Row], now: datetime, *, fallback: bool) -> Counter[str]:
        if not rows:
            return Counter()
        first = self._next_id
        incoming = pa.table(
            {
                "id": pa.array(range(first, first + len(rows)), pa.uint64()),
                "topic": [r.topic for r in rows],
                "event_id": [r.event_id for r in rows],
                "timestamp": pa.array([r.timestamp for r in rows], _UTC).cast(_TS),
                "source": [r.source for r in rows],
                "payload": [r.payload for r in rows],
                "seq": pa.array([r.seq for r in rows], pa.uint64()),
                "stored_at": pa.array([now] * len(rows), _TS),
            }
        )
        con = self._db
        # Unregistered by _write once the transaction is over: inside an aborted one it would fail too.
        con.register("incoming", incoming)
        if fallback:
            stored = con.execute(
                f"INSERT INTO events SELECT {EVENT_COLUMNS} FROM incoming ON CONFLICT DO NOTHING RETURNING topic"
            ).fetchall()
            return Counter(t for (t,) in stored)
        con.execute(f"INSERT INTO events SELECT {EVENT_COLUMNS} FROM incoming")
        return Counter(r.topic for r in rows)

    def _insert_dead_letters(self, batch: DecodedBatch, now: datetime) -> None:
        self._db.executemany(
            "INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    self._next_dead_id + i,
                    d.seq,
                    d.subject,
                    d.reason,
                    orjson.dumps(d.headers).decode() if d.headers else None,
                    d.body,
                    now,
                )
                for i, d in enumerate(batch.dead_letters)
            ],
        )

    def _save_counters(self, c: Counters, changed: set[str]) -> None:
        con = self._db
        con.execute(
            "UPDATE counters SET received = ?, unique_processed = ?, window_duplicates = ?, "
            "store_duplicates = ?, invalid = ?",
            [c.received, c.unique_processed, c.window_duplicates, c.store_duplicates, c.invalid],
        )
        if changed:
            con.executemany(
                "INSERT OR REPLACE INTO topics VALUES (?, ?, ?, ?)",
                [
                    (t, c.topics[t].unique, c.topics[t].window_duplicates, c.topics[t].store_duplicates)
                    for t in sorted(changed)
                ],
            )

    # ---- reads, from any thread; they never wait for the writer --------------------------------

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
                f"SELECT {EVENT_COLUMNS} FROM events WHERE topic = ? AND event_id = ?", [topic, event_id]
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

    def file_size(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


def _first_of_each_key(rows: list[Row]) -> list[Row]:
    """Duplicates inside one batch: the first copy is the one stored, the others count as store
    duplicates."""
    seen: dict[tuple[str, str], Row] = {}
    for r in rows:
        seen.setdefault((r.topic, r.event_id), r)
    return list(seen.values()) if len(seen) != len(rows) else rows


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


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    # No transaction left to roll back, or the connection is unusable: then the caller reopens.
    with contextlib.suppress(duckdb.Error):
        con.execute("ROLLBACK")


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = con.execute(sql).fetchone()
    return int(row[0]) if row else 0
