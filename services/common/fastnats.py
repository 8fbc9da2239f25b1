"""Bulk paths through nats-py for the two hot loops (the sink's consumer, the acked publisher).

nats-py turns every incoming message into a ``Msg`` (decoding subject and reply, parsing headers),
queues it and awaits a callback: about 20 µs per message here, more than everything else the sink
does. For subscriptions registered with ``subscribe_raw`` this client hands the raw parts to a plain
function instead, parses the wire with a faster parser, and ``publish_many`` writes many messages as
one buffer. Everything else (connect, reconnect, resubscribe, ping, drain) is nats-py's.

All of it hooks into nats-py internals (the parser, ``Client._process_msg``, the pending write
buffer), which is why ``pyproject.toml`` pins nats-py to 2.16.x; ``check_internals`` fails loudly if
they change.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, OutboundBufferLimitError, ProtocolError
from nats.protocol.parser import (
    _CRLF_,
    AWAITING_CONTROL_LINE,
    AWAITING_MSG_PAYLOAD,
    CRLF_SIZE,
    MAX_CONTROL_LINE_SIZE,
    Parser,
)

log = logging.getLogger("logmesh.nats")

# subject, reply, raw header block (or None), payload: all bytes straight off the wire.
RawHandler = Callable[[bytes, bytes, bytes | None, bytes], None]

_EXPECTED = ["self", "sid", "subject", "reply", "data", "headers"]


def check_internals() -> None:
    params = list(inspect.signature(Client._process_msg).parameters)
    parser_fields = ("buf", "state", "needed", "header_needed", "msg_arg")
    if (
        params != _EXPECTED
        or not hasattr(Client, "_send_command")
        or not hasattr(Client, "_flush_pending")
        or not all(hasattr(Parser(None), f) for f in parser_fields)
    ):
        raise RuntimeError("nats-py internals changed: logmesh's bulk paths need nats-py 2.16.x")


async def _unused(msg: Msg) -> None:
    """nats-py requires a coroutine callback; raw subscriptions never reach it."""


class FastParser(Parser):
    """nats-py's parser matches a regex per message and deletes each message from the front of its
    buffer (a memmove of the rest, every time). This one walks each read with an offset, keeps only
    the unparsed rest, and calls raw handlers directly. Lines other than MSG and HMSG (PING, PONG,
    INFO, -ERR) are rare and go to nats-py's parser."""

    nc: FastClient
    _raw_arg: tuple[bytes, int, bytes] | None = None

    def reset(self) -> None:
        super().reset()
        self._raw_arg = None

    async def parse(self, data: bytes = b"") -> None:
        # Parsed from an immutable copy: slicing bytes copies once, slicing the bytearray and making
        # bytes of the slice copied twice, for every line, header block and payload.
        if self._raw_arg is not None and len(self.buf) + len(data) < self.needed + CRLF_SIZE:
            self.buf.extend(data)  # a large message still arriving: no copy until it is whole
            return
        wire = bytes(self.buf) + data if self.buf else bytes(data)
        self.buf.clear()
        nc = self.nc
        handlers = nc._raw_handlers
        pos = 0
        delivered = delivered_bytes = 0
        try:
            if self.state == AWAITING_MSG_PAYLOAD:
                # The rest of a message whose line an earlier read brought.
                if self._raw_arg is None:  # nats-py's parser read this message's line
                    pos = self._keep(wire, 0)
                    await super().parse()
                    return
                end = self.needed
                if len(wire) < end + CRLF_SIZE:
                    return
                subject, sid, reply = self._raw_arg
                split = self.header_needed
                self._raw_arg = None
                self.header_needed = 0
                self.state = AWAITING_CONTROL_LINE
                pos = end + CRLF_SIZE
                await nc._process_msg(sid, subject, reply, wire[split:end], wire[:split])
            # One message per turn, its state in locals: the parser's attributes are only written when
            # a message is cut off at the end of the read.
            while True:
                end = wire.find(_CRLF_, pos)
                if end < 0:
                    if len(wire) - pos > MAX_CONTROL_LINE_SIZE:
                        raise ProtocolError("nats: control line too long")
                    return
                parts = wire[pos:end].split()
                count = len(parts)
                # MSG <subject> <sid> [reply] <size>  |  HMSG <subject> <sid> [reply] <header size> <size>
                if count and parts[0] == b"HMSG" and 5 <= count <= 6:
                    reply = parts[3] if count == 6 else b""
                    header_size = int(parts[-2])
                elif count and parts[0] == b"MSG" and 4 <= count <= 5:
                    reply = parts[3] if count == 5 else b""
                    header_size = 0
                else:  # PING, PONG, INFO, +OK, -ERR
                    pos = self._keep(wire, pos)
                    await super().parse()
                    return
                start = end + CRLF_SIZE
                stop = start + int(parts[-1])
                if len(wire) < stop + CRLF_SIZE:
                    self._raw_arg = (parts[1], int(parts[2]), reply)
                    self.header_needed = header_size
                    self.needed = stop - start
                    self.state = AWAITING_MSG_PAYLOAD
                    pos = start
                    return
                split = start + header_size
                headers = wire[start:split] if header_size else None
                payload = wire[split:stop]
                pos = stop + CRLF_SIZE
                handler = handlers.get(int(parts[2]))
                if handler is None:
                    await nc._process_msg(int(parts[2]), parts[1], reply, payload, headers or b"")
                    continue
                delivered += 1
                delivered_bytes += len(payload)
                try:
                    handler(parts[1], reply, headers, payload)
                except Exception:
                    # Raising here would make nats-py drop the connection; the message is redelivered.
                    log.exception("raw message handler failed")
        finally:
            # What is not parsed yet waits for the next read.
            self.buf.extend(wire[pos:] if pos else wire)
            if delivered:
                nc.stats["in_msgs"] += delivered
                nc.stats["in_bytes"] += delivered_bytes

    def _keep(self, wire: bytes, pos: int) -> int:
        """Hands the rest of the read to ``buf``, for nats-py's own parser; it leaves there what it
        cannot parse yet. Returns the end of the read: nothing is left for the caller to keep."""
        self.buf.extend(wire[pos:])
        return len(wire)


