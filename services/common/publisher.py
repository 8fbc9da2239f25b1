"""Publishing into JetStream with acknowledgements, pipelined, and the window-duplicate receipts.

``js.publish`` waits one round trip per message (about 7,000 msg/s here). This publisher writes a
whole batch as core publishes in a few buffers, each message with its own reply subject, and one raw
subscription collects the PubAcks: one round trip per batch. It runs on either NATS path (``natsio``).

A batch whose duplicates JetStream dropped is followed by a receipt that counts them for the sink
(``publish_counted``), one per partition that has any, on that partition's receipt subject: ingest
and the load generator both publish that way.

The one retry rule (``retry_for``): what JetStream has not acknowledged (no answer during a stream
leader election, a 503 status while no leader is known, a connection lost to a dying server) is
sent again with the same ``Nats-Msg-Id`` until it is, or until the bound. The window survives a
failover, so a message the old leader stored comes back as a duplicate: one whose earlier attempt got
no answer is taken as stored by this batch (it was sent once) when the copy the stream holds is newer
than every sequence seen before the first attempt and no other retry took that id already; else it
is a duplicate like any other.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import orjson
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from logmesh.common.jetstream import MSG_ID_HEADER
from logmesh.common.natsio import wire_io
from logmesh.common.partitions import partition_of, receipt_subject

STORED = 0
DUPLICATE = 1
# An attempt waits this long for its acks at most, so that what a dead leader never answers is sent
# again soon; the first pause between attempts, doubled up to the last.
_ATTEMPT_WAIT = 2.0
_FIRST_PAUSE, _LAST_PAUSE = 0.05, 1.0
# How long an id a retry took as its own stays taken: longer than any retry bound.
_CLAIM_FOR = 120.0
_SEQ = re.compile(rb'"seq":(\d+)')


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
    last_ack: bytes = b""  # any PubAck of the batch: its sequence bounds the stream's from below
    acks: list[bytes | None] | None = None  # every PubAck, kept for retries only


@dataclass(frozen=True)
class BatchResult:
    """Per message: STORED, DUPLICATE, or the error JetStream gave, or None when no ack came in time."""

    results: list[int | str | None]
    acks: list[bytes | None] | None = None  # the PubAcks themselves, when asked for

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
    messages: Sequence[Outgoing]  # what they say: a retry prepares the unacknowledged ones again


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
        # The highest stream sequence a PubAck has shown, and the ids a retry took as stored by its
        # own unanswered attempt (see send_until), with when.
        self._seen_seq = 0
        self._claimed: dict[str, float] = {}

    async def start(self) -> None:
        self._sub = await self._io.subscribe_raw(self._inbox + ".>", self._on_ack)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None

    async def publish(self, messages: Sequence[Outgoing], timeout: float, retry_for: float = 0.0) -> BatchResult:
        """Publishes every message and waits, at most ``timeout`` seconds, for every PubAck; with
        ``retry_for``, retries what is not acknowledged for that long (the module's retry rule)."""
        return await self.send_until(self.prepare(messages), timeout, retry_for)

    async def publish_counted(
        self,
        prepared: Prepared,
        topics: Sequence[str],
        timeout: float,
        *,
        partitions: int = 1,
        retry_for: float = 0.0,
    ) -> Counted:
        """Publishes a batch (``topics``: each message's topic) and, if JetStream dropped some of it as
        duplicates, the receipts that count them by topic (one per partition of ``partitions`` that has
        any), waiting for their acks too; retries for ``retry_for`` seconds (the module's rule). A
        batch that is still not ``complete`` is to be sent again whole, with the same ids: what was
        stored comes back as duplicates, counted by the new attempt's receipts."""
        started = time.monotonic()
        result = await self.send_until(prepared, timeout, retry_for)
        duplicates = _duplicates_by_topic(topics, result)
        if not duplicates:
            return Counted(result)
        receipts = receipt_messages(duplicates, topics, partitions)
        # The receipts get what is left of the bound, and at least one attempt.
        left = max(0.05, retry_for - (time.monotonic() - started)) if retry_for > 0 else 0.0
        return Counted(result, await self.publish(receipts, timeout, left))

    async def send_until(self, prepared: Prepared, timeout: float, retry_for: float) -> BatchResult:
        """Sends a prepared batch, waiting ``timeout`` for its acks. With ``retry_for`` > 0 it takes at
        most that long in all: each attempt waits ``_ATTEMPT_WAIT`` at most (a dead leader never
        answers: the retry should come soon), then what is not acknowledged is sent again."""
        if retry_for <= 0:
            return await self.send(prepared, timeout)
        deadline = time.monotonic() + retry_for

        def wait() -> float:
            return max(0.05, min(timeout, _ATTEMPT_WAIT, deadline - time.monotonic()))

        seen_before = self._stream_seq_seen()
        results = (await self._attempt(prepared, wait())).results
        unanswered = [r is None for r in results]
        pause = _FIRST_PAUSE
        while time.monotonic() < deadline:
            todo = [i for i, r in enumerate(results) if _worth_retrying(r)]
            if not todo:
                break
            await asyncio.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, _LAST_PAUSE)
            again = await self._attempt(self.prepare([prepared.messages[i] for i in todo]), wait(), keep_acks=True)
            acks = again.acks or [None] * len(todo)
            for i, r, ack in zip(todo, again.results, acks, strict=True):
                if r == DUPLICATE and unanswered[i]:
                    r = STORED if self._stored_by_us(prepared.messages[i].msg_id, ack, seen_before) else DUPLICATE
                results[i] = r
                unanswered[i] = unanswered[i] or r is None
        return BatchResult(results)

    def _stream_seq_seen(self) -> int:
        """The highest stream sequence any PubAck has shown so far, batches still in flight included
        (their latest ack each: one parse per batch, not per message)."""
        latest = (_ack_seq(p.last_ack) for p in self._pending.values() if p.last_ack)
        return max(self._seen_seq, *(seq for seq in latest if seq is not None), 0)

    def _stored_by_us(self, msg_id: str, ack: bytes | None, seen_before: int) -> bool:
        """Whether the copy JetStream holds for ``msg_id`` is the one an unanswered attempt of ours
        sent. Not if it was stored before our first attempt (its sequence is one a PubAck had shown
        by then: a true duplicate), nor if another of our retries took it already (two copies of one
        id, in one batch or two, both unanswered: one stored, one duplicate)."""
        seq = _ack_seq(ack)
        if seq is None or seq <= seen_before:
            return False
        now = time.monotonic()
        while self._claimed and now - next(iter(self._claimed.values())) > _CLAIM_FOR:
            del self._claimed[next(iter(self._claimed))]
        if msg_id in self._claimed:
            return False
        self._claimed[msg_id] = now
        return True

    async def _attempt(self, prepared: Prepared, timeout: float, *, keep_acks: bool = False) -> BatchResult:
        try:
            return await self.send(prepared, timeout, keep_acks=keep_acks)
        except (nats.errors.Error, OSError):
            # The connection went down mid-batch (its server died): part of it may have been sent.
            return BatchResult([None] * len(prepared.commands))

    def prepare(self, messages: Sequence[Outgoing]) -> Prepared:
        """The wire commands of a batch, each with its own reply subject. Send a prepared batch once:
        a retry prepares again, so late acks of the first attempt cannot count for the second."""
        key = f"{self._inbox}.{next(self._batch_ids)}".encode()
        hpub = self._io.hpub
        commands = [
            hpub(m.subject.encode(), _id_header(m.msg_id), m.data, b"%s.%d" % (key, n)) for n, m in enumerate(messages)
        ]
        return Prepared(key, commands, messages)

    async def send(self, prepared: Prepared, timeout: float, *, keep_acks: bool = False) -> BatchResult:
        count = len(prepared.commands)
        pending = _Pending(results=[None] * count, waiting=count, acks=[None] * count if keep_acks else None)
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
        seq = _ack_seq(pending.last_ack)
        if seq is not None and seq > self._seen_seq:
            self._seen_seq = seq
        return BatchResult(pending.results, pending.acks)

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
        pending.last_ack = data
        if pending.acks is not None:
            pending.acks[i] = data
        pending.waiting -= 1
        if pending.waiting == 0:
            pending.done.set()


