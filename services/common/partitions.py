"""The partition rule, written once: which partition a topic belongs to, and every name that follows.

The stream keeps the public subjects (``logs.<topic>``); with P > 1 partitions its subject transform
stores ``logs.<topic>`` as ``<k>.logs.<topic>``, k being nats-server's ``{{partition(P)}}``: FNV-1a
(32 bit) of the whole subject, modulo P. :func:`partition_of` computes the same number here, so ingest
can address a receipt to the partition that owns its events and the query service can route a lookup.
Both copies of one identity share the topic, hence the partition, hence the sink: dedup stays local.

P is fixed when the stream is created and read back from the stream's transform
(:func:`partitions_of`): changing it on a live stream would move topics between files at once, so a
stream of another P is refused (:class:`PartitionsMismatch`), never updated.

P = 1 is the single-node layout as it always was: no transform, the consumer named as configured, the
receipts on ``logmesh.receipts``, the queries on ``logmesh.query.<endpoint>``, ``logmesh.duckdb``.
"""

from __future__ import annotations

import re
from pathlib import Path

from nats.js.api import StreamConfig, SubjectTransform

from logmesh.common.subjects import LOG_SUBJECT_PREFIX, LOG_SUBJECTS, QUERY_SUBJECT_PREFIX, RECEIPT_SUBJECT

MAX_PARTITIONS = 64
SINGLE_FILE = "logmesh.duckdb"

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_TRANSFORM_DEST = re.compile(r"\{\{\s*partition\((\d+)\)\s*\}\}\.logs\.>")


class PartitionsMismatch(ValueError):
    """The stream was created with another number of partitions than configured."""


def fnv1a32(data: bytes) -> int:
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def partition_of(topic: str, count: int) -> int:
    """The partition of ``topic`` among ``count``: what nats-server's ``{{partition(count)}}`` gives
    for the subject ``logs.<topic>``."""
    if count == 1:
        return 0
    return fnv1a32((LOG_SUBJECT_PREFIX + topic).encode()) % count


def stream_transform(count: int) -> SubjectTransform | None:
    if count == 1:
        return None
    return SubjectTransform(src=LOG_SUBJECTS, dest=f"{{{{partition({count})}}}}.{LOG_SUBJECTS}")


def partitions_of(config: StreamConfig) -> int:
    """The number of partitions a stream was created with (1 without a transform). A transform that is
    not logmesh's is refused: events would be stored under subjects no sink reads."""
    transform = config.subject_transform
    if transform is None or not transform.dest:
        return 1
    found = _TRANSFORM_DEST.fullmatch(transform.dest) if transform.src == LOG_SUBJECTS else None
    if found is None:
        raise PartitionsMismatch(
            f"stream {config.name} transforms {transform.src!r} into {transform.dest!r}, which is not a logmesh "
            f"partitioning ({LOG_SUBJECTS!r} into '{{{{partition(P)}}}}.{LOG_SUBJECTS}')"
        )
    return int(found.group(1))


def check_partitions(config: StreamConfig, configured: int) -> int:
    """The stream's P, or :class:`PartitionsMismatch` when it is not ``configured``."""
    have = partitions_of(config)
    if have != configured:
        raise PartitionsMismatch(
            f"stream {config.name} was created with {have} partition(s), not {configured}: the number of "
            f"partitions is fixed per stream (docs/scaling.md, 'Changing the number of partitions'); "
            f"start with --partitions {have}"
        )
    return have


def stored_subject_prefix(partition: int, count: int) -> str:
    """How the stored subject of partition ``partition``'s events begins (the topic follows)."""
    return LOG_SUBJECT_PREFIX if count == 1 else f"{partition}.{LOG_SUBJECT_PREFIX}"


def receipt_subject(partition: int, count: int) -> str:
    return RECEIPT_SUBJECT if count == 1 else f"{RECEIPT_SUBJECT}.{partition}"


def consumer_filters(partition: int, count: int) -> list[str]:
    """The subjects partition ``partition``'s consumer reads; empty (the whole stream) when P = 1."""
    if count == 1:
        return []
    return [f"{partition}.{LOG_SUBJECTS}", receipt_subject(partition, count)]


def query_prefix(partition: int, count: int) -> str:
    """Where the owner of partition ``partition`` answers queries (``<prefix>.<endpoint>``)."""
    return QUERY_SUBJECT_PREFIX if count == 1 else f"{QUERY_SUBJECT_PREFIX}.p{partition}"


def store_file(data_dir: Path, partition: int, count: int) -> Path:
    return data_dir / (SINGLE_FILE if count == 1 else f"partition-{partition}.duckdb")


def parse_partition_list(text: str) -> tuple[int, ...] | None:
    """``"0,2,3"`` as (0, 2, 3); ``"all"`` as None (every partition of the stream). ValueError says what
    is wrong."""
    text = text.strip()
    if text == "all":
        return None
    if not text:
        return ()
    chosen: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not (part.isascii() and part.isdigit()):
            raise ValueError(f"{part!r} is not a partition number (a list like 0,2,3, or all)")
        number = int(part)
        if number >= MAX_PARTITIONS:
            raise ValueError(f"partition {number} is out of range (0-{MAX_PARTITIONS - 1})")
        if number in chosen:
            raise ValueError(f"partition {number} is listed twice")
        chosen.append(number)
    return tuple(chosen)
