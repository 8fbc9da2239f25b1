"""What the stream and the store hold, read independently of the sink's own counters, to check them."""

from __future__ import annotations

from typing import Any

import orjson
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from logmesh.common.jetstream import QUERY_SUBJECT_PREFIX, RECEIPT_SUBJECT
from logmesh.common.nats_answers import ask


async def stream_truth(nc: Client, stream: str = "LOGS") -> dict[str, int]:
    """Log messages in the stream (each one the sink must count once as received) and the window
    duplicates its receipts report."""
    js = nc.jetstream()
    info = await js.stream_info(stream, subjects_filter=">")
    subjects = info.state.subjects or {}
    receipts = subjects.get(RECEIPT_SUBJECT, 0)
    window = 0
    if receipts:
        # No acks: an ack-explicit consumer stops delivering at max_ack_pending (1,000 by default).
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=60)
        sub = await js.pull_subscribe(RECEIPT_SUBJECT, stream=stream, config=config)
        seen = 0
        while seen < receipts:
            for msg in await sub.fetch(min(1000, receipts - seen), timeout=10):
                window += sum(orjson.loads(msg.data)["window_duplicates"].values())
                seen += 1
        await sub.unsubscribe()
    logs = sum(n for subject, n in subjects.items() if subject.startswith("logs."))
    return {"received": logs, "window": window}


async def stored_keys(nc: Client) -> list[tuple[str, str]]:
    """Every (topic, event_id) the sink has stored, read page by page over NATS."""
    keys: list[tuple[str, str]] = []
    after = 0
    while True:
        query = orjson.dumps({"after": after, "limit": 1000})
        page: dict[str, Any] = orjson.loads((await ask(nc, f"{QUERY_SUBJECT_PREFIX}.events", query, timeout=30)).data)
        keys += [(e["topic"], e["event_id"]) for e in page["events"]]
        if page["next_cursor"] is None:
            return keys
        after = int(page["next_cursor"])


async def sink_stats(nc: Client) -> dict[str, Any]:
    stats: dict[str, Any] = orjson.loads((await ask(nc, f"{QUERY_SUBJECT_PREFIX}.stats", b"{}", timeout=10)).data)
    return stats
