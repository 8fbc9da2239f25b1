"""A stream message as it comes off the wire, and what its ack subject and header block say.

The sink's consumer, the batch decoders and ``logmesh tail`` all read messages in this form; the
fast NATS path builds it straight from the wire, the plain path from nats-py's ``Msg``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from logmesh.common.subjects import MSG_ID_HEADER


class WireMsg(NamedTuple):
    subject: bytes
    reply: bytes  # $JS.ACK.... for a stream message
    headers: bytes | None  # the raw block, b"NATS/1.0\r\nName: value\r\n\r\n", or None
    data: bytes


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the ack subject of a JetStream message says about it."""

    stream_seq: int
    delivered: int
    stream_time_ns: int

    @classmethod
    def from_reply(cls, reply: bytes) -> Delivery:
        tokens, base = _ack_tokens(reply)
        return cls(int(tokens[base + 1]), int(tokens[base]), int(tokens[base + 3]))


def delivery_count(reply: bytes) -> int:
    """How many times JetStream has delivered the message, read from its ack subject."""
    tokens, base = _ack_tokens(reply)
    return int(tokens[base])


def _ack_tokens(reply: bytes) -> tuple[list[bytes], int]:
    """The tokens of an ack subject, and where <delivered> is among them:
    $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<dseq>.<ts>.<pending>, or, from servers that add a
    domain and account hash, $JS.ACK.<domain>.<hash>.<stream>.<consumer>.<delivered>..."""
    tokens = reply.split(b".")
    return tokens, 4 if len(tokens) == 9 else 6


def parse_headers(block: bytes | None) -> dict[str, str] | None:
    """``NATS/1.0\r\nName: value\r\n...``, read as nats-py reads it (names and values stripped, a
    repeated name keeps its last value), but for ``Nats-Msg-Id``: JetStream dedups by its first line,
    and the sink must judge the id the window holds (a second one naming the subject's topic would
    hide a first one naming another)."""
    if not block:
        return None
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            key = name.strip().decode("ascii", "replace")
            if key == MSG_ID_HEADER and key in headers:
                continue
            headers[key] = value.strip().decode("utf-8", "replace")
    return headers
