"""Reads a durable pull consumer with pull requests answered into one raw subscription.

nats-py's ``fetch()`` awaits every message through ``next_msg`` and tops out near 27,000 msg/s here.
Here each message's raw parts go to a function that appends them to a buffer (on the fast NATS path
straight from the read loop, see ``natsio``). One pull request is outstanding at a time; the next is
sent as soon as the buffer has room, so messages keep arriving while the previous batch commits.

A consumer deleted through the JetStream API ends the open request with ``409 Consumer Deleted``;
a request sent to a consumer that does not exist gets ``503`` (no responders). Either stops the
pulling until the consumer is declared again (``resume``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import nats
import orjson
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from logmesh.common.natsio import wire_io
from logmesh.common.wire import WireMsg

log = logging.getLogger("logmesh.sink")

ACK = b"+ACK"
IN_PROGRESS = b"+WPI"


class Puller:
    def __init__(
        self,
        nc: Client,
        stream: str,
        consumer: str,
        *,
        batch: int,
        max_buffered: int,
        expires: float = 2.0,
        max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self._nc = nc
        self._io = wire_io(nc)
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"
        self._batch = batch
        self._max_buffered = max(max_buffered, batch)
        self._expires = expires
        self._max_bytes = max_bytes
        self._buffer: deque[WireMsg] = deque()
        self._arrived = asyncio.Event()
        self._filled = asyncio.Event()
        self._oldest_at = 0.0
        self._request_ended = asyncio.Event()
        self._inbox = nc.new_inbox()
        self._requests = 0
        self._received = 0
        self._open_reply: bytes | None = None
        self._open_remaining = 0
        self._open_deadline = 0.0
        self._sub: Subscription | None = None
        self._pulling = False
        # Why the consumer looks gone (the status that ended a pull request), until ``resume``.
        self.consumer_gone: str | None = None

    async def start(self) -> None:
        self._sub = await self._io.subscribe_raw(self._inbox + ".*", self._on_message)
        self._pulling = True
        await self._request()

    async def resume(self) -> None:
        """Pulls again, once the consumer is declared again."""
        self.consumer_gone = None
        self._open_reply = None
        await self._request()

    async def _request(self) -> None:
        """Sends a pull request unless one is still open or the buffer is full."""
        if not self._pulling or self.consumer_gone is not None or not self._nc.is_connected:
            return
        if self._open_reply is not None and time.monotonic() < self._open_deadline:
            return
        if len(self._buffer) + self._batch > self._max_buffered:
            return
        self._requests += 1
        self._request_ended.clear()
        reply = f"{self._inbox}.{self._requests}"
        self._open_reply = reply.encode()
        self._open_remaining = self._batch
        # Past expiry the server has ended the request; if its end was lost (reconnect), send another.
        self._open_deadline = time.monotonic() + self._expires + 1.0
        request = {"batch": self._batch, "expires": int(self._expires * 1e9), "max_bytes": self._max_bytes}
        await self._nc.publish(self._next_subject, orjson.dumps(request), reply=reply)

    def _on_message(self, subject: bytes, reply: bytes, headers: bytes | None, data: bytes) -> None:
        """Runs in the read loop for every message: only bookkeeping, no awaiting."""
        if not reply:
            # A status from the server (408 expired, 409 limits, 404 nothing, 100 heartbeat): a
            # stream message always carries its $JS.ACK reply subject, even if a publisher gave it a
            # header called Status.
            if subject == self._open_reply and headers is not None and b" 100" not in headers[:16]:
                gone = _consumer_gone(headers)
                if gone is not None:
                    self.consumer_gone = gone
                self._end_request()
            return
        if not self._buffer:
            self._oldest_at = time.monotonic()
        self._buffer.append(WireMsg(subject, reply, headers, data))
        self._received += 1
        self._arrived.set()
        if len(self._buffer) >= self._batch:
            self._filled.set()
        if subject == self._open_reply:
            self._open_remaining -= 1
            if self._open_remaining <= 0:
                self._end_request()

    def _end_request(self) -> None:
        self._open_reply = None
        self._request_ended.set()
        # The next request goes out from take(), which may await; wake it if it waits.
        self._arrived.set()

    async def take(self, limit: int, wait: float, linger: float = 0.0) -> list[WireMsg]:
        """Up to ``limit`` buffered messages in delivery order; waits at most ``wait`` seconds for one,
        then until a full batch is buffered or the oldest message has waited ``linger`` seconds. Every
        commit costs about 20 ms whatever its size, so a short linger under moderate load saves CPU
        for the rest of the machine at a small cost in latency."""
        if not self._buffer:
            self._arrived.clear()
            await self._request()
            try:
                await asyncio.wait_for(self._arrived.wait(), wait)
            except TimeoutError:
                return []
            if not self._buffer:
                await self._request()
                return []
        remaining = self._oldest_at + linger - time.monotonic()
        if len(self._buffer) < limit and remaining > 0 and self._pulling:
            self._filled.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._filled.wait(), remaining)
        n = min(limit, len(self._buffer))
        msgs = [self._buffer.popleft() for _ in range(n)]
        if self._buffer:
            self._oldest_at = time.monotonic()
        await self._request()
        return msgs

    def wake(self) -> None:
        """Ends a ``take`` that is waiting, e.g. because the service is stopping."""
        self._pulling = False
        self._arrived.set()
        self._filled.set()

    def held(self) -> list[WireMsg]:
        return list(self._buffer)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def stop(self, grace: float, quiet: float = 0.1) -> None:
        """Stops pulling. What the open request still delivers is buffered (and processed by the
        caller) rather than left to redelivery: wait until it ends, or until nothing has arrived for
        ``quiet`` seconds (an idle request would otherwise run to its expiry), at most ``grace``."""
        self._pulling = False
        deadline = time.monotonic() + grace
        while self._open_reply is not None and time.monotonic() < deadline:
            before = self._received
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._request_ended.wait(), quiet)
            if self._received == before:
                break
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def settle(self, msgs: list[WireMsg], terminate: dict[int, str]) -> None:
        """Acks every message, except those at the positions in ``terminate``, which are terminated with
        their reason: all in one write. Without a connection the acks are lost, which is safe: JetStream
        redelivers the messages and the sink recognises them as committed."""
        io = self._io
        terms = [io.pub(msgs[i][1], b"+TERM " + reason[:200].encode()) for i, reason in terminate.items()]
        acks = [m[1] for i, m in enumerate(msgs) if i not in terminate] if terminate else [m[1] for m in msgs]
        await self._send([*terms, io.pub_each(acks, ACK)])

    async def in_progress(self, msgs: Iterable[WireMsg]) -> None:
        """Resets ``ack_wait`` for messages still being worked on, so JetStream does not redeliver them."""
        await self._send([self._io.pub_each([m[1] for m in msgs], IN_PROGRESS)])

    async def _send(self, messages: Iterable[Any]) -> None:
        try:
            await self._io.publish_many(messages)
        except (nats.errors.Error, OSError) as exc:
            log.warning("acks not sent (%s); JetStream will redeliver", exc or type(exc).__name__)


def _consumer_gone(status: bytes) -> str | None:
    """The status line of a pull request's end if it says the consumer is gone: ``409 Consumer
    Deleted`` (deleted while the request was open) or ``503`` (no consumer answers the subject)."""
    line = status.split(b"\r\n", 1)[0][len(b"NATS/1.0 ") :]
    if line.startswith(b"503") or line.startswith(b"409 Consumer Deleted"):
        return line.decode("utf-8", "replace")
    return None
