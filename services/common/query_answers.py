"""What the query routes answer, written once: pages as the sink finishes them (stored payloads
spliced in as stored, never parsed), a partition's part of a merged page, and the answer models the
OpenAPI description is made from. The requests and their parameters are in ``query_contract``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field

from logmesh.common.query_contract import BODY_PREVIEW

# ---- pages --------------------------------------------------------------------------------------


def page(key: Literal["events", "dead_letters"], items: Sequence[bytes], next_cursor: int | None) -> bytes:
    """A finished page: items already in JSON, next_cursor a string (or null on the last page)."""
    cursor = b"null" if next_cursor is None else b'"%d"' % next_cursor
    return b'{"%s":[%s],"count":%d,"next_cursor":%s}' % (key.encode(), b",".join(items), len(items), cursor)


def merged_page(
    key: Literal["events", "dead_letters"], items: Sequence[bytes], next_cursor: str | None, missing: Sequence[int]
) -> bytes:
    """A page made of every partition's part, naming the partitions that did not answer."""
    cursor = b"null" if next_cursor is None else b'"%s"' % next_cursor.encode()
    return b'{"%s":[%s],"count":%d,"next_cursor":%s,"missing_partitions":[%s]}' % (
        key.encode(),
        b",".join(items),
        len(items),
        cursor,
        b",".join(b"%d" % k for k in missing),
    )


def with_missing(page_json: bytes, missing: Sequence[int] = ()) -> bytes:
    """A finished page (or event) with ``missing_partitions`` added."""
    if not page_json.endswith(b"}"):
        raise ValueError("not a JSON object")
    return page_json[:-1] + b',"missing_partitions":[%s]}' % b",".join(b"%d" % k for k in missing)


def in_partition(item_json: bytes, partition: int) -> bytes:
    """An item (event, dead letter) with the partition that stored it: ids are unique within one."""
    if not (item_json.startswith(b"{") and item_json.endswith(b"}") and len(item_json) > 2):
        raise ValueError("not a JSON object with fields")
    return b'{"partition":%d,%s' % (partition, item_json[1:])


# ---- a partition's part of a merged page ---------------------------------------------------------
# With P > 1 the query service asks every partition for a page (``parts=True``) and merges them by
# stream sequence. A part is ``1\n`` (more items follow in this partition) or ``0\n``, then per item
# ``<id> <seq> <length>\n`` and the item's JSON: the query service cuts it without parsing payloads.


def parts(items: Sequence[tuple[int, int, bytes]], more: bool) -> bytes:
    out = [b"1\n" if more else b"0\n"]
    for id_, seq, item in items:
        out.append(b"%d %d %d\n" % (id_, seq, len(item)))
        out.append(item)
    return b"".join(out)


def read_parts(data: bytes) -> tuple[list[tuple[int, int, bytes]], bool]:
    """What :func:`parts` wrote; ValueError when ``data`` is not that."""
    view = memoryview(data)
    end = data.index(b"\n")
    if data[:end] not in (b"0", b"1"):
        raise ValueError(f"a part begins with {bytes(data[:end][:64])!r}, not 0 or 1")
    more = data[:end] == b"1"
    items: list[tuple[int, int, bytes]] = []
    at = end + 1
    while at < len(data):
        end = data.index(b"\n", at)
        fields = data[at:end].split(b" ")
        # Digits only: a negative length would send the reader back over what it read, for ever.
        if len(fields) != 3 or not all(f.isdigit() for f in fields):
            raise ValueError(f"a part's item header is {bytes(data[at:end][:64])!r}, not '<id> <seq> <length>'")
        id_, seq, length = (int(f) for f in fields)
        at = end + 1 + length
        if at > len(data):
            raise ValueError("a part ends inside an item")
        items.append((id_, seq, bytes(view[end + 1 : at])))
    return items, more


_PARTITION = "with more than one partition: the partition that stored it (ids are unique within a partition)"
_MISSING = (
    "partitions that did not answer: their items are not in this page, and the cursor goes on from where they were"
)


class StoredEvent(BaseModel):
    id: int = Field(description="insertion order; the last one of a page is its next_cursor")
    topic: str
    event_id: str
    timestamp: str
    source: str
    payload: dict[str, Any] = Field(description="as stored: numbers and strings exactly as they were written")
    seq: int = Field(description="stream sequence of the message that stored it")
    stored_at: str
    partition: int | None = Field(None, description=_PARTITION)


