"""Bulk paths through nats-py for the two hot loops (the sink's consumer, the acked publisher).

nats-py turns every incoming message into a ``Msg`` (decoding subject and reply, parsing headers),
queues it and awaits a callback: about 20 µs per message here, more than everything else the sink
does. For subscriptions registered with ``subscribe_raw`` this client hands the raw parts to a plain
function instead, and ``publish_many`` writes many messages as one buffer. Everything else (connect,
reconnect, resubscribe, ping, drain) is nats-py's.

Both hook into nats-py internals (``Client._process_msg`` and the pending write buffer), which is why
``pyproject.toml`` pins nats-py to 2.16.x; ``check_internals`` fails loudly if they change.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ConnectionClosedError, OutboundBufferLimitError

# subject, reply, raw header block (or None), payload: all bytes straight off the wire.
RawHandler = Callable[[bytes, bytes, bytes | None, bytes], None]

_EXPECTED = ["self", "sid", "subject", "reply", "data", "headers"]


def check_internals() -> None:
    params = list(inspect.signature(Client._process_msg).parameters)
    if params != _EXPECTED or not hasattr(Client, "_send_command") or not hasattr(Client, "_flush_pending"):
        raise RuntimeError("nats-py internals changed: logmesh's bulk paths need nats-py 2.16.x")


async def _unused(msg: Msg) -> None:
    """nats-py requires a coroutine callback; raw subscriptions never reach it."""


class FastClient(Client):
    def __init__(self) -> None:
        check_internals()
        super().__init__()
        self._raw_handlers: dict[int, RawHandler] = {}

    async def subscribe_raw(self, subject: str, handler: RawHandler) -> Subscription:
        """A subscription whose messages go to ``handler(subject, reply, headers, payload)``, called
        synchronously from the read loop: it must be quick and must not block."""
        sub = await self.subscribe(subject, cb=_unused, pending_bytes_limit=0)
        self._raw_handlers[sub._id] = handler
        return sub

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes) -> None:
        handler = self._raw_handlers.get(sid)
        if handler is None:
            await super()._process_msg(sid, subject, reply, data, headers)
            return
        self.stats["in_msgs"] += 1
        self.stats["in_bytes"] += len(data)
        handler(subject, reply, headers or None, data)

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
