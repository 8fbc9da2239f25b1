"""The hot NATS paths: the fast wire parser against any split of its input and the nats-py
internals it relies on; raw subscriptions and bulk publishes on both paths, on a real nats-server."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import nats.protocol.parser as nats_parser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.protocol.parser import Parser

from logmesh.common import fastnats
from logmesh.common.fastnats import FastClient, check_internals, hpub, pub, pub_each
from logmesh.common.jetstream import close, connect
from logmesh.common.natsio import NatsIo, wire_io
from tests.harness import NatsServer

RAW_SID = 7

Delivered = tuple[bytes, bytes, bytes | None, bytes]

message = st.tuples(
    st.sampled_from([b"logs.a", b"logs.b.c", b"_INBOX.x.1"]),
    st.sampled_from([b"", b"$JS.ACK.LOGS.sink.1.2.3.4.0"]),
    st.one_of(st.none(), st.sampled_from([b"NATS/1.0\r\nNats-Msg-Id: a:1\r\n\r\n", b"NATS/1.0 408\r\n\r\n"])),
    st.binary(max_size=300),
)


def frame(subject: bytes, reply: bytes, headers: bytes | None, payload: bytes) -> bytes:
    middle = b" " + reply if reply else b""
    if headers is None:
        return b"MSG %s %d%s %d\r\n%s\r\n" % (subject, RAW_SID, middle, len(payload), payload)
    size = len(headers) + len(payload)
    return b"HMSG %s %d%s %d %d\r\n%s%s\r\n" % (subject, RAW_SID, middle, len(headers), size, headers, payload)


async def parse_in_pieces(wire: bytes, cuts: list[int]) -> list[Delivered]:
    nc = FastClient()
    got: list[Delivered] = []
    nc._raw_handlers[RAW_SID] = lambda s, r, h, p: got.append((s, r, h, p))
    start = 0
    for cut in [*sorted(cuts), len(wire)]:
        await nc._ps.parse(wire[start:cut])
        start = cut
    return got


@settings(max_examples=200, deadline=None)
@given(
    messages=st.lists(message, max_size=20),
    ok_lines=st.sets(st.integers(0, 20)),
    cut_fractions=st.lists(st.floats(0, 1), max_size=12),
)
def test_every_message_arrives_whole_however_the_reads_split_the_wire(
    messages: list[Delivered], ok_lines: set[int], cut_fractions: list[float]
) -> None:
    # "+OK" lines hand the rest of the read to nats-py's own parser, which must pick up where this
    # one stopped, and hand back, even in the middle of a message.
    wire = b"".join((b"+OK\r\n" if i in ok_lines else b"") + frame(*m) for i, m in enumerate(messages))
    cuts = [int(f * len(wire)) for f in cut_fractions]
    assert asyncio.run(parse_in_pieces(wire, cuts)) == messages


def test_raw_and_ordinary_subscriptions_share_a_connection(nats_server: NatsServer) -> None:
    async def run() -> tuple[list[Delivered], list[Any]]:
        nc = FastClient()
        await nc.connect(nats_server.url)
        raw: list[Delivered] = []
        ordinary: list[Any] = []
        done = asyncio.Event()

        async def on_ordinary(msg: Any) -> None:
            ordinary.append((msg.subject, msg.data))
            if len(ordinary) == 500:
                done.set()

        await nc.subscribe_raw("raw.>", lambda s, r, h, p: raw.append((s, r, h, p)))
        await nc.subscribe("plain.>", cb=on_ordinary)
        header = b"NATS/1.0\r\nK: v\r\n\r\n"
        big = b"x" * 200_000  # spans many reads
        commands = []
        for i in range(500):
            commands.append(hpub(b"raw.%d" % i, header, big if i % 100 == 0 else b"%d" % i))
            commands.append(pub(b"plain.%d" % i, b"%d" % i))
        await nc.publish_many(commands)
        await asyncio.wait_for(done.wait(), 10)
        await nc.flush()
        await nc.close()
        return raw, ordinary

    raw, ordinary = asyncio.run(run())
    expected = [
        (b"raw.%d" % i, b"", b"NATS/1.0\r\nK: v\r\n\r\n", b"x" * 200_000 if i % 100 == 0 else b"%d" % i)
        for i in range(500)
    ]
    assert raw == expected
    assert ordinary == [(f"plain.{i}", b"%d" % i) for i in range(500)]


def test_pub_each_writes_one_pub_per_subject() -> None:
    subjects = [b"$JS.ACK.LOGS.sink.1.2.3.4.0", b"$JS.ACK.LOGS.sink.1.3.4.4.0", b"x"]
    assert pub_each(subjects, b"+ACK") == b"".join(pub(s, b"+ACK") for s in subjects)
    assert pub_each([], b"+ACK") == b""


def test_raw_subscriptions_see_the_wire_as_it_was_published(nats_server: NatsServer, nats_io: NatsIo) -> None:
    """The plain path rebuilds each header block from nats-py's parsed headers: it must come out as the
    publisher wrote it (the sink's SQL decoder compares whole blocks), statuses included."""
    header = b"NATS/1.0\r\nNats-Msg-Id: orders:e-1\r\nLogmesh-Source: edge 7\r\n\r\n"
    big = b"x" * 200_000  # spans many reads

    async def run() -> list[Delivered]:
        nc = await connect(nats_server.url, "test", io=nats_io)
        io = wire_io(nc)
        got: list[Delivered] = []
        done = asyncio.Event()

        def on_message(s: bytes, r: bytes, h: bytes | None, p: bytes) -> None:
            got.append((s, r, h, p))
            if len(got) == 7:
                done.set()

        await io.subscribe_raw("raw.>", on_message)
        await io.publish_many(
            [
                io.hpub(b"raw.1", header, b"{}", b"reply.1"),
                io.pub(b"raw.2", big),
                io.pub_each([b"raw.3", b"raw.4"], b"+ACK"),
                io.hpub(b"raw.5", b"NATS/1.0\r\nStatus: 7\r\n\r\n", b"", b"reply.5"),
                # Nothing listens on nobody.here: the server answers the reply subject with a status.
                io.pub(b"nobody.here", b"?", b"raw.6"),
                io.hpub(b"nobody.here", header, b"?", b"raw.7"),
            ]
        )
        await asyncio.wait_for(done.wait(), 10)
        await close(nc)
        return got

    got = asyncio.run(run())
    no_responders = b"NATS/1.0 503\r\nNats-Subject: nobody.here\r\n\r\n"
    assert sorted(got) == [
        (b"raw.1", b"reply.1", header, b"{}"),
        (b"raw.2", b"", None, big),
        (b"raw.3", b"", None, b"+ACK"),
        (b"raw.4", b"", None, b"+ACK"),
        (b"raw.5", b"reply.5", b"NATS/1.0\r\nStatus: 7\r\n\r\n", b""),
        (b"raw.6", b"", no_responders, b""),
        (b"raw.7", b"", no_responders, b""),
    ]


def test_publish_many_refuses_while_the_connection_is_closed(nats_server: NatsServer, nats_io: NatsIo) -> None:
    async def run() -> None:
        nc = await connect(nats_server.url, "test", io=nats_io)
        io = wire_io(nc)
        await nc.close()
        with pytest.raises(Exception, match="nats: connection closed"):
            await io.publish_many([io.pub(b"a", b"b")])

    asyncio.run(run())


def test_the_plain_path_does_not_load_the_fast_one(nats_server: NatsServer) -> None:
    """So that it keeps working when an upgrade of nats-py breaks the internals the fast path needs."""
    script = (
        "import asyncio, sys\n"
        "from logmesh.common.jetstream import connect, close\n"
        "from logmesh.common.publisher import AckedPublisher\n"
        "import logmesh.ingest.app, logmesh.query.app, logmesh.sink.service, logmesh.cli.workload\n"
        "async def main():\n"
        f"    nc = await connect({nats_server.url!r}, 'test', io='plain')\n"
        "    await AckedPublisher(nc).start()\n"
        "    await close(nc)\n"
        "asyncio.run(main())\n"
        "assert 'logmesh.common.fastnats' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)


def test_the_internals_the_fast_path_relies_on_are_there(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastnats, "_verified", False)
    check_internals()
    FastClient()


async def _other_process_msg(self: Client, sid: int, subject: bytes, reply: bytes, payload: bytes) -> None:
    """A _process_msg whose parameters changed."""


async def _read_elsewhere(self: Client) -> None:
    """A read loop that feeds another parser."""


async def _split_parse(self: Parser, data: bytes = b"") -> None:
    """A parser that forgot how to keep a half-read message."""
    self.buf.clear()


@pytest.mark.parametrize(
    ("owner", "name", "replacement", "named"),
    [
        (Client, "_process_msg", _other_process_msg, "Client._process_msg takes"),
        (Client, "_flush_pending", None, "Client._flush_pending is gone"),
        (Client, "_send_command", None, "Client._send_command is gone"),
        (Client, "publish_many", lambda self: None, "nats-py now has Client.publish_many"),
        (Parser, "parse", _split_parse, "nats-py's parser keeps a half-read message as"),
        (Client, "_read_loop", _read_elsewhere, "Client._read_loop no longer feeds self._ps.parse"),
        (nats_parser, "AWAITING_MSG_PAYLOAD", 3, "AWAITING_MSG_PAYLOAD is not 2"),
    ],
)
def test_a_changed_internal_fails_loudly_and_names_what_changed(
    monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, replacement: Any, named: str
) -> None:
    # Stands for an upgrade of nats-py that changed what the fast path hooks into.
    monkeypatch.setattr(fastnats, "_verified", False)
    if replacement is None:
        monkeypatch.delattr(owner, name)
    else:
        monkeypatch.setattr(owner, name, replacement, raising=False)
    with pytest.raises(RuntimeError, match="LOGMESH_NATS_IO=plain") as failure:
        FastClient()
    assert named in str(failure.value)
