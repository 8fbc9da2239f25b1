"""The DuckDB store: one writer connection, read cursors for queries.

Each batch is one transaction: events, dead letters, counters and the committed sequence ranges move
together, so a crash leaves either the whole batch or none of it.

The primary key is the 128-bit MD5 of ``<topic>:<event_id>``, not the two strings: DuckDB keeps the
key's index in memory, and at 10 million random ids the two-string index outgrew a 512 MB memory
limit while the 16-byte key held insert speed with the sink under 1 GiB (docs/performance.md). A
crafted MD5 collision with a stored event is caught and dead-lettered, never silently dropped.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import orjson
import pyarrow as pa

from logmesh.common.failpoints import Failpoints
from logmesh.sink.arrow import counts_by_topic, ranges_table, topics_table, with_ids
from logmesh.sink.counters import Counters, TopicCounts
from logmesh.sink.decoding import DeadLetter, DecodedBatch
from logmesh.sink.reads import Reader
from logmesh.sink.schema import KEY, SCHEMA, SCHEMA_VERSION
from logmesh.sink.seqranges import SeqRanges


class KeyCollision(Exception):
    pass


@dataclass(frozen=True)
class StoreState:
    counters: Counters
    committed: SeqRanges
    stream_epoch: str | None
    # The random id a partition's file gets when it first reads the stream: its consumer is named after it.
    file_id: str | None = None


@dataclass(frozen=True)
class CommitResult:
    counters: Counters
    committed: SeqRanges
    inserted: int
    redelivered: int
    # Positions in the batch of the messages kept as dead letters, with the reason.
    dead: dict[int, str]
    conflict_fallback: bool


class Store:
    def __init__(
        self,
        path: Path,
        *,
        memory_limit: str,
        checkpoint_threshold: str,
        threads: int = 1,
        failpoints: Failpoints | None = None,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = duckdb.connect(
            str(path),
            config={"memory_limit": memory_limit, "checkpoint_threshold": checkpoint_threshold, "threads": threads},
        )
        self.reader = Reader(self._db)
        self._statements: dict[str, duckdb.Statement] = {}
        self._failpoints = failpoints or Failpoints("")
        self._next_id = 0
        self._next_dead_id = 0

    # ---- lifecycle -------------------------------------------------------------------------

    def _run(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Executes and reads the whole result: DuckDB refuses other work on a connection while a
        result is unfinished, even an INSERT's count."""
        return self._db.execute(self._parsed(sql), params).fetchall()

    def _parsed(self, sql: str) -> duckdb.Statement:
        """Statements run for every batch are parsed once (per store: they go with its connection)."""
        statement = self._statements.get(sql)
        if statement is None:
            [statement] = duckdb.extract_statements(sql)
            self._statements[sql] = statement
        return statement

    def _run_many(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._db.executemany(sql, rows).fetchall()

    def _insert_from(self, table: str, rows: pa.Table, *, replace: bool = False) -> None:
        self._db.register("rows_in", rows)
        try:
            self._run(f"INSERT {'OR REPLACE ' if replace else ''}INTO {table} SELECT * FROM rows_in")
        finally:
            self._db.unregister("rows_in")

    def load(self) -> StoreState:
        run = self._run
        self._db.execute(SCHEMA).fetchall()
        version = run("SELECT value FROM meta WHERE key = 'schema_version'")
        if not version:
            run("INSERT INTO meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
        elif version[0][0] != SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} has schema version {version[0][0]}; this sink needs {SCHEMA_VERSION}")
        [(received, unique, window, store_dups, invalid)] = run(
            "SELECT received, unique_processed, window_duplicates, store_duplicates, invalid FROM counters"
        )
        topics = {
            t: TopicCounts(u, w, s)
            for t, u, w, s in run("SELECT topic, unique_events, window_duplicates, store_duplicates FROM topics")
        }
        counters = Counters(received, unique, window, store_dups, invalid, topics)
        ranges = SeqRanges(run("SELECT lo, hi FROM committed_seqs"))
        epoch = run("SELECT value FROM meta WHERE key = 'stream_epoch'")
        file_id = run("SELECT value FROM meta WHERE key = 'file_id'")
        self._next_id = run("SELECT coalesce(max(id), 0) + 1 FROM events")[0][0]
        self._next_dead_id = run("SELECT coalesce(max(id), 0) + 1 FROM dead_letters")[0][0]
        return StoreState(counters, ranges, epoch[0][0] if epoch else None, file_id[0][0] if file_id else None)

    def set_stream_epoch(self, epoch: str) -> None:
        """A new stream starts its sequences again at 1: forget the sequences of the old one."""
        with self._transaction():
            self._run("DELETE FROM committed_seqs")
            self._run("INSERT OR REPLACE INTO meta VALUES ('stream_epoch', ?)", [epoch])

    def set_file_id(self, file_id: str) -> None:
        with self._transaction():
            self._run("INSERT OR REPLACE INTO meta VALUES ('file_id', ?)", [file_id])

    def probe(self) -> None:
        """A small committed write: raises when the store cannot take writes."""
        with self._transaction():
            self._run("INSERT OR REPLACE INTO meta VALUES ('probed_at', ?)", [datetime.now(UTC).isoformat()])

    def close(self) -> None:
        self._statements.clear()
        self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._run("BEGIN")
        try:
            yield
            self._run("COMMIT")
        except BaseException:
            # After an error DuckDB's COMMIT would silently roll back; make the failure explicit.
            with contextlib.suppress(duckdb.Error):
                self._run("ROLLBACK")
            raise

    # ---- the one writer ----------------------------------------------------------------------

    def commit(self, decoded: DecodedBatch, counters: Counters, committed: SeqRanges) -> CommitResult:
        """Writes a decoded batch in one transaction. Called from one thread only."""
        self._failpoints.hit("sink.slow_commit")
        candidates = with_ids(decoded.candidates, self._next_id)
        new_committed = committed.union(decoded.first_seqs)
        now = datetime.now(UTC).replace(tzinfo=None)
        try:
            inserted, updated = self._write(candidates, decoded, counters, new_committed, now, fallback=False)
            fallback = False
        except duckdb.ConstraintException:
            # Some key is already stored (re-sent after the window): rare, so only then pay for the
            # ON CONFLICT plan, which scans the whole table.
            inserted, updated = self._write(candidates, decoded, counters, new_committed, now, fallback=True)
            fallback = True
        dead = {i: d.reason for i, d in decoded.dead_letters.items()}
        return CommitResult(updated, new_committed, inserted, decoded.redelivered, dead, fallback)

    def _write(
        self,
        candidates: pa.Table,
        decoded: DecodedBatch,
        counters: Counters,
        committed: SeqRanges,
        now: datetime,
        *,
        fallback: bool,
    ) -> tuple[int, Counters]:
        con = self._db
        con.register("candidates", candidates)
        try:
            with self._transaction():
                if fallback:
                    self._check_collisions()
                valid, distinct = counts_by_topic(candidates)
                inserted = self._insert_events(now, distinct, candidates.num_rows, fallback)
                if decoded.dead_letters:
                    self._insert_dead_letters(decoded.dead_letters.values(), now)
                updated, changed = counters.after(
                    inserted=inserted,
                    valid=valid,
                    window=decoded.window_duplicates,
                    invalid=len(decoded.dead_letters),
                )
                self._save_counters(updated, changed)
                self._run("DELETE FROM committed_seqs")
                self._insert_from("committed_seqs", ranges_table(committed))
                self._failpoints.hit("sink.mid_transaction")
        finally:
            with contextlib.suppress(duckdb.Error):
                con.unregister("candidates")
        # Ids were numbered over every candidate; those that met a stored key leave gaps, never reuse.
        self._next_id += candidates.num_rows
        self._next_dead_id += len(decoded.dead_letters)
        return sum(inserted.values()), updated

    def _insert_events(self, now: datetime, distinct: Counter[str], rows: int, fallback: bool) -> Counter[str]:
        """Inserts the first copy of each key in the batch; returns how many were new, per topic: without
        a stored key among them (no fallback), every ``distinct`` candidate."""
        select = f'SELECT {KEY}, id, topic, event_id, "timestamp", source, payload, seq, ? FROM candidates'
        if sum(distinct.values()) < rows:
            # A key more than once in the batch (sent again past the window, or without Nats-Msg-Id).
            select += " QUALIFY row_number() OVER (PARTITION BY topic, event_id ORDER BY seq) = 1"
        params = [now]
        if fallback:
            stored = self._run(
                f"INSERT INTO events SELECT * FROM ({select}) ON CONFLICT DO NOTHING RETURNING topic", params
            )
            return Counter(t for (t,) in stored)
        self._run(f"INSERT INTO events {select}", params)
        return distinct

    def _check_collisions(self) -> None:
        """A different event with the key of a stored one (a crafted MD5 collision) must not pass for a
        duplicate: refusing the batch makes the sink isolate that message and dead-letter it."""
        clash = self._run(
            "SELECT c.seq, c.topic, c.event_id, e.topic, e.event_id FROM candidates c JOIN events e "
            "ON e.key = md5_number(c.topic || ':' || c.event_id) "
            "WHERE e.topic <> c.topic OR e.event_id <> c.event_id LIMIT 1"
        )
        if clash:
            seq, topic, event_id, other_topic, other_id = clash[0]
            raise KeyCollision(f"{topic}:{event_id} (seq {seq}) has the key of the stored {other_topic}:{other_id}")

    def _insert_dead_letters(self, dead_letters: Iterable[DeadLetter], now: datetime) -> None:
        self._run_many(
            "INSERT INTO dead_letters VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    self._next_dead_id + n,
                    d.seq,
                    d.subject,
                    d.reason,
                    orjson.dumps(d.headers).decode() if d.headers else None,
                    d.body,
                    now,
                )
                for n, d in enumerate(dead_letters)
            ],
        )

    def _save_counters(self, c: Counters, changed: set[str]) -> None:
        self._run(
            "UPDATE counters SET received = ?, unique_processed = ?, window_duplicates = ?, "
            "store_duplicates = ?, invalid = ?",
            [c.received, c.unique_processed, c.window_duplicates, c.store_duplicates, c.invalid],
        )
        if changed:
            # One statement from an Arrow table: executemany costs milliseconds per row here.
            self._insert_from("topics", topics_table(c, changed), replace=True)

    def file_size(self) -> int:
        """Bytes the store uses on disk: the database file and its write-ahead log, which holds every
        commit since the last checkpoint (up to checkpoint_threshold)."""
        wal = self.path.with_name(self.path.name + ".wal")
        return sum(p.stat().st_size for p in (self.path, wal) if p.exists())
