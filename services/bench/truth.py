"""What the stream and the store hold, read independently of the sink's own counters, to check them.

Partitioned streams store ``logs.<topic>`` as ``<k>.logs.<topic>`` and receipts on
``logmesh.receipts.<k>``; both layouts are read here, and the store of every partition."""

from __future__ import annotations

from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from logmesh.common.nats_answers import ask
from logmesh.common.partitions import partitions_of, query_prefix
from logmesh.common.subjects import LOG_SUBJECT_PREFIX, RECEIPT_SUBJECT


def _is_log(subject: str) -> bool:
    head, _, rest = subject.partition(".")
    return subject.startswith(LOG_SUBJECT_PREFIX) or (head.isdigit() and rest.startswith(LOG_SUBJECT_PREFIX))


async def stream_truth(nc: Client, stream: str = "LOGS") -> dict[str, int]:
    """Log messages in the stream (each one the sink must count once as received) and the window
    duplicates its receipts report."""
    js = nc.jetstream()
    info = await js.stream_info(stream, subjects_filter=">")
    subjects = info.state.subjects or {}
    window = 0
    plain = subjects.get(RECEIPT_SUBJECT, 0)
    partitioned = sum(n for subject, n in subjects.items() if subject.startswith(RECEIPT_SUBJECT + "."))
    for subject, receipts in ((RECEIPT_SUBJECT, plain), (RECEIPT_SUBJECT + ".>", partitioned)):
        if not receipts:
            continue
        # No acks: an ack-explicit consumer stops delivering at max_ack_pending (1,000 by default).
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=60)
        sub = await js.pull_subscribe(subject, stream=stream, config=config)
        seen = 0
        while seen < receipts:
            for msg in await sub.fetch(min(1000, receipts - seen), timeout=10):
                window += sum(orjson.loads(msg.data)["window_duplicates"].values())
                seen += 1
        await sub.unsubscribe()
    logs = sum(n for subject, n in subjects.items() if _is_log(subject))
    return {"received": logs, "window": window}


async def _partition_count(nc: Client, stream: str) -> int:
    return partitions_of((await nc.jetstream().stream_info(stream)).config)


async def stored_keys(nc: Client, stream: str = "LOGS") -> list[tuple[str, str]]:
    """Every (topic, event_id) the sinks have stored, read page by page over NATS from each partition."""
    count = await _partition_count(nc, stream)
    keys: list[tuple[str, str]] = []
    for k in range(count):
        after = 0
        while True:
            query = orjson.dumps({"after": after, "limit": 1000})
            subject = f"{query_prefix(k, count)}.events"
            page: dict[str, Any] = orjson.loads((await ask(nc, subject, query, timeout=30)).data)
            keys += [(e["topic"], e["event_id"]) for e in page["events"]]
            if page["next_cursor"] is None:
                break
            after = int(page["next_cursor"])
    return keys


async def sink_stats(nc: Client, stream: str = "LOGS") -> dict[str, Any]:
    """The sink's stats; with several partitions, their counters summed (per-topic lists left out)."""
    count = await _partition_count(nc, stream)
    parts = [
        orjson.loads((await ask(nc, f"{query_prefix(k, count)}.stats", b"{}", timeout=10)).data) for k in range(count)
    ]
    if count == 1:
        stats: dict[str, Any] = parts[0]
        return stats
    summed: dict[str, Any] = {"partitions": parts, "invariant_holds": all(p["invariant_holds"] for p in parts)}
    for field in ("received", "unique_processed", "duplicate_dropped", "invalid", "arrived"):
        summed[field] = sum(p[field] for p in parts)
    summed["duplicates"] = {k: sum(p["duplicates"][k] for p in parts) for k in ("window", "store")}
    return summed
