"""The ``fast`` NATS path (see ``natsio``): bulk paths through nats-py for the two hot loops (the
sink's consumer, the acked publisher).

nats-py turns every incoming message into a ``Msg`` (decoding subject and reply, parsing headers),
queues it and awaits a callback: about 20 µs per message here, more than everything else the sink
does. For subscriptions registered with ``subscribe_raw`` this client hands the raw parts to a plain
function instead, parses the wire with a faster parser, and ``publish_many`` writes many messages as
one buffer. Everything else (connect, reconnect, resubscribe, ping, drain) is nats-py's.

All of it hooks into nats-py internals (the parser, ``Client._process_msg``, the pending write
buffer), which is why ``pyproject.toml`` pins nats-py to 2.16.x; ``check_internals`` fails loudly if
they change, and ``LOGMESH_NATS_IO=plain`` runs on nats-py's public API only.
"""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Coroutine, Iterable, Sequence
from typing import Any

import nats.protocol.parser as _nats_parser
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import ProtocolError
from nats.protocol.parser import Parser

from logmesh.common.natsio import RawHandler, WireIO, check_open

log = logging.getLogger("logmesh.nats")

# The protocol's own constants; the parser states are nats-py's (checked below).
_CRLF = b"\r\n"
_CRLF_SIZE = 2
_MAX_CONTROL_LINE_SIZE = 4096  # nats-server's default max_control_line
_AWAITING_CONTROL_LINE = 1
_AWAITING_MSG_PAYLOAD = 2


def check_internals() -> None:
    """Fails, naming each difference, unless nats-py still works the way this module relies on:
    the hooks it overrides or calls, the parser state it shares with nats-py's parser, and the
    names it adds (which nats-py must not have taken). Checked once per process."""
    global _verified
    if _verified:
        return
    problems = _internals_problems()
    if problems:
        raise RuntimeError(
            "nats-py internals changed, the fast NATS path needs nats-py 2.16.x: "
            + "; ".join(problems)
            + " (set LOGMESH_NATS_IO=plain to use nats-py's public API only)"
        )
    _verified = True


_verified = False


def _internals_problems() -> list[str]:
    problems: list[str] = []

    def params(owner: type, name: str) -> list[str] | None:
        fn = getattr(owner, name, None)
        return list(inspect.signature(fn).parameters) if callable(fn) else None

    def expect(owner: type, name: str, wanted: list[str], coroutine: bool) -> None:
        have = params(owner, name)
        if have is None:
            problems.append(f"{owner.__name__}.{name} is gone")
        elif have != wanted:
            problems.append(f"{owner.__name__}.{name} takes {have}, not {wanted}")
        elif coroutine != inspect.iscoroutinefunction(getattr(owner, name)):
            problems.append(f"{owner.__name__}.{name} is {'no longer' if coroutine else 'now'} a coroutine")

    # Overridden (the parser calls it for every message it hands back) and called.
    expect(Client, "_process_msg", ["self", "sid", "subject", "reply", "data", "headers"], True)
    expect(Client, "_send_command", ["self", "cmd", "priority"], True)
    expect(Client, "_flush_pending", ["self", "force_flush"], True)
    expect(Parser, "parse", ["self", "data"], True)
    expect(Parser, "reset", ["self"], False)
    expect(Subscription, "__init__", ["self", "conn", "id", *_SUBSCRIPTION_REST], False)
    states = {"AWAITING_CONTROL_LINE": _AWAITING_CONTROL_LINE, "AWAITING_MSG_PAYLOAD": _AWAITING_MSG_PAYLOAD}
    for name, value in states.items():
        if getattr(_nats_parser, name, None) != value:
            problems.append(f"nats.protocol.parser.{name} is not {value}")
    # The parser is the client's _ps, made once and fed by the read loop.
    try:
        client_source = inspect.getsource(sys.modules[Client.__module__])
        if client_source.count("self._ps: Parser = Parser(self)") != 1 or "self._ps =" in client_source:
            problems.append("Client no longer makes its parser once, as self._ps = Parser(self)")
        if "await self._ps.parse(" not in inspect.getsource(Client._read_loop):
            problems.append("Client._read_loop no longer feeds self._ps.parse")
    except (OSError, TypeError) as exc:
        problems.append(f"nats-py's source cannot be read to check the parser hook ({exc})")
    client = Client()
    missing_stats = {"in_msgs", "in_bytes"} - set(getattr(client, "stats", {}))
    if missing_stats:
        problems.append(f"Client.stats lacks {sorted(missing_stats)}")
    if not isinstance(getattr(client, "_ps", None), Parser):
        problems.append("Client._ps is not a nats.protocol.parser.Parser")
    if not callable(getattr(client, "new_inbox", None)):
        problems.append("Client.new_inbox is gone")
    # Names this module adds must still be its own.
    taken = [f"Client.{n}" for n in _CLIENT_ADDITIONS if hasattr(client, n)]
    taken += [f"Parser.{n}" for n in _PARSER_ADDITIONS if hasattr(Parser, n)]
    if taken:
        problems.append(f"nats-py now has {', '.join(taken)}, which this module adds")
    problems += _parser_handoff_problems()
    return problems


