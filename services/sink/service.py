"""The sink: pull a batch, decode it, commit it in one DuckDB transaction, then ack it.

Ack policy: ``+ACK`` for every message once its batch is committed, ``+TERM`` for dead letters (kept in
the store with their reason), ``+WPI`` while a batch waits for a broken store, so JetStream does not
redeliver what is still held here. Acks are explicit, one per message, written as one buffer: with
ack policy ALL, deleting one pending message from the stream makes the server ack every message
before it, delivered or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext

from logmesh import __version__
from logmesh.common.failpoints import POISON_MARKER, Failpoints
from logmesh.common.jetstream import close, connect, ensure_consumer, wait_for_stream
from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.query_contract import DeadLettersQuery, EventQuery, EventsQuery
from logmesh.common.wire import Delivery, WireMsg, delivery_count
from logmesh.sink.counters import Counters
from logmesh.sink.crash_journal import CrashJournal
from logmesh.sink.endpoints import start_query_service
from logmesh.sink.metrics import SinkMetrics
from logmesh.sink.puller import Puller
from logmesh.sink.settings import SinkSettings
from logmesh.sink.store import CommitResult
from logmesh.sink.writer import Writer

log = logging.getLogger("logmesh.sink")


async def _wake_on(stopping: asyncio.Event, puller: Puller) -> None:
    await stopping.wait()
    puller.wake()


class Sink:
    def __init__(self, settings: SinkSettings) -> None:
        self.settings = settings
        self.failpoints = Failpoints(settings.failpoints)
        self.writer = Writer(settings, self.failpoints)
        self.started = time.time()
        self.ready = False
        self.last_error: str | None = None
        self.last_commit_at: float | None = None
        self.batches = 0
        self._puller: Puller | None = None
        self._in_flight: list[WireMsg] = []
        self._journal = CrashJournal(settings.data_dir / "suspect.json")
        self.metrics = SinkMetrics(
            counters=lambda: self.writer.counters, ready=lambda: self.ready, buffered=lambda: self.buffered
        )

    async def run(self, stopping: asyncio.Event) -> None:
        s = self.settings
        await self.writer.open()
        self._journal.load()
        nc: Client | None = None
        service = None
        waker: asyncio.Task[None] | None = None
        keeper: asyncio.Task[None] | None = None
        lag: asyncio.Task[None] | None = None
        try:
            nc = await connect(
                s.nats_url,
                "logmesh-sink",
                io=s.nats_io,
                stopping=stopping,
                credentials=NatsCredentials.from_settings(s, "sink"),
            )
            js = nc.jetstream()
            info = await wait_for_stream(js, s, stopping=stopping, may_update=False)
            assert info.created is not None
            await self.writer.use_stream(info.created)
            await self._declare_consumer(js)
            service, _ = await start_query_service(nc, self, __version__)
            self._puller = puller = Puller(nc, s.stream, s.consumer, batch=s.batch_size, max_buffered=2 * s.batch_size)
            await puller.start()
            port = self.metrics.serve(s.metrics_host, s.metrics_port)
            waker = asyncio.create_task(_wake_on(stopping, puller))
            lag = asyncio.create_task(self._watch_lag(js))
            keeper = asyncio.create_task(self._keep_in_progress(puller))
            self.ready = True
            metrics_at = f"{s.metrics_host}:{port}" if port else "nowhere"
            log.info(
                "sink ready: stream %s, consumer %s, store %s, metrics at %s",
                s.stream,
                s.consumer,
                s.db_path,
                metrics_at,
            )
            while not stopping.is_set():
                if puller.consumer_gone is not None:
                    await self._recreate_consumer(js, puller, stopping)
                    continue
                msgs = await puller.take(s.batch_size, wait=0.5, linger=s.linger)
                if msgs:
                    await self._handle(msgs, stopping)
            # Graceful stop: let the open pull request end, then commit and ack what it delivered.
            await puller.stop(grace=3.0)
            while msgs := await puller.take(s.batch_size, wait=0):
                await self._handle(msgs, stopping)
        finally:
            self.ready = False
            for task in (waker, keeper, lag):
                if task is not None:
                    task.cancel()
            if service is not None:
                await service.stop()
            if nc is not None:
                await close(nc)
            await self.writer.close()
            log.info("sink stopped")

    async def _declare_consumer(self, js: JetStreamContext) -> None:
        s = self.settings
        await ensure_consumer(js, s.stream, s.consumer, ack_wait=s.ack_wait, max_ack_pending=s.max_ack_pending)

    async def _recreate_consumer(self, js: JetStreamContext, puller: Puller, stopping: asyncio.Event) -> None:
        """The durable consumer is gone (deleted through the JetStream API): nothing reaches the sink
        until it exists again, so the sink is not ready meanwhile. The new consumer delivers the stream
        from the start; what is already committed is recognised by its sequence and only acked."""
        s = self.settings
        self.ready = False
        self.last_error = f"consumer {s.consumer} of stream {s.stream} is gone ({puller.consumer_gone}); recreating it"
        log.warning("%s", self.last_error)
        delay = 0.1
        while not stopping.is_set():
            try:
                await self._declare_consumer(js)
            except (nats.errors.Error, TimeoutError) as exc:
                self.last_error = f"consumer {s.consumer} of stream {s.stream} cannot be recreated: {exc}"
                log.warning("%s; retrying in %.1f s", self.last_error, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), delay)
                delay = min(delay * 2, 2.0)
                continue
            log.info("consumer %s of stream %s recreated", s.consumer, s.stream)
            self.ready, self.last_error = True, None
            await puller.resume()
            return

    async def _handle(self, msgs: list[WireMsg], stopping: asyncio.Event) -> None:
        """Commits a batch. A message delivered more than ``poison_after`` times may be what keeps
        stopping the sink: such messages are committed one by one, under the crash journal
        (crash_journal.py), so that the one to blame is set aside and the others are not held back."""
        limit = self.settings.poison_after
        counts = [delivery_count(m[1]) for m in msgs]
        if max(counts) <= limit:
            await self._process(msgs, stopping)
            return
        first = [m for m, n in zip(msgs, counts, strict=True) if n <= limit]
        if first:
            await self._process(first, stopping)
        for msg, n in zip(msgs, counts, strict=True):
            if n <= limit:
                continue
            seq = Delivery.from_reply(msg[1]).stream_seq
            crashes = self._journal.convicted(seq)
            if crashes is not None:
                reason = f"the sink stopped {crashes} times while processing it alone (delivery {n})"
                if await self._set_aside([msg], stopping, reason):
                    self._journal.end()  # settled: its note goes with it
                continue
            self._journal.begin(seq)
            await self._process([msg], stopping)
            self._journal.end()

    async def _watch_lag(self, js: JetStreamContext) -> None:
        while True:
            with contextlib.suppress(nats.errors.Error, TimeoutError):
                info = await js.consumer_info(self.settings.stream, self.settings.consumer)
                self.metrics.pending.set(info.num_pending or 0)
                self.metrics.ack_pending.set(info.num_ack_pending or 0)
            await asyncio.sleep(5)

    @property
    def buffered(self) -> int:
        return self._puller.buffered if self._puller else 0

    async def _keep_in_progress(self, puller: Puller) -> None:
        """Tells JetStream, every third of ``ack_wait``, that the messages held here (buffered, or in a
        batch being committed, however slowly) are being worked on, so it does not redeliver them."""
        while True:
            await asyncio.sleep(self.settings.ack_wait / 3)
            held = [*puller.held(), *self._in_flight]
            if held:
                await puller.in_progress(held)

    async def _process(self, msgs: list[WireMsg], stopping: asyncio.Event) -> bool:
        """Decodes and commits a batch, then settles it with JetStream. While the store is broken it
        keeps retrying; if the store works but refuses the batch, the message it refuses is found and
        set aside. False only when stopping first."""
        return await self._settle(msgs, stopping, functools.partial(self._decode_and_commit, msgs), self._isolate)

    async def _set_aside(self, msgs: list[WireMsg], stopping: asyncio.Event, reason: str) -> bool:
        """Commits the batch's new messages as dead letters with ``reason``, undecoded, then settles it."""
        return await self._settle(msgs, stopping, functools.partial(self.writer.refuse, msgs, reason), None)

    async def _decode_and_commit(self, msgs: list[WireMsg]) -> CommitResult:
        if self.failpoints.active("sink.poison") and any(POISON_MARKER in m[3] for m in msgs):
            self.failpoints.hit("sink.poison")  # stands for a crash while decoding the message
        return await self.writer.commit(msgs)

    async def _settle(
        self,
        msgs: list[WireMsg],
        stopping: asyncio.Event,
        commit: Callable[[], Awaitable[CommitResult]],
        refused: Callable[[list[WireMsg], asyncio.Event], Awaitable[bool]] | None,
    ) -> bool:
        self._in_flight = msgs
        try:
            return await self._commit(msgs, stopping, commit, refused)
        finally:
            self._in_flight = []

    async def _commit(
        self,
        msgs: list[WireMsg],
        stopping: asyncio.Event,
        commit: Callable[[], Awaitable[CommitResult]],
        refused: Callable[[list[WireMsg], asyncio.Event], Awaitable[bool]] | None,
    ) -> bool:
        delay = 0.25
        self.failpoints.hit("sink.before_commit")
        while True:
            started = time.perf_counter()
            try:
                result = await commit()
            except Exception as exc:
                self.ready = False
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.error("commit of %d messages failed: %s", len(msgs), self.last_error)
            else:
                self.ready, self.last_error = True, None
                self.last_commit_at = time.time()
                self.batches += 1
                self.metrics.batch_size.observe(len(msgs))
                self.metrics.commit_seconds.observe(time.perf_counter() - started)
                log.info(
                    "committed %d messages: %d new events, %d redelivered, %d dead letters in %.1f ms%s",
                    len(msgs),
                    result.inserted,
                    result.redelivered,
                    len(result.dead),
                    (time.perf_counter() - started) * 1000,
                    " (conflict fallback)" if result.conflict_fallback else "",
                )
                self.failpoints.hit("sink.after_commit")
                assert self._puller is not None
                await self._puller.settle(msgs, result.dead)
                return True
            if await self._store_takes_writes() and refused is not None:
                # The store works but refuses this batch: find the message it refuses.
                return await refused(msgs, stopping)
            if stopping.is_set():
                return False
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _store_takes_writes(self) -> bool:
        try:
            await self.writer.reopen()
        except Exception as exc:
            log.error("store cannot be opened: %s", exc)
            return False
        return await self.writer.probe()

    async def _isolate(self, msgs: list[WireMsg], stopping: asyncio.Event) -> bool:
        if len(msgs) == 1:
            reason = f"the store refused it: {self.last_error}"
            return await self._commit(msgs, stopping, functools.partial(self.writer.refuse, msgs, reason), None)
        half = len(msgs) // 2
        for part in (msgs[:half], msgs[half:]):
            decode_and_commit = functools.partial(self._decode_and_commit, part)
            if not await self._commit(part, stopping, decode_and_commit, self._isolate):
                return False
        return True

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
        }

    def list_events(self, q: EventsQuery) -> bytes:
        return self.writer.store.reader.list_events(q)

    def get_event(self, q: EventQuery) -> bytes | None:
        return self.writer.store.reader.get_event(q)

    def list_dead_letters(self, q: DeadLettersQuery) -> bytes:
        return self.writer.store.reader.list_dead_letters(q)
