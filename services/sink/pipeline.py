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
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StreamInfo
from nats.micro.service import Service

from logmesh import __version__
from logmesh.common.failpoints import Failpoints
from logmesh.common.jetstream import ensure_consumer
from logmesh.common.query_contract import DeadLettersQuery, EventQuery, EventsQuery
from logmesh.sink.commit import BatchCommitter, LeaseLost
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
# How often a new file's refusal (the stream no longer starts at 1) is looked at again.
HISTORY_RETRY = 5.0


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

    def stop_now(self) -> None:
        self.halt.set()
        if self._puller is not None:
            self._puller.wake()

    async def run(self, nc: Client, stream: StreamInfo, stopping: asyncio.Event) -> None:
        s, place = self.settings, self.place
        js = nc.jetstream()
        await self.writer.open()
        self._journal.load()
        service: Service | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            assert stream.created is not None
            await self.writer.use_stream(stream.created)
            if place.partitioned:
                # Served at once: a partition that cannot start says why in its status.
                service = await self._serve(nc)
                if not await self._complete_history(js, stopping):
                    return
            self.consumer = place.consumer(self.writer.file_id)
            await self._declare_consumer(js)
            if service is None:
                service = await self._serve(nc)
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
            if service is not None:
                await service.stop()
            if self._puller is not None:
                await self._puller.stop(grace=0)
            await self.writer.close()
            log.info("%s stopped", place)

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
        """A file that has not read the stream yet gets its id once the stream still holds the
        partition's history from sequence 1; until then the partition is not ready, and says why.
        False when stopping (or the lease is lost) first."""
        s = self.settings
        while self.writer.file_id is None:
            try:
                first = (await js.stream_info(s.stream)).state.first_seq
            except (nats.errors.Error, TimeoutError) as exc:
                first, self.last_error = None, f"stream {s.stream} does not answer: {exc}"
            if first is not None and first <= 1:  # 0: the stream never held a message
                await self.writer.set_file_id(secrets.token_hex(6))
                log.info("%s: new store file %s (id %s)", self.place, self.place.db_path, self.writer.file_id)
                return True
            if first is not None:
                self.last_error = (
                    f"{self.place}: refusing to build a new store file: stream {s.stream} starts at sequence "
                    f"{first}, not 1, so the partition's history is incomplete (retrying every {HISTORY_RETRY:g} s)"
                )
            log.error("%s", self.last_error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_either(stopping, self.halt), HISTORY_RETRY)
            if stopping.is_set() or self.halt.is_set():
                return False
        return True

    async def _declare_consumer(self, js: JetStreamContext) -> None:
        s, place = self.settings, self.place
        assert self.consumer is not None
        if not place.partitioned:
            await ensure_consumer(js, s.stream, self.consumer, ack_wait=s.ack_wait, max_ack_pending=s.max_ack_pending)
            return
        # The file's own consumer: created once with the file and never changed (its name is new with
        # every file), so declaring it again is a no-op.
        config = ConsumerConfig(
            name=self.consumer,
            durable_name=self.consumer,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=s.ack_wait,
            max_ack_pending=s.max_ack_pending,
            max_deliver=-1,
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
            self.place.partition, self.writer.counters, self.ready, self.buffered, self.pending, self.ack_pending
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


async def _either(*events: asyncio.Event) -> None:
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
