"""The figures of every partition made into one view for ``/stats``: sums, the sinks' state together,
one line per partition.

A partition that does not answer keeps the counters it last answered (counters only grow, so they
stay true, if behind) and is named in ``missing_partitions``; one that never answered adds nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from nats.js.api import ConsumerInfo

_TOTALS = ("received", "unique_processed", "duplicate_dropped", "invalid", "arrived")
# The aggregate of every partition's consumer (each is named sink-p<k>-<file id>).
CONSUMERS_TOGETHER = "sink-p*"


@dataclass
class PartitionState:
    """What the query service last heard from one partition."""

    counters: bytes = b""  # the counters' JSON as the sink sent it
    as_of: float | None = None  # when the sink read them (its COUNTERS_AS_OF_HEADER)
    fields: dict[str, Any] = field(default_factory=dict)  # parsed: totals, and topics with P > 1
    status: dict[str, Any] = field(default_factory=dict)
    consumer: str | None = None  # the durable consumer its owner named


def totals_of(counters: bytes) -> dict[str, Any]:
    """The totals of a sink's counters JSON without parsing the per-topic list (which can be
    megabytes): it comes after them."""
    cut = counters.find(b',"topics":')
    totals: dict[str, Any] = orjson.loads(counters[:cut] + b"}" if cut >= 0 else counters)
    return totals


def merged_counters(states: Iterable[PartitionState]) -> bytes:
    """Every partition's counters as one object's fields (no braces): totals summed, topics merged
    in topic order, the invariant holding when it holds in each partition."""
    totals = dict.fromkeys(_TOTALS, 0)
    window = store = 0
    topics: dict[str, dict[str, Any]] = {}
    holds = True
    for state in states:
        got = state.fields
        if not got:
            continue
        for name in _TOTALS:
            totals[name] += int(got.get(name, 0))
        window += int(got.get("duplicates", {}).get("window", 0))
        store += int(got.get("duplicates", {}).get("store", 0))
        holds = holds and bool(got.get("invariant_holds", True))
        for topic in got.get("topics", ()):
            # A topic lives in one partition; should two ever name it (a stream re-partitioned
            # offline), its counts add up rather than one hiding the other.
            seen = topics.get(topic["topic"])
            if seen is None:
                topics[topic["topic"]] = topic
            else:
                seen["count"] += topic["count"]
                for kind in ("window", "store"):
                    seen["duplicates"][kind] += topic["duplicates"][kind]
    merged = {
        **totals,
        "duplicates": {"window": window, "store": store},
        "topics": [topics[name] for name in sorted(topics)],
        "invariant_holds": holds,
    }
    return orjson.dumps(merged)[1:-1]


def partition_line(
    k: int, state: PartitionState, answered: bool, consumer: ConsumerInfo | None, consumer_name: str | None
) -> dict[str, Any]:
    got, status = state.fields, state.status
    duplicates = got.get("duplicates") or {"window": 0, "store": 0}
    return {
        "partition": k,
        "owner": status.get("owner"),
        "pid": status.get("pid"),
        "ready": answered and bool(status.get("ready")),
        "received": int(got.get("received", 0)),
        "unique_processed": int(got.get("unique_processed", 0)),
        "duplicates": {"window": int(duplicates.get("window", 0)), "store": int(duplicates.get("store", 0))},
        "invalid": int(got.get("invalid", 0)),
        "consumer": {
            "name": consumer_name,
            "pending": consumer.num_pending if consumer is not None else None,
            "ack_pending": consumer.num_ack_pending if consumer is not None else None,
        },
    }


def sinks_together(statuses: Mapping[int, dict[str, Any]], missing: Mapping[int, str], count: int) -> dict[str, Any]:
    """The ``sink`` field with P > 1: every partition's owner together."""
    errors = [f"partition {k}: {why}" for k, why in sorted(missing.items())]
    errors += [f"partition {k}: {s['last_error']}" for k, s in sorted(statuses.items()) if s.get("last_error")]
    commits = [s["last_commit_at"] for s in statuses.values() if s.get("last_commit_at") is not None]
    sizes = [s["store_bytes"] for s in statuses.values() if s.get("store_bytes") is not None]
    return {
        "ready": not missing and all(bool(s.get("ready")) for s in statuses.values()),
        "last_error": errors[0] if errors else None,
        "uptime_seconds": min((float(s.get("uptime_seconds", 0.0)) for s in statuses.values()), default=0.0),
        "last_commit_at": max(commits, default=None),
        "batches_committed": sum(int(s.get("batches_committed", 0)) for s in statuses.values()),
        "buffered": sum(int(s.get("buffered", 0)) for s in statuses.values()),
        "metrics_port": None,  # one per sink process: each partition's status names its own
        "store_bytes": sum(sizes) if sizes else None,
        "partitions": count,
    }


def consumers_together(consumers: Mapping[int, ConsumerInfo | None], count: int) -> dict[str, Any] | None:
    """The ``consumer`` field with P > 1: sums over every partition's consumer, or None unless each
    one answered (a partial sum would look like a drop in lag)."""
    known = [c for c in consumers.values() if c is not None]
    if len(known) != count:
        return None
    return {
        "name": CONSUMERS_TOGETHER,
        "pending": sum(c.num_pending or 0 for c in known),
        "ack_pending": sum(c.num_ack_pending or 0 for c in known),
        "redelivered": sum(c.num_redelivered or 0 for c in known),
    }
