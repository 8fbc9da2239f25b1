"""Committing a batch, then settling it with JetStream: what one partition's pipeline does with what
it pulled.

Ack policy: ``+ACK`` for every message once its batch is committed, ``+TERM`` for dead letters (kept in
the store with their reason), ``+WPI`` while a batch waits for a broken store, so JetStream does not
redeliver what is still held here. Acks are explicit, one per message, written as one buffer: with
ack policy ALL, deleting one pending message from the stream makes the server ack every message
before it, delivered or not.

With several partitions a batch is committed and settled only while the partition's lease is valid
(``lease.py``); past that :class:`LeaseLost` ends the pipeline, and what it holds is left unacked.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable

from logmesh.common.failpoints import POISON_MARKER, Failpoints
from logmesh.common.wire import Delivery, WireMsg, delivery_count
from logmesh.sink.crash_journal import CrashJournal
from logmesh.sink.lease import Lease
from logmesh.sink.metrics import SinkMetrics
from logmesh.sink.puller import Puller
from logmesh.sink.settings import SinkSettings
from logmesh.sink.store import CommitResult
from logmesh.sink.writer import Writer

log = logging.getLogger("logmesh.sink")

Commit = Callable[[], Awaitable[CommitResult]]
Refused = Callable[[list[WireMsg], asyncio.Event], Awaitable[bool]]


class LeaseLost(Exception):
    """The partition's lease is no longer valid: nothing more may be committed or acked."""


class Unservable(Exception):
    """The partition cannot be served here now (its history is incomplete, its store keeps failing):
    its lease is better given up to a sink that can. The message says why."""


# A leased partition whose store has refused every write for this many lease TTLs is given up.
STORE_FAILING_TTLS = 3.0


class BatchCommitter:
    def __init__(
        self,
        settings: SinkSettings,
        writer: Writer,
        journal: CrashJournal,
        failpoints: Failpoints,
        metrics: SinkMetrics,
        lease: Lease | None,
    ) -> None:
        self.settings = settings
        self.writer = writer
        self.failpoints = failpoints
        self.metrics = metrics
        self.lease = lease
        self._journal = journal
        self._puller: Puller | None = None
        self._in_flight: list[WireMsg] = []
        self.ready = False
        self.last_error: str | None = None
        self.last_commit_at: float | None = None
        self.batches = 0

    def check_lease(self) -> None:
        if self.lease is not None and not self.lease.valid():
            raise LeaseLost(f"the lease of partition {self.lease.partition} is no longer valid")

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
            try:
                await self._process([msg], stopping)
            except (LeaseLost, Unservable, asyncio.CancelledError):
                # The work ended, the process lives on: the message is not to blame. Only a death
                # here may leave the note.
                self._journal.end()
                raise
            self._journal.end()

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
        self, msgs: list[WireMsg], stopping: asyncio.Event, commit: Commit, refused: Refused | None
    ) -> bool:
        self._in_flight = msgs
        try:
            return await self._commit(msgs, stopping, commit, refused)
        finally:
            self._in_flight = []

    async def _commit(
        self, msgs: list[WireMsg], stopping: asyncio.Event, commit: Commit, refused: Refused | None
    ) -> bool:
        delay = 0.25
        failing_since: float | None = None
        self.failpoints.hit("sink.before_commit")
        while True:
            self.check_lease()
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
                    "committed %d messages: %d new events, %d redelivered, %d dead letters in %.1f ms%s%s",
                    len(msgs),
                    result.inserted,
                    result.redelivered,
                    len(result.dead),
                    (time.perf_counter() - started) * 1000,
                    " (conflict fallback)" if result.conflict_fallback else "",
                    f" (partition {self.lease.partition})" if self.lease is not None else "",
                )
                self.failpoints.hit("sink.after_commit")
                self.check_lease()
                assert self._puller is not None
                await self._puller.settle(msgs, result.dead)
                return True
            if await self._store_takes_writes() and refused is not None:
                # The store works but refuses this batch: find the message it refuses.
                return await refused(msgs, stopping)
            if stopping.is_set():
                return False
            failing_since = failing_since or time.monotonic()
            if self.lease is not None and time.monotonic() - failing_since > STORE_FAILING_TTLS * self.lease.ttl:
                raise Unservable(
                    f"the store has refused every write for {STORE_FAILING_TTLS:g} TTLs: {self.last_error}"
                )
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

    async def _keep_in_progress(self, puller: Puller) -> None:
        """Tells JetStream, every third of ``ack_wait``, that the messages held here (buffered, or in a
        batch being committed, however slowly) are being worked on, so it does not redeliver them."""
        while True:
            await asyncio.sleep(self.settings.ack_wait / 3)
            held = [*puller.held(), *self._in_flight]
            if held and (self.lease is None or self.lease.valid()):
                await puller.in_progress(held)
