"""Publishing into JetStream with acknowledgements, pipelined, and the window-duplicate receipts.

``js.publish`` waits one round trip per message (about 7,000 msg/s here). This publisher writes a
whole batch as core publishes in a few buffers, each message with its own reply subject, and one raw
subscription collects the PubAcks: one round trip per batch. It runs on either NATS path (``natsio``).

A batch whose duplicates JetStream dropped is followed by one receipt that counts them for the sink
(``publish_counted``): ingest and the load generator both publish that way.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from logmesh.common.jetstream import MSG_ID_HEADER, RECEIPT_SUBJECT
from logmesh.common.natsio import wire_io

STORED = 0
DUPLICATE = 1


@dataclass(frozen=True, slots=True)
class Outgoing:
    subject: str
    data: bytes
    msg_id: str


@dataclass(slots=True)
class _Pending:
    results: list[int | str | None]
    waiting: int
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class BatchResult:
    """Per message: STORED, DUPLICATE, or the error JetStream gave, or None when no ack came in time."""

    results: list[int | str | None]

    @property
    def complete(self) -> bool:
        return all(r in (STORED, DUPLICATE) for r in self.results)

    @property
    def duplicates(self) -> int:
        return sum(1 for r in self.results if r == DUPLICATE)

    def first_error(self) -> str | None:
        for r in self.results:
            if isinstance(r, str):
                return r
        return None


@dataclass(frozen=True)
class Counted:
    """A batch's outcome and, when JetStream dropped some of it as duplicates, its receipt's."""

    batch: BatchResult
    receipt: BatchResult | None = None

    @property
    def complete(self) -> bool:
        """Every event is in the stream and every duplicate is on its way to the counters."""
        return self.batch.complete and (self.receipt is None or self.receipt.complete)

    def problem(self, timeout: float) -> str | None:
        """What went wrong, if anything (``timeout``: how long acks were waited for)."""
        if not self.batch.complete:
            missing = sum(1 for r in self.batch.results if r is None)
            reason = self.batch.first_error() or f"{missing} acknowledgement(s) did not arrive in {timeout:g} s"
            return f"JetStream did not store every event ({reason})"
        if self.receipt is not None and not self.receipt.complete:
            reason = self.receipt.first_error() or f"its acknowledgement did not arrive in {timeout:g} s"
            return f"the receipt counting the duplicates was not stored ({reason})"
        return None


@dataclass(frozen=True, slots=True)
class Prepared:
    # The reply subjects' common part, <inbox>.<batch number>: what an ack is matched to its batch by.
    key: bytes
    commands: list[Any]  # built by the publisher's NATS path, for its publish_many


class AckedPublisher:
    # A batch goes out in slices so that acks start flowing back while the rest is written.
    SLICE = 1000

    def __init__(self, nc: Client) -> None:
        self._nc = nc
        self._io = wire_io(nc)
        self._inbox = nc.new_inbox()
        self._batch_ids = itertools.count()
        self._pending: dict[bytes, _Pending] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._io.subscribe_raw(self._inbox + ".>", self._on_ack)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def publish(self, messages: Sequence[Outgoing], timeout: float) -> BatchResult:
        """Publishes every message and waits, at most ``timeout`` seconds, for every PubAck."""
        return await self.send(self.prepare(messages), timeout)

    async def publish_counted(self, prepared: Prepared, topics: Sequence[str], timeout: float) -> Counted:
        """Publishes a batch (``topics``: each message's topic) and, if JetStream dropped some of it as
        duplicates, a receipt that counts them by topic, waiting for its ack too. A batch that is not
        ``complete`` is to be sent again whole, with the same ids: what was stored comes back as
        duplicates, counted by the new attempt's receipt."""
        result = await self.send(prepared, timeout)
        duplicates = _duplicates_by_topic(topics, result)
        if not duplicates:
            return Counted(result)
        return Counted(result, await self.publish([receipt_message(duplicates, len(prepared.commands))], timeout))

    def prepare(self, messages: Sequence[Outgoing]) -> Prepared:
        """The wire commands of a batch, each with its own reply subject. Send a prepared batch once:
        a retry prepares again, so late acks of the first attempt cannot count for the second."""
        key = f"{self._inbox}.{next(self._batch_ids)}".encode()
        hpub = self._io.hpub
        commands = [
            hpub(m.subject.encode(), _id_header(m.msg_id), m.data, b"%s.%d" % (key, n)) for n, m in enumerate(messages)
        ]
        return Prepared(key, commands)

    async def send(self, prepared: Prepared, timeout: float) -> BatchResult:
        count = len(prepared.commands)
        pending = _Pending(results=[None] * count, waiting=count)
        self._pending[prepared.key] = pending
        try:
            async with asyncio.timeout(timeout):
                for start in range(0, count, self.SLICE):
                    await self._io.publish_many(prepared.commands[start : start + self.SLICE])
                if pending.waiting:
                    await pending.done.wait()
        except TimeoutError:
            pass
        finally:
            del self._pending[prepared.key]
        return BatchResult(pending.results)

    def _on_ack(self, subject: bytes, reply: bytes, headers: bytes | None, data: bytes) -> None:
        # Runs for every published message: the common PubAck is recognised without parsing its JSON.
        cut = subject.rfind(b".")
        pending = self._pending.get(subject[:cut])
        if pending is None:
            return  # the batch already gave up waiting
        i = int(subject[cut + 1 :])
        results = pending.results
        if results[i] is not None:
            return
        results[i] = _read_ack(headers, data)
        pending.waiting -= 1
        if pending.waiting == 0:
            pending.done.set()


def _id_header(msg_id: str) -> bytes:
    return b"NATS/1.0\r\n" + MSG_ID_HEADER.encode() + b": " + msg_id.encode() + b"\r\n\r\n"


def _read_ack(headers: bytes | None, data: bytes) -> int | str:
    # {"stream":"LOGS","seq":7} or {...,"seq":7,"duplicate": true}. Runs for every message published:
    # looking at the ends costs a third of searching the whole ack for "duplicate".
    if data[:10] == b'{"stream":' and data[-1:] == b"}":
        return DUPLICATE if data[-5:] == b"true}" and b'"duplicate"' in data else STORED
    if headers is not None and not data:
        # A status reply such as "NATS/1.0 503" means no stream listens on the subject.
        return "status " + headers.split(b"\r\n", 1)[0][len(b"NATS/1.0") :].decode("utf-8", "replace").strip()
    try:
        ack = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "unreadable PubAck"
    if not isinstance(ack, dict):
        return "unreadable PubAck"
    if "error" in ack:
        err = ack["error"]
        if not isinstance(err, dict):
            return f"error {err!r}"
        return f"{err.get('code')} {err.get('description', '')}".strip()
    return DUPLICATE if ack.get("duplicate") else STORED


def receipt_message(duplicates_by_topic: Counter[str], events: int) -> Outgoing:
    """One receipt per batch of ``events`` events: the sink adds its counts to the window-duplicate
    counters in the same transaction as the events, so the count is durable and survives restarts. Its
    own unique id makes a resent receipt a duplicate that JetStream drops, and the sink counts each
    stream message once. The batch size bounds what the sink believes of the counts."""
    body = orjson.dumps({"events": events, "window_duplicates": dict(duplicates_by_topic)})
    return Outgoing(RECEIPT_SUBJECT, body, "receipt:" + uuid.uuid4().hex)


def _duplicates_by_topic(topics: Sequence[str], result: BatchResult) -> Counter[str]:
    return Counter(t for t, r in zip(topics, result.results, strict=True) if r == DUPLICATE)
