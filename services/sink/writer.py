"""The one writer: every batch is decoded and written, in order, on one thread; reads use their own
cursors."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from logmesh.common.failpoints import Failpoints
from logmesh.common.wire import WireMsg
from logmesh.sink.counters import Counters
from logmesh.sink.decoding import SINGLE, BatchDecoder, DecodedBatch, ReferenceDecoder, StoredSubjects, refuse
from logmesh.sink.seqranges import SeqRanges
from logmesh.sink.settings import SinkSettings
from logmesh.sink.sql_decoder import SqlDecoder
from logmesh.sink.store import CommitResult, Store

log = logging.getLogger("logmesh.sink")
T = TypeVar("T")


class Writer:
    def __init__(
        self,
        settings: SinkSettings,
        failpoints: Failpoints,
        path: Path | None = None,
        subjects: StoredSubjects = SINGLE,
    ) -> None:
        self._settings = settings
        self._path = path or settings.db_path
        self._subjects = subjects
        self.failpoints = failpoints
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="duckdb-writer")
        self._store: Store | None = None
        self._decoder: BatchDecoder | None = None
        self._opened = False  # once: reopening after a failure says nothing new
        self.counters = Counters()
        self.committed = SeqRanges()
        self.stream_epoch: str | None = None
        self.file_id: str | None = None
        # Seconds since the epoch of the stream's creation, part of the ids of plain lines without one.
        self.stream_epoch_id = 0

    @property
    def store(self) -> Store:
        if self._store is None:
            raise RuntimeError("store is not open")
        return self._store

    async def _run(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn)

    async def open(self) -> None:
        """Opens the database (DuckDB replays its WAL after a crash) and takes the committed state."""

        def _open() -> Store:
            s = self._settings
            store = Store(
                self._path,
                memory_limit=s.memory_limit,
                checkpoint_threshold=s.checkpoint_threshold,
                threads=s.db_threads,
                failpoints=self.failpoints,
            )
            try:
                state = store.load()
            except BaseException:
                store.close()
                raise
            self.counters, self.committed, self.stream_epoch = state.counters, state.committed, state.stream_epoch
            self.file_id = state.file_id
            # A fresh decoder with each store: after a failure, neither keeps a connection in a bad state.
            self._decoder = (
                SqlDecoder(memory_limit=s.memory_limit, threads=s.db_threads, subjects=self._subjects)
                if s.decoder == "sql"
                else ReferenceDecoder(self._subjects)
            )
            return store

        self._store = await self._run(_open)
        if not self._opened:
            self._opened = True
            log.info("batches are decoded by the %s decoder", self._settings.decoder)

    async def reopen(self) -> None:
        """After a failed write DuckDB may refuse every later one; a fresh connection starts from what
        is on disk."""
        await self.close_store()
        await self.open()

    async def use_stream(self, created: datetime) -> None:
        epoch = created.isoformat()
        self.stream_epoch_id = int(created.timestamp())
        if epoch != self.stream_epoch:
            if self.stream_epoch is not None:
                log.warning("stream was recreated (%s -> %s): sequence numbers start again", self.stream_epoch, epoch)
            await self._run(lambda: self.store.set_stream_epoch(epoch))
            self.committed = SeqRanges()
            self.stream_epoch = epoch

    async def set_file_id(self, file_id: str) -> None:
        await self._run(lambda: self.store.set_file_id(file_id))
        self.file_id = file_id

    async def commit(self, msgs: list[WireMsg]) -> CommitResult:
        """Decodes and stores a batch."""
        epoch = self.stream_epoch_id
        return await self._write(lambda committed: self._decoding().decode(msgs, committed, epoch))

    async def refuse(self, msgs: list[WireMsg], reason: str) -> CommitResult:
        """Keeps every new message of a batch as a dead letter with ``reason``, undecoded."""
        return await self._write(lambda committed: refuse(msgs, committed, reason, self._subjects))

    async def _write(self, decode: Callable[[SeqRanges], DecodedBatch]) -> CommitResult:
        counters, committed = self.counters, self.committed
        result = await self._run(lambda: self.store.commit(decode(committed), counters, committed))
        self.counters, self.committed = result.counters, result.committed
        return result

    def _decoding(self) -> BatchDecoder:
        if self._decoder is None:
            raise RuntimeError("store is not open")
        return self._decoder

    async def probe(self) -> bool:
        """True when the store takes a write: tells a bad batch from a broken disk."""
        try:
            await self._run(lambda: self.store.probe())
            return True
        except Exception as exc:
            log.debug("store probe failed: %s", exc)
            return False

    async def close_store(self) -> None:
        store, self._store = self._store, None
        decoder, self._decoder = self._decoder, None
        for what, close in (("store", store), ("decoder", decoder)):
            if close is not None:
                try:
                    await self._run(close.close)
                except Exception as exc:
                    log.warning("closing the %s failed: %s", what, exc)

    async def close(self) -> None:
        await self.close_store()
        self._thread.shutdown(wait=True)