class FastClient(Client):
    def __init__(self) -> None:
        check_internals()
        super().__init__()
        self._raw_handlers: dict[int, RawHandler] = {}
        self._ps = FastParser(self)

    def _deliver_raw(
        self, handler: RawHandler, subject: bytes, reply: bytes, headers: bytes | None, payload: bytes
    ) -> None:
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(payload)
        try:
            handler(subject, reply, headers, payload)
        except Exception:
            # Raising here would make nats-py drop the connection; the message is redelivered instead.
            log.exception("raw message handler failed")

    async def subscribe_raw(self, subject: str, handler: RawHandler) -> Subscription:
        """A subscription whose messages go to ``handler(subject, reply, headers, payload)``, called
        synchronously from the read loop: it must be quick and must not block."""
        sub = await self.subscribe(subject, cb=_unused, pending_bytes_limit=0)
        self._raw_handlers[sub._id] = handler
        return sub

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        # Reached from nats-py's own parser after a PING or INFO in the same read, for subscriptions
        # that are not raw, and for a message whose payload arrived in a later read than its line.
        handler = self._raw_handlers.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
        else:
            self._deliver_raw(handler, subject, reply, headers or None, data)

    async def publish_many(self, commands: Iterable[bytes]) -> None:
        """Writes pre-formatted protocol commands (see ``pub`` and ``hpub``) as one buffer. Unlike
        ``publish`` it does not buffer while reconnecting: it raises, and the caller retries."""
        if self.is_closed:
            raise ConnectionClosedError
        if not self.is_connected:
            raise OutboundBufferLimitError
        buffer = b"".join(commands)
        if buffer:
            await self._send_command(buffer)
            await self._flush_pending()


def pub(subject: bytes, payload: bytes, reply: bytes = b"") -> bytes:
    """One ``PUB`` command; subjects must be valid (they are not checked here)."""
    if reply:
        return b"PUB %s %s %d\r\n%s\r\n" % (subject, reply, len(payload), payload)
    return b"PUB %s %d\r\n%s\r\n" % (subject, len(payload), payload)


def pub_each(subjects: Sequence[bytes], payload: bytes) -> bytes:
    """One ``PUB`` per subject, all with the same payload (acks), as one buffer built by one join."""
    if not subjects:
        return b""
    tail = b" %d\r\n%s\r\n" % (len(payload), payload)
    return b"PUB " + (tail + b"PUB ").join(subjects) + tail


def hpub(subject: bytes, header_block: bytes, payload: bytes, reply: bytes = b"") -> bytes:
    """One ``HPUB`` command; ``header_block`` is ``NATS/1.0\\r\\nName: value\\r\\n...\\r\\n``."""
    total = len(header_block) + len(payload)
    if reply:
        return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject, reply, len(header_block), total, header_block, payload)
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (subject, len(header_block), total, header_block, payload)


def header_block(headers: dict[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()