def _worth_retrying(result: int | str | None) -> bool:
    """What a retry can fix: no answer, no stream leader yet (a no-responders status, or JetStream
    temporarily unavailable), or an earlier copy of the id still being replicated (409). A limit the
    stream enforces (maximum bytes, a message too large) or a refusal stays what it is."""
    if result is None:
        return True
    if not isinstance(result, str):
        return False
    if result.startswith(("status ", "409 ")):
        return True
    return result.startswith("503 ") and "maximum" not in result and "exceed" not in result


def _ack_seq(ack: bytes | None) -> int | None:
    found = _SEQ.search(ack) if ack else None
    return int(found.group(1)) if found else None


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


def receipt_message(
    duplicates_by_topic: Counter[str], events: int, partition: int = 0, partitions: int = 1
) -> Outgoing:
    """One receipt per batch of ``events`` events (per partition of a batch, the partition's share):
    the sink adds its counts to the window-duplicate counters in the same transaction as the events,
    so the count is durable and survives restarts. Its own unique id makes a resent receipt a
    duplicate that JetStream drops, and the sink counts each stream message once. The batch size
    bounds what the sink believes of the counts."""
    body = orjson.dumps({"events": events, "window_duplicates": dict(duplicates_by_topic)})
    return Outgoing(receipt_subject(partition, partitions), body, "receipt:" + uuid.uuid4().hex)


def receipt_messages(duplicates_by_topic: Counter[str], topics: Sequence[str], partitions: int) -> list[Outgoing]:
    """The receipts of a batch of events on ``topics``: one per partition that has duplicates, sent
    to the sink that owns the partition, ``events`` being the partition's share of the batch."""
    if partitions == 1:
        return [receipt_message(duplicates_by_topic, len(topics))]
    events: Counter[int] = Counter()
    for topic, count in Counter(topics).items():  # per topic, not per event: a batch has few topics
        events[partition_of(topic, partitions)] += count
    split: dict[int, Counter[str]] = {}
    for topic, count in duplicates_by_topic.items():
        split.setdefault(partition_of(topic, partitions), Counter())[topic] = count
    return [receipt_message(split[k], events[k], k, partitions) for k in sorted(split)]


def _duplicates_by_topic(topics: Sequence[str], result: BatchResult) -> Counter[str]:
    return Counter(t for t, r in zip(topics, result.results, strict=True) if r == DUPLICATE)
