"""What the two hot loops (the sink's Puller, the AckedPublisher) need from a NATS connection, and
the plain implementation of it on nats-py's public API.

Two implementations, chosen with the ``nats_io`` setting when ``jetstream.connect`` makes the
connection: ``fast`` (``fastnats.FastClient``: a faster wire parser, raw subscriptions and bulk
writes, on nats-py internals) and ``plain`` (an ordinary nats-py ``Client``). Both hand a
subscription's messages to a plain function as raw parts, the header block as the server sent it,
and publish many messages built beforehand. ``wire_io`` gives a connection's implementation.

Nothing here imports ``fastnats``: the plain path keeps working if nats-py's internals change. It
has nats-py's limits too: about five times the CPU per message, header values that are not UTF-8
come back with U+FFFD, and a subject that is not UTF-8 stops nats-py's read loop (it logs "nats:
encountered error") until the connection is made again; the fast path takes both as bytes. A
repeated header keeps its last value there, while JetStream dedups by the first ``Nats-Msg-Id``:
the fast path reads that one as JetStream does (``wire.parse_headers``).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, OutboundBufferLimitError

from logmesh.common.wire import parse_headers

log = logging.getLogger("logmesh.nats")

NatsIo = Literal["fast", "plain"]

# subject, reply, raw header block (or None), payload: all bytes, as they were on the wire.
RawHandler = Callable[[bytes, bytes, bytes | None, bytes], None]

# What one implementation's builders make and its publish_many writes: one or more messages.
OutT = TypeVar("OutT")


class WireIO(ABC, Generic[OutT]):
    """Raw subscriptions and bulk publishes. The builders are static so that a loop over many
    messages can bind one once; what they build goes to the same implementation's
    ``publish_many``."""

    @abstractmethod
    async def subscribe_raw(self, subject: str, handler: RawHandler) -> Subscription:
        """Every message on ``subject`` goes to ``handler(subject, reply, headers, payload)``, in
        order, from the connection's own task: it must be quick and must not block. An exception
        it raises is logged and the message dropped."""

    @abstractmethod
    async def publish_many(self, messages: Iterable[OutT]) -> None:
        """Publishes what the builders made, in order. Raises at once while the connection is
        closed or reconnecting (nothing is buffered for later): the caller retries."""

    @staticmethod
    @abstractmethod
    def pub(subject: bytes, payload: bytes, reply: bytes = b"") -> OutT:
        """One message without headers."""

    @staticmethod
    @abstractmethod
    def hpub(subject: bytes, header_block: bytes, payload: bytes, reply: bytes = b"") -> OutT:
        """One message; ``header_block`` is ``NATS/1.0\\r\\nName: value\\r\\n...\\r\\n``."""

    @staticmethod
    @abstractmethod
    def pub_each(subjects: Sequence[bytes], payload: bytes) -> OutT:
        """One message per subject, all with the same payload (acks)."""


def check_open(nc: Client) -> None:
    if nc.is_closed:
        raise ConnectionClosedError
    if not nc.is_connected:
        raise OutboundBufferLimitError


class _Publish(NamedTuple):
    subject: str
    payload: bytes
    reply: str
    headers: dict[str, str] | None


class PlainWire(WireIO[tuple[_Publish, ...]]):
    """nats-py's public API only: a subscription callback per message, one ``publish`` per message."""

    def __init__(self, nc: Client) -> None:
        self._nc = nc

    async def subscribe_raw(self, subject: str, handler: RawHandler) -> Subscription:
        async def deliver(msg: Msg) -> None:
            try:
                handler(msg.subject.encode(), msg.reply.encode(), header_block(msg), msg.data)
            except Exception:
                log.exception("raw message handler failed")

        # No pending limits: the hot loops bound what they ask for (pull batches, acks of a batch).
        return await self._nc.subscribe(subject, cb=deliver, pending_msgs_limit=0, pending_bytes_limit=0)

    async def publish_many(self, messages: Iterable[tuple[_Publish, ...]]) -> None:
        nc = self._nc
        check_open(nc)
        for chunk in messages:
            for m in chunk:
                await nc.publish(m.subject, m.payload, reply=m.reply, headers=m.headers)

    @staticmethod
    def pub(subject: bytes, payload: bytes, reply: bytes = b"") -> tuple[_Publish, ...]:
        return (_Publish(subject.decode(), payload, reply.decode(), None),)

    @staticmethod
    def hpub(subject: bytes, header_block: bytes, payload: bytes, reply: bytes = b"") -> tuple[_Publish, ...]:
        return (_Publish(subject.decode(), payload, reply.decode(), parse_headers(header_block)),)

    @staticmethod
    def pub_each(subjects: Sequence[bytes], payload: bytes) -> tuple[_Publish, ...]:
        return tuple(_Publish(s.decode(), payload, "", None) for s in subjects)


def header_block(msg: Msg) -> bytes | None:
    """The header block as the server sent it, rebuilt from what nats-py parsed: a status message
    (no reply subject) as ``NATS/1.0 409 Consumer Deleted\\r\\n...``, any other as
    ``NATS/1.0\\r\\nName: value\\r\\n...\\r\\n``, the form a publisher writes."""
    headers = msg.headers
    if not headers:
        return None
    first = "NATS/1.0"
    status = headers.get("Status") if not msg.reply else None
    if status is not None:
        description = headers.get("Description", "")
        # nats-py takes the next header line for the description of a status that has none.
        first += f" {status} {description}" if description and "\n" not in description else f" {status}"
        lines = [f"{k}: {v}\r\n" for k, v in headers.items() if k not in ("Status", "Description")]
    else:
        lines = [f"{k}: {v}\r\n" for k, v in headers.items()]
    return f"{first}\r\n{''.join(lines)}\r\n".encode()


def wire_io(nc: Client) -> WireIO[Any]:
    """The implementation for a connection ``jetstream.connect`` made: the fast client is its own,
    any other client gets the plain one."""
    return nc if isinstance(nc, WireIO) else PlainWire(nc)
