"""A batch of stream messages decoded, apart from storing it: what the store writes in one transaction.

Two decoders give the same ``DecodedBatch`` for any batch (``tests/test_fastpath.py`` holds them to it):
the SQL batch decoder (``sql_decoder.py``, one DuckDB query for the batch, the reference decoder for
what it leaves) and the reference decoder for every message. ``refuse`` keeps every new message of a
batch as a dead letter instead, for a message the sink must set aside without decoding it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pyarrow as pa
import pyarrow.compute as pc

from logmesh.common import partitions
from logmesh.common.jetstream import LOG_SUBJECT_PREFIX
from logmesh.common.reference_decoder import Rejected, Row, decode_message, decode_receipt
from logmesh.common.wire import Delivery, WireMsg, parse_headers
from logmesh.sink.arrow import rows_table
from logmesh.sink.seqranges import SeqRanges


@dataclass(frozen=True, slots=True)
class StoredSubjects:
    """How one partition's messages are stored: events under ``prefix`` + topic (``logs.`` with one
    partition, ``<k>.logs.`` with several), receipts on ``receipt``."""

    prefix: str = LOG_SUBJECT_PREFIX
    receipt: str = partitions.receipt_subject(0, 1)

    @classmethod
    def of(cls, partition: int, count: int) -> StoredSubjects:
        return cls(partitions.stored_subject_prefix(partition, count), partitions.receipt_subject(partition, count))

    def public(self, stored: str) -> str:
        """The subject a publisher used (``logs.<topic>``) for a stored one; any other unchanged."""
        if self.prefix == LOG_SUBJECT_PREFIX or not stored.startswith(self.prefix):
            return stored
        return LOG_SUBJECT_PREFIX + stored[len(self.prefix) :]


SINGLE = StoredSubjects()


@dataclass(slots=True)
class DeadLetter:
    seq: int
    subject: str
    reason: str
    headers: dict[str, str] | None
    body: bytes


@dataclass(frozen=True)
class DecodedBatch:
    # The storable events (``arrow.CANDIDATE_SCHEMA``), before the store drops keys it holds already.
    candidates: pa.Table
    dead_letters: dict[int, DeadLetter]  # by position in the batch
    window_duplicates: Counter[str]  # reported by the batch's receipts, by topic
    first_seqs: list[int]  # stream sequences delivered for the first time: committed with the batch
    redelivered: int  # messages already committed, or twice in the batch: they change nothing


class BatchDecoder(Protocol):
    def decode(self, msgs: Sequence[WireMsg], committed: SeqRanges, stream_epoch: int) -> DecodedBatch:
        """Decodes the first deliveries among ``msgs`` (those not in ``committed``)."""
        ...

    def close(self) -> None: ...


@dataclass(slots=True)
class Decoded:
    """What the reference decoder made of some messages of a batch."""

    rows: list[Row] = field(default_factory=list)
    dead_letters: dict[int, DeadLetter] = field(default_factory=dict)
    window_duplicates: Counter[str] = field(default_factory=Counter)


def first_deliveries(seqs: pa.Array, committed: SeqRanges) -> pa.BooleanArray:
    """True for the messages whose sequence is neither committed already nor seen earlier in the
    batch (JetStream redelivered it while the first copy was still buffered)."""
    new = pa.array([True] * len(seqs))
    if len(seqs) == 0:
        return new
    bounds = pc.min_max(seqs)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    for start, end in committed.ranges():
        if end >= low and start <= high:
            new = pc.and_(new, pc.invert(pc.and_(pc.greater_equal(seqs, start), pc.less_equal(seqs, end))))
    if pc.count_distinct(seqs).as_py() != len(seqs):
        repeated: set[int] = set()
        first = []
        for s in seqs.to_pylist():
            first.append(s not in repeated)
            repeated.add(s)
        new = pc.and_(new, pa.array(first))
    return new


def decode_with_reference(
    msgs: Sequence[WireMsg], positions: Iterable[int], stream_epoch: int, subjects: StoredSubjects = SINGLE
) -> Decoded:
    """Runs the reference decoder on the messages at ``positions`` (first deliveries only). It reads
    the public subject: dead letters show it too."""
    out = Decoded()
    for i in positions:
        raw_subject, reply, block, body = msgs[i]
        stored = raw_subject.decode("utf-8", "replace")
        subject = subjects.public(stored)
        headers = parse_headers(block)
        delivery = Delivery.from_reply(reply)
        try:
            if stored == subjects.receipt:
                out.window_duplicates.update(decode_receipt(body))
            else:
                out.rows.append(decode_message(subject, headers, body, delivery, stream_epoch))
        except Rejected as exc:
            out.dead_letters[i] = DeadLetter(delivery.stream_seq, subject, exc.reason, headers, body)
        except Exception as exc:
            # A message must never stop the stream: whatever it is, it is kept as a dead letter.
            reason = f"could not be decoded: {type(exc).__name__}: {exc}"
            out.dead_letters[i] = DeadLetter(delivery.stream_seq, subject, reason, headers, body)
    return out


class ReferenceDecoder:
    """The reference decoder for every message: slower, and the standard the SQL decoder is held to."""

    def __init__(self, subjects: StoredSubjects = SINGLE) -> None:
        self._subjects = subjects

    def decode(self, msgs: Sequence[WireMsg], committed: SeqRanges, stream_epoch: int) -> DecodedBatch:
        seqs, new = _first_deliveries(msgs, committed)
        decoded = decode_with_reference(msgs, new, stream_epoch, self._subjects)
        return DecodedBatch(
            rows_table(decoded.rows),
            decoded.dead_letters,
            decoded.window_duplicates,
            [seqs[i] for i in new],
            len(msgs) - len(new),
        )

    def close(self) -> None:
        pass


def refuse(
    msgs: Sequence[WireMsg], committed: SeqRanges, reason: str, subjects: StoredSubjects = SINGLE
) -> DecodedBatch:
    """Every first delivery of ``msgs`` kept as a dead letter with ``reason``, undecoded: for a message
    that stopped the sink while it was being decoded, or that the store refuses."""
    seqs, new = _first_deliveries(msgs, committed)
    dead = {}
    for i in new:
        raw_subject, _, block, body = msgs[i]
        subject = subjects.public(raw_subject.decode("utf-8", "replace"))
        dead[i] = DeadLetter(seqs[i], subject, reason, parse_headers(block), body)
    return DecodedBatch(rows_table([]), dead, Counter(), [seqs[i] for i in new], len(msgs) - len(new))


def _first_deliveries(msgs: Sequence[WireMsg], committed: SeqRanges) -> tuple[list[int], list[int]]:
    """The batch's stream sequences, and the positions of its first deliveries."""
    seqs = [Delivery.from_reply(m[1]).stream_seq for m in msgs]
    new = first_deliveries(pa.array(seqs, pa.uint64()), committed).to_pylist()
    return seqs, [i for i, first in enumerate(new) if first]
