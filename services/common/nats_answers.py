"""Answers of any size over NATS request/reply.

An answer that fits in one message (``max_payload``, 1 MB by default) is one plain reply, so ``nats
req`` shows it whole. A larger one (the stats of very many topics, one very large event) is cut into
parts of at most ``max_payload``, published in order to the requester's inbox, each with a
``Logmesh-Part: <i>/<n>`` header; NATS keeps one connection's messages in order, and the asker joins
them. Errors are one reply with the ``nats.micro`` error headers.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.micro.request import Request

PART_HEADER = "Logmesh-Part"
ERROR_HEADER = "Nats-Service-Error"
ERROR_CODE_HEADER = "Nats-Service-Error-Code"
# Room for the headers and the protocol line within max_payload.
_HEADROOM = 1024


class Answer(NamedTuple):
    data: bytes
    headers: dict[str, str]


class ErrorAnswer(Exception):
    """The responder answered with an error (nats.micro's error headers)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


async def respond(request: Request, nc: Client, answer: bytes, headers: dict[str, str] | None = None) -> None:
    size = max(nc.max_payload - _HEADROOM, _HEADROOM)
    if len(answer) <= size:
        await request.respond(answer, headers=headers)
        return
    count = -(-len(answer) // size)
    view = memoryview(answer)
    for i in range(count):
        part = bytes(view[i * size : (i + 1) * size])
        await request.respond(part, headers={**(headers or {}), PART_HEADER: f"{i + 1}/{count}"})


async def ask(nc: Client, subject: str, query: bytes, timeout: float) -> Answer:
    """The whole answer, with the headers of its first message. Raises NoRespondersError, nats'
    TimeoutError (the deadline covers every part) or ErrorAnswer."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    inbox = nc.new_inbox()
    # No byte limit on what waits in the subscription: the parts of one answer are taken as they come.
    sub = await nc.subscribe(inbox, pending_bytes_limit=0)
    try:
        await nc.publish(subject, query, reply=inbox)
        first = await sub.next_msg(timeout)
        headers = first.headers or {}
        if headers.get("Status") == "503":
            raise NoRespondersError
        if headers.get(ERROR_CODE_HEADER):
            raise ErrorAnswer(headers[ERROR_CODE_HEADER], headers.get(ERROR_HEADER, ""))
        if PART_HEADER not in headers:
            return Answer(first.data, headers)
        count = _count(headers[PART_HEADER], 1)
        if count < 2:
            raise ErrorAnswer("502", f"the answer's first part is marked {headers[PART_HEADER]!r}")
        parts = [first.data]
        for i in range(2, count + 1):
            msg = await sub.next_msg(max(deadline - loop.time(), 0.001))
            if _count((msg.headers or {}).get(PART_HEADER, ""), i) != count:
                raise ErrorAnswer("502", f"part {i} of {count} of the answer did not arrive in order")
            parts.append(msg.data)
        return Answer(b"".join(parts), headers)
    finally:
        await sub.unsubscribe()


def _count(header: str, expected: int) -> int:
    """n from ``<expected>/<n>``; 0 when the header says anything else."""
    index, _, count = header.partition("/")
    if index != str(expected) or not count.isascii() or not count.isdigit():
        return 0
    return int(count)
