"""One partition's pipeline: its consumer, its store file, its writer and crash journal, its queries.

It pulls a batch, decodes it, commits it in one DuckDB transaction, then acks it (``commit.py``).
With one partition it is the whole sink as it always was. With several, each runs while this sink
holds the partition's lease; on a graceful stop it commits what the open pull request still brings,
on a lost lease it stops at once and leaves what it holds unacked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Awaitable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamInfo
from nats.micro.service import Service

from logmesh import __version__
from logmesh.common.failpoints import Failpoints
from logmesh.common.jetstream import ensure_consumer
from logmesh.common.query_contract import DeadLettersQuery, EventQuery, EventsQuery
from logmesh.common.stream_setup import sink_consumer_config
from logmesh.sink.commit import BatchCommitter, LeaseLost, Unservable
from logmesh.sink.counters import Counters
from logmesh.sink.crash_journal import CrashJournal
from logmesh.sink.endpoints import start_query_service
from logmesh.sink.lease import Lease
from logmesh.sink.metrics import PartitionSample, SinkMetrics
from logmesh.sink.place import Place
from logmesh.sink.puller import Puller
from logmesh.sink.settings import SinkSettings
from logmesh.sink.writer import Writer

log = logging.getLogger("logmesh.sink")

# A partition's consumer outlives its file's sink by this long, then goes away by itself.
INACTIVE_THRESHOLD = 3600.0
# How long a partition that cannot start keeps saying why in its status (without a lease) before
# it gives the partition up; with a lease, one TTL.
REFUSAL_SHOWN = 5.0
# A cleanup step that takes longer than this is abandoned (logged), so the file is still closed.
CLEANUP_BOUND = 5.0


class Pipeline(BatchCommitter):
    def __init__(
        self, settings: SinkSettings, place: Place, metrics: SinkMetrics, lease: Lease | None, owner: str
    ) -> None:
        failpoints = Failpoints(settings.failpoints)
        writer = Writer(settings, failpoints, place.db_path, place.subjects)
        super().__init__(settings, writer, CrashJournal(place.journal_path), failpoints, metrics, lease)
        self.place = place
        self.owner = owner
        self.started = time.time()
        self.consumer: str | None = None
        self.pending = 0
        self.ack_pending = 0
        # Set when the lease is lost: stop at once, commit and ack nothing more.
        self.halt = asyncio.Event()
        self._service: Service | None = None
        self._service_stopping: asyncio.Task[None] | None = None

    def stop_now(self) -> None:
        """The lease is lost or no longer valid: stop committing and acking, and answer no more queries
        for the partition (another owner may be answering them already)."""
        self.halt.set()
        if self._puller is not None:
            self._puller.wake()
        if self._service is not None and self._service_stopping is None:
            self._service_stopping = asyncio.create_task(self._stop_service())

    async def run(self, nc: Client, stream: StreamInfo, stopping: asyncio.Event) -> None:
        s, place = self.settings, self.place
        js = nc.jetstream()
        tasks: list[asyncio.Task[None]] = []
        try:
            await self.writer.open()
            self._journal.load()
            assert stream.created is not None
            await self.writer.use_stream(stream.created)
            if place.partitioned:
                # Served at once: a partition that cannot start says why in its status.
                self._service = await self._serve(nc)
                if not await self._complete_history(js, stopping):
                    return
            self.consumer = place.consumer(self.writer.file_id)
            await self._declare_consumer(js)
            if self._service is None:
                self._service = await self._serve(nc)
            self._puller = puller = Puller(
                nc, s.stream, self.consumer, batch=s.batch_size, max_buffered=2 * s.batch_size
            )
            await puller.start()
            tasks = [
                asyncio.create_task(self._wake_on(stopping)),
                asyncio.create_task(self._watch_lag(js)),
                asyncio.create_task(self._keep_in_progress(puller)),
            ]
            self.ready, self.last_error = True, None
            log.info("%s ready: stream %s, consumer %s, store %s", place, s.stream, self.consumer, place.db_path)
            try:
                await self._pull(js, puller, stopping)
            except LeaseLost as exc:
                self.halt.set()
                log.warning("%s: %s; leaving what it holds unacked", place, exc)
        finally:
            self.ready = False
            for task in tasks:
                task.cancel()
            # Each step bounded and on its own: the file is closed whatever the others do, before
            # the caller releases its lock.
            try:
                await (self._service_stopping or self._stop_service())
            finally:
                try:
                    if self._puller is not None:
                        await _bounded(self._puller.stop(grace=0), f"{place}: stopping the pull")
                finally:
                    await self.writer.close()
                    log.info("%s stopped", place)

    async def _stop_service(self) -> None:
        service, self._service = self._service, None
        if service is not None:
            await _bounded(service.stop(), f"{self.place}: stopping its query service")

    async def _pull(self, js: JetStreamContext, puller: Puller, stopping: asyncio.Event) -> None:
        s = self.settings
        while not stopping.is_set() and not self.halt.is_set():
            if puller.consumer_gone is not None:
                await self._recreate_consumer(js, puller, stopping)
                continue
            msgs = await puller.take(s.batch_size, wait=0.5, linger=s.linger)
            if msgs and not self.halt.is_set():
                await self._handle(msgs, stopping)
        if self.halt.is_set():
            return
        # Graceful stop: let the open pull request end, then commit and ack what it delivered.
        await puller.stop(grace=3.0)
        while msgs := await puller.take(s.batch_size, wait=0):
            await self._handle(msgs, stopping)

    async def _wake_on(self, stopping: asyncio.Event) -> None:
        await stopping.wait()
        if self._puller is not None:
            self._puller.wake()

    async def _serve(self, nc: Client) -> Service:
        metadata = {"partition": str(self.place.partition)} if self.place.partitioned else None
        service, _ = await start_query_service(nc, self, __version__, self.place.query_prefix, metadata)
        return service

    async def _complete_history(self, js: JetStreamContext, stopping: asyncio.Event) -> bool:
        """The file must hold, or be able to read, the partition's whole history: a new file gets its
        id only while the stream still starts at sequence 1; an existing file resumes only if the
        stream still holds everything past its highest committed sequence. Otherwise the partition is
        not ready, says why (status and log) for a while, then raises :class:`Unservable` so that the
        lease goes to a sink that can serve it. False when stopping (or the lease is lost) first."""
        s = self.settings
        if self.halt.is_set():
            return False
        refusal: str | None
        try:
            first = (await js.stream_info(s.stream)).state.first_seq
        except (nats.errors.Error, TimeoutError) as exc:
            refusal = f"{self.place}: stream {s.stream} does not answer: {exc}"
        else:
            refusal = self._history_gap(first)
            if refusal is None:
                if self.writer.file_id is None:
                    await self.writer.set_file_id(secrets.token_hex(6))
                    log.info("%s: new store file %s (id %s)", self.place, self.place.db_path, self.writer.file_id)
                return True
        self.last_error = refusal
        log.error("%s", refusal)
        with contextlib.suppress(TimeoutError):
            shown = REFUSAL_SHOWN if self.lease is None else self.lease.ttl
            await asyncio.wait_for(_either(stopping, self.halt), shown)
        if stopping.is_set() or self.halt.is_set():
            return False
        raise Unservable(refusal)

    def _history_gap(self, first: int) -> str | None:
        """Why the file cannot (re)start reading a stream that starts at ``first``; None when it can.
        ``first`` is 0 when the stream never held a message."""
        s = self.settings
        if self.writer.file_id is None:
            if first <= 1:
                return None
            return (
                f"{self.place}: refusing to build a new store file: stream {s.stream} starts at sequence "
                f"{first}, not 1, so the partition's history is incomplete"
            )
        ranges = self.writer.committed.ranges()
        highest = ranges[-1][1] if ranges else 0
        if first <= highest + 1:
            return None
        # Its consumer (recreated, or behind) would go on from the stream's first message: whatever
        # the partition had in between is gone.
        return (
            f"{self.place}: refusing to resume store file {self.place.db_path} (id {self.writer.file_id}): "
            f"its highest committed sequence is {highest} but stream {s.stream} starts at sequence {first}, "
            f"so the partition's history is incomplete (messages {highest + 1}-{first - 1} are gone)"
        )

    async def _declare_consumer(self, js: JetStreamContext) -> None:
        s, place = self.settings, self.place
        assert self.consumer is not None
        if not place.partitioned:
            await ensure_consumer(js, s.stream, self.consumer, ack_wait=s.ack_wait, max_ack_pending=s.max_ack_pending)
            return
        # The file's own consumer: created once with the file and never changed (its name is new with
        # every file), so declaring it again is a no-op.
        config = sink_consumer_config(
            self.consumer,
            ack_wait=s.ack_wait,
            max_ack_pending=s.max_ack_pending,
            filter_subjects=place.filters,
            inactive_threshold=INACTIVE_THRESHOLD,
        )
        await js.add_consumer(s.stream, config)

    async def _recreate_consumer(self, js: JetStreamContext, puller: Puller, stopping: asyncio.Event) -> None:
        """The durable consumer is gone (deleted through the JetStream API): nothing reaches the sink
        until it exists again, so the sink is not ready meanwhile. The new consumer delivers the stream
        from the start; what is already committed is recognised by its sequence and only acked."""
        s = self.settings
        self.ready = False
        self.last_error = (
            f"consumer {self.consumer} of stream {s.stream} is gone ({puller.consumer_gone}); recreating it"
        )
        log.warning("%s", self.last_error)
        delay = 0.1
        while not stopping.is_set() and not self.halt.is_set():
            try:
                await self._declare_consumer(js)
            except (nats.errors.Error, TimeoutError) as exc:
                self.last_error = f"consumer {self.consumer} of stream {s.stream} cannot be recreated: {exc}"
                log.warning("%s; retrying in %.1f s", self.last_error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
                delay = min(delay * 2, 2.0)
                continue
            log.info("consumer %s of stream %s recreated", self.consumer, s.stream)
            self.ready, self.last_error = True, None
            await puller.resume()
            return

    async def _watch_lag(self, js: JetStreamContext) -> None:
        while True:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                assert self.consumer is not None
                info = await js.consumer_info(self.settings.stream, self.consumer)
                self.pending, self.ack_pending = info.num_pending or 0, info.num_ack_pending or 0
            await asyncio.sleep(5)

    @property
    def buffered(self) -> int:
        return self._puller.buffered if self._puller else 0

    def sample(self) -> PartitionSample:
        return PartitionSample(
            self.place.partition,
            self.place.count,
            self.writer.counters,
            self.ready,
            self.buffered,
            self.pending,
            self.ack_pending,
        )

    # ---- queries (served over NATS by endpoints.py) ------------------------------------------

    def counters(self) -> Counters:
        return self.writer.counters

    def status(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "last_error": self.last_error,
            "uptime_seconds": round(time.time() - self.started, 3),
            "last_commit_at": self.last_commit_at,
            "batches_committed": self.batches,
            "buffered": self.buffered,
            "metrics_port": self.metrics.port,
            "store_bytes": self.writer.store.file_size() if self.ready else None,
            "partition": self.place.partition,
            "partitions": self.place.count,
            "owner": self.owner,
            "pid": os.getpid(),
            "consumer": self.consumer,
            "file_id": self.writer.file_id,
            "lease_valid_for": None if self.lease is None else round(self.lease.remaining, 3),
        }

    def list_events(self, q: EventsQuery) -> bytes:
        return self.writer.store.reader.list_events(q)

    def get_event(self, q: EventQuery) -> bytes | None:
        return self.writer.store.reader.get_event(q)

    def list_dead_letters(self, q: DeadLettersQuery) -> bytes:
        return self.writer.store.reader.list_dead_letters(q)


async def _bounded(step: Awaitable[None], what: str) -> None:
    """Waits for a cleanup step at most :data:`CLEANUP_BOUND` seconds; its failure is logged, not
    raised, so that the steps after it run."""
    try:
        await asyncio.wait_for(step, CLEANUP_BOUND)
    except Exception as exc:
        log.warning("%s failed: %s", what, exc or type(exc).__name__)


async def _either(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
