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
from collections.abc import Callable, Iterable

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
    buffer (a memmove of the rest, every time). This one walks the buffer with an offset, trims it
    once per read, and calls raw handlers directly. Lines other than MSG and HMSG (PING, PONG, INFO,
    -ERR) are rare and go to nats-py's parser."""

    nc: FastClient
    _raw_arg: tuple[bytes, int, bytes] | None = None

    def reset(self) -> None:
        super().reset()
        self._raw_arg = None

    async def parse(self, data: bytes = b"") -> None:
        buf = self.buf
        buf.extend(data)
        handlers = self.nc._raw_handlers
        pos = 0
        try:
            while True:
                if self.state == AWAITING_MSG_PAYLOAD:
                    if self._raw_arg is None:  # nats-py's parser read this message's line
                        break
                    end = pos + self.needed
                    if len(buf) < end + CRLF_SIZE:
                        return
                    split = pos + self.header_needed
                    headers = bytes(buf[pos:split]) if split > pos else None
                    payload = bytes(buf[split:end])
                    pos = end + CRLF_SIZE
                    self.header_needed = 0
                    self.state = AWAITING_CONTROL_LINE
                    subject, sid, reply = self._raw_arg
                    self._raw_arg = None
                    handler = handlers.get(sid)
                    if handler is None:
                        await self.nc._process_msg(sid, subject, reply, payload, headers or b"")
                    else:
                        self.nc._deliver_raw(handler, subject, reply, headers, payload)
                    continue
                end = buf.find(_CRLF_, pos)
                if end < 0:
                    if len(buf) - pos > MAX_CONTROL_LINE_SIZE:
                        raise ProtocolError("nats: control line too long")
                    return
                parts = bytes(buf[pos:end]).split()
                count = len(parts)
                if count and ((parts[0] == b"HMSG" and 5 <= count <= 6) or (parts[0] == b"MSG" and 4 <= count <= 5)):
                    # MSG <subject> <sid> [reply] <size>  |  HMSG <subject> <sid> [reply] <header size> <size>
                    if parts[0] == b"HMSG":
                        reply = parts[3] if count == 6 else b""
                        self.header_needed = int(parts[-2])
                    else:
                        reply = parts[3] if count == 5 else b""
                    self._raw_arg = (parts[1], int(parts[2]), reply)
                    self.needed = int(parts[-1])
                    self.state = AWAITING_MSG_PAYLOAD
                    pos = end + CRLF_SIZE
                    continue
                break
            del buf[:pos]
            pos = 0
            self._raw_arg = None
            await super().parse()
        finally:
            if pos:
                del buf[:pos]


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
        # Reached from nats-py's own parser after a PING or INFO in the same read, and for
        # subscriptions that are not raw.
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


def hpub(subject: bytes, header_block: bytes, payload: bytes, reply: bytes = b"") -> bytes:
    """One ``HPUB`` command; ``header_block`` is ``NATS/1.0\\r\\nName: value\\r\\n...\\r\\n``."""
    total = len(header_block) + len(payload)
    if reply:
        return b"HPUB %s %s %d %d\r\n%s%s\r\n" % (subject, reply, len(header_block), total, header_block, payload)
    return b"HPUB %s %d %d\r\n%s%s\r\n" % (subject, len(header_block), total, header_block, payload)


def header_block(headers: dict[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()