_NEXT = "pass it back as cursor for the next page; null on the last page"


class EventPage(BaseModel):
    events: list[StoredEvent]
    count: int
    next_cursor: str | None = Field(description=_NEXT)
    missing_partitions: list[int] = Field(description=_MISSING)


class DeadLetter(BaseModel):
    id: int
    seq: int
    subject: str
    reason: str
    headers: dict[str, Any] | None = Field(description="the message's headers, as stored")
    body: str = Field(description=f"the first {BODY_PREVIEW} bytes of the body, as UTF-8 with replacement characters")
    body_bytes: int
    body_truncated: bool
    stored_at: str
    partition: int | None = Field(None, description=_PARTITION)


class DeadLetterPage(BaseModel):
    dead_letters: list[DeadLetter]
    count: int
    next_cursor: str | None = Field(description=_NEXT)
    missing_partitions: list[int] = Field(description=_MISSING)


class Duplicates(BaseModel):
    window: int
    store: int


class TopicStats(BaseModel):
    topic: str
    count: int
    duplicates: Duplicates


class SinkStatus(BaseModel):
    """The sink's own state; the sink's ``status`` endpoint answers this alone (with P > 1 the owner
    of each partition answers for it, naming the partition). In ``/stats`` with P > 1: every
    partition together (ready when all are; the first error; sums; the oldest uptime and the latest
    commit)."""

    ready: bool
    last_error: str | None
    uptime_seconds: float
    last_commit_at: float | None
    batches_committed: int
    buffered: int
    metrics_port: int | None
    store_bytes: int | None
    partition: int | None = Field(None, description="the partition this answer is about (a partition's status)")
    partitions: int | None = Field(None, description="the stream's number of partitions P")
    owner: str | None = Field(None, description="the name of the sink that owns the partition")
    pid: int | None = Field(None, description="that sink's process id")
    consumer: str | None = Field(None, description="the partition's durable consumer")
    file_id: str | None = Field(None, description="the id of the partition's store file")


class StreamState(BaseModel):
    name: str
    messages: int = Field(description="every message in the stream, the receipts included")
    receipt_messages: int = Field(description="the receipts ingest wrote beside the events")
    bytes: int
    first_seq: int
    last_seq: int


class ConsumerState(BaseModel):
    name: str
    pending: int
    ack_pending: int
    redelivered: int


class PartitionConsumer(BaseModel):
    name: str | None = Field(description="the durable consumer the partition's owner reads through")
    pending: int | None = Field(description="messages not yet delivered; null when JetStream did not answer")
    ack_pending: int | None = Field(description="delivered, not yet acknowledged; null when JetStream did not answer")


class PartitionStats(BaseModel):
    partition: int
    owner: str | None = Field(description="the sink that answered for it (null: never answered)")
    pid: int | None
    ready: bool = Field(description="answered, and its sink is ready")
    received: int = Field(description="counters as last answered (kept while the partition is missing)")
    unique_processed: int
    duplicates: Duplicates
    invalid: int
    consumer: PartitionConsumer


class ClusterNode(BaseModel):
    name: str
    url: str | None = Field(description="from the cluster_nodes setting (credentials hidden)")
    ok: bool = Field(description="holds a current copy of the stream: its leader, or a replica current and online")
    pid: int | None = Field(description="the nats-server's process id, when the one who started it said")


class ClusterState(BaseModel):
    nodes: list[ClusterNode]
    stream_leader: str | None = Field(description="the server leading the stream; null when JetStream did not answer")
    replicas: int | None = Field(description="the stream's configured number of replicas")


class Stats(BaseModel):
    received: int
    unique_processed: int
    duplicate_dropped: int
    duplicates: Duplicates
    invalid: int
    arrived: int
    topics: list[TopicStats]
    invariant_holds: bool
    as_of: float = Field(description="when the sink read these counters (Unix time)")
    sink: SinkStatus
    uptime_seconds: float
    stream: StreamState | None = Field(None, description="from JetStream; absent when it did not answer")
    consumer: ConsumerState | None = Field(
        None,
        description="from JetStream; absent when it did not answer. With P > 1: every partition's consumer "
        "together, named 'sink-p*', absent unless each one answered",
    )
    partitions: list[PartitionStats] = Field(description="each partition, in order (one with P = 1)")
    cluster: ClusterState
    missing_partitions: list[int] = Field(
        description="partitions whose sink did not answer; their counters are the last they answered"
    )
