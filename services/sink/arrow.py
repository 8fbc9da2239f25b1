"""Arrow tables in and out of the store's statements: the candidate rows of a batch, their ids and
per-topic counts, counters, and committed sequence ranges."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from logmesh.common.reference_decoder import Row
from logmesh.sink.counters import Counters
from logmesh.sink.seqranges import SeqRanges

TIMESTAMP = pa.timestamp("us")
CANDIDATE_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("event_id", pa.string()),
        ("timestamp", TIMESTAMP),
        ("source", pa.string()),
        ("payload", pa.string()),
        ("seq", pa.uint64()),
    ]
)


def rows_table(rows: Sequence[Row]) -> pa.Table:
    """The rows the reference decoder made, as the SQL decoder's candidates come."""
    return pa.table(
        {
            "topic": [r.topic for r in rows],
            "event_id": [r.event_id for r in rows],
            "timestamp": pa.array([r.timestamp for r in rows], pa.timestamp("us", tz="UTC")).cast(TIMESTAMP),
            "source": [r.source for r in rows],
            "payload": [r.payload for r in rows],
            "seq": pa.array([r.seq for r in rows], pa.uint64()),
        },
        schema=CANDIDATE_SCHEMA,
    )


def with_ids(candidates: pa.Table, first_id: int) -> pa.Table:
    """Adds the events' ``id`` (their listing order): the candidates numbered in stream order from
    ``first_id``, computed here rather than by a window function in the insert."""
    if candidates.num_rows == 0:
        return candidates.append_column("id", pa.array([], pa.uint64()))
    rank = pc.rank(candidates["seq"], sort_keys="ascending", tiebreaker="first")  # 1, 2, ... in seq order
    return candidates.append_column("id", pc.add(rank.cast(pa.uint64()), pa.scalar(first_id - 1, pa.uint64())))


def counts_by_topic(candidates: pa.Table) -> tuple[Counter[str], Counter[str]]:
    """Per topic, the candidate rows and their distinct event ids: one Arrow pass, no SQL statement
    to plan for every batch."""
    if candidates.num_rows == 0:
        return Counter(), Counter()
    grouped = candidates.group_by("topic").aggregate([("event_id", "count"), ("event_id", "count_distinct")])
    topics = grouped["topic"].to_pylist()
    rows = Counter(dict(zip(topics, grouped["event_id_count"].to_pylist(), strict=True)))
    distinct = Counter(dict(zip(topics, grouped["event_id_count_distinct"].to_pylist(), strict=True)))
    return rows, distinct


def topics_table(counters: Counters, topics: set[str]) -> pa.Table:
    """The per-topic counters rows of ``topics``, as the ``topics`` table holds them."""
    names = sorted(topics)
    counts = [counters.topics[t] for t in names]
    return pa.table(
        {
            "topic": names,
            "unique_events": pa.array([c.unique for c in counts], pa.uint64()),
            "window_duplicates": pa.array([c.window_duplicates for c in counts], pa.uint64()),
            "store_duplicates": pa.array([c.store_duplicates for c in counts], pa.uint64()),
        }
    )


def ranges_table(ranges: SeqRanges) -> pa.Table:
    pairs = ranges.ranges()
    return pa.table(
        {"lo": pa.array([lo for lo, _ in pairs], pa.uint64()), "hi": pa.array([hi for _, hi in pairs], pa.uint64())}
    )