# Subscription(conn, id, ...): the sid of MSG lines is sub._id.
_SUBSCRIPTION_REST = ["subject", "queue", "cb", "future", "max_msgs", "pending_msgs_limit", "pending_bytes_limit"]
_CLIENT_ADDITIONS = ("_raw_handlers", "_deliver_raw", "subscribe_raw", "publish_many", "pub", "hpub", "pub_each")
_PARSER_ADDITIONS = ("_raw_arg", "_keep")


def _parser_handoff_problems() -> list[str]:
    """Either parser may read a message's line and leave its payload to the other (see
    ``_FastParser``). Feeds nats-py's parser a line, then the rest, and checks the state between and
    the call it makes."""

    class Recorder:
        def __init__(self) -> None:
            self.calls: list[tuple[Any, ...]] = []

        async def _process_msg(self, *args: Any) -> None:
            self.calls.append(args)

    recorder = Recorder()
    parser = Parser(recorder)
    problems: list[str] = []
    try:
        _run_now(parser.parse(b"HMSG s.t 7 r.1 12 14\r\nNATS/1.0\r"))
        state = (parser.state, parser.needed, parser.header_needed, dict(parser.msg_arg), bytes(parser.buf))
        if state != (_AWAITING_MSG_PAYLOAD, 14, 12, {"subject": b"s.t", "sid": 7, "reply": b"r.1"}, b"NATS/1.0\r"):
            problems.append(f"nats-py's parser keeps a half-read message as {state}")
        _run_now(parser.parse(b"\n\r\nhi\r\n"))
        if recorder.calls != [(7, b"s.t", b"r.1", b"hi", b"NATS/1.0\r\n\r\n")] or parser.buf:
            problems.append(f"nats-py's parser hands a message on as {recorder.calls}")
        if parser.state != _AWAITING_CONTROL_LINE or parser.header_needed:
            problems.append("nats-py's parser does not reset its state after a message")
    except Exception as exc:
        problems.append(f"nats-py's parser fails on a split HMSG: {type(exc).__name__}: {exc}")
    return problems


def _run_now(step: Coroutine[Any, Any, Any]) -> None:
    """Runs a coroutine that never waits (the parser only awaits the recorder), without a loop."""
    try:
        step.send(None)
    except StopIteration:
        return
    step.close()
    raise RuntimeError("the parser waited for something")


async def _unused(msg: Msg) -> None:
    """nats-py requires a coroutine callback; raw subscriptions never reach it."""


class _FastParser(Parser):
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
        if self._raw_arg is not None and len(self.buf) + len(data) < self.needed + _CRLF_SIZE:
            self.buf.extend(data)  # a large message still arriving: no copy until it is whole
            return
        wire = bytes(self.buf) + data if self.buf else bytes(data)
        self.buf.clear()
        nc = self.nc
        handlers = nc._raw_handlers
        pos = 0
        delivered = delivered_bytes = 0
        try:
            if self.state == _AWAITING_MSG_PAYLOAD:
                # The rest of a message whose line an earlier read brought.
                if self._raw_arg is None:  # nats-py's parser read this message's line
                    pos = self._keep(wire, 0)
                    await super().parse()
                    return
                end = self.needed
                if len(wire) < end + _CRLF_SIZE:
                    return
                subject, sid, reply = self._raw_arg
                split = self.header_needed
                self._raw_arg = None
                self.header_needed = 0
                self.state = _AWAITING_CONTROL_LINE
                pos = end + _CRLF_SIZE
                await nc._process_msg(sid, subject, reply, wire[split:end], wire[:split])
            # One message per turn, its state in locals: the parser's attributes are only written when
            # a message is cut off at the end of the read.
            while True:
                end = wire.find(_CRLF, pos)
                if end < 0:
                    if len(wire) - pos > _MAX_CONTROL_LINE_SIZE:
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
                start = end + _CRLF_SIZE
                stop = start + int(parts[-1])
                if len(wire) < stop + _CRLF_SIZE:
                    self._raw_arg = (parts[1], int(parts[2]), reply)
                    self.header_needed = header_size
                    self.needed = stop - start
                    self.state = _AWAITING_MSG_PAYLOAD
                    pos = start
                    return
                split = start + header_size
                headers = wire[start:split] if header_size else None
                payload = wire[split:stop]
                pos = stop + _CRLF_SIZE
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


class FastClient(Client, WireIO[bytes]):
    """A nats-py client whose raw subscriptions skip ``Msg``, and whose builders make protocol
    commands that ``publish_many`` writes as one buffer."""

    pub = staticmethod(pub)
    hpub = staticmethod(hpub)
    pub_each = staticmethod(pub_each)

    def __init__(self) -> None:
        check_internals()
        super().__init__()
        self._raw_handlers: dict[int, RawHandler] = {}
        self._ps = _FastParser(self)

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
        """The handler is called synchronously from the read loop."""
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

    async def publish_many(self, messages: Iterable[bytes]) -> None:
        """Writes the commands as one buffer."""
        check_open(self)
        buffer = b"".join(messages)
        if buffer:
            await self._send_command(buffer)
            await self._flush_pending()
