"""The bulk NATS paths: the wire parser against any split of its input, and raw and ordinary
subscriptions side by side on a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from logmesh.common.fastnats import FastClient, hpub, pub, pub_each
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
