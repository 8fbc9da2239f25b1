"""``/stats`` from a snapshot refreshed in the background, a few times a second.

Asking the sink and JetStream on every request made ``/stats`` as slow as the busiest of the three
under full load (p99 over 200 ms here): the sink's loop and JetStream's API queue behind the ingest
they are serving. A snapshot at most a fraction of a second old answers in about a millisecond and
costs the sink a few requests per second however many dashboards poll.

The snapshot is JSON, ready to send. The counters (one entry per topic: megabytes with 100,000
topics) are never parsed here, and are fetched again only when the sink has newer ones; the sink's
state and JetStream's figures, a few hundred bytes, are fetched on every refresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from nats.aio.client import Client
from pydantic import BaseModel

from logmesh.common.http import ApiError
from logmesh.common.jetstream import RECEIPT_SUBJECT
from logmesh.common.nats_answers import Answer
from logmesh.common.query_contract import COUNTERS_AS_OF_HEADER, CountersQuery, NoQuery

log = logging.getLogger("logmesh.query")

REFRESH_EVERY = 0.25
# Older than this, the snapshot is not served: the request waits for a fresh one (or fails with it).
# With very many topics a refresh takes longer, and both stretch with it (see _refresh_forever).
MAX_AGE = 1.0

AskSink = Callable[[str, BaseModel], Awaitable[Answer]]


class StatsView:
    def __init__(self, ask_sink: AskSink, client: Callable[[], Client | None], stream: str, consumer: str) -> None:
        self._ask_sink = ask_sink
        self._client = client
        self._stream, self._consumer = stream, consumer
        # The snapshot: the fields around the counters, and the counters' own fields (no braces).
        self._head = b""
        self._counters = memoryview(b"")
        self._counters_as_of: float | None = None
        self._taken: float | None = None
        self._took = 0.0
        self._refresher: asyncio.Task[None] | None = None

    async def body(self, **extra: Any) -> bytes:
        """The latest stats, with ``extra`` fields added, as JSON."""
        await self._fresh()
        return b"".join((self._head, self._counters, b",", memoryview(orjson.dumps(extra))[1:]))

    async def summary(self) -> dict[str, Any]:
        """The latest stats without the per-topic list, which is all that can be large: cheap to read
        however many topics there are."""
        await self._fresh()
        counters = bytes(self._counters)
        cut = counters.find(b',"topics":')
        totals: dict[str, Any] = orjson.loads(b"{" + (counters[:cut] if cut >= 0 else counters) + b"}")
        head: dict[str, Any] = orjson.loads(self._head[:-1] + b"}")
        return {**head, **totals}

    async def _fresh(self) -> None:
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever())
        if self._taken is None or time.monotonic() - self._taken >= max(MAX_AGE, 4 * self._took):
            await self._take()  # first request, or the refresher is failing: show why

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def _refresh_forever(self) -> None:
        failing = False
        while True:
            try:
                await self._take()
                failing = False
            except ApiError:
                pass  # NATS or the sink is down: /stats and /readyz say so
            except Exception:
                # Whatever it was, the snapshot must keep being refreshed; say it once per outage.
                if not failing:
                    log.exception("stats: the snapshot could not be refreshed")
                failing = True
            # A refresh that moves megabytes of counters waits a while before the next one.
            await asyncio.sleep(max(REFRESH_EVERY, 2 * self._took))

    async def _take(self) -> None:
        nc = self._client()
        if nc is None:
            raise ApiError(503, "unavailable", "NATS is not reachable; retry later", headers={"Retry-After": "1"})
        started = time.monotonic()
        js = nc.jetstream()
        stream_task = asyncio.create_task(js.stream_info(self._stream, subjects_filter=RECEIPT_SUBJECT))
        consumer_task = asyncio.create_task(js.consumer_info(self._stream, self._consumer))
        # JetStream first, the sink's counters after: the sink acks a batch only once it is committed,
        # so counters read after a consumer state hold every batch that state shows as acked (a
        # snapshot saying "nothing pending" then never shows counters from before the last commit).
        await asyncio.wait({stream_task, consumer_task})
        # Read now, so that an answer JetStream refused (no consumer yet: the sink is starting) is
        # retrieved even when asking the sink fails next; an expected state is not an error to log.
        stream_failed, consumer_failed = stream_task.exception(), consumer_task.exception()
        status, counters = await asyncio.gather(
            self._ask_sink("status", NoQuery()),
            self._ask_sink("counters", CountersQuery(unless_as_of=self._counters_as_of)),
        )
        if counters.data != b"null":
            self._counters = memoryview(counters.data)[1:-1]
            self._counters_as_of = float(counters.headers[COUNTERS_AS_OF_HEADER])
        fields: dict[str, Any] = {"as_of": time.time(), "sink": orjson.Fragment(status.data)}
        # Lag and size come from JetStream itself; without them the counters are still worth serving.
        if stream_failed is None:
            stream = stream_task.result()
            fields["stream"] = {
                "name": stream.config.name,
                # Every message in the stream, and apart: the receipts ingest writes beside the events.
                "messages": stream.state.messages,
                "receipt_messages": (stream.state.subjects or {}).get(RECEIPT_SUBJECT, 0),
                "bytes": stream.state.bytes,
                "first_seq": stream.state.first_seq,
                "last_seq": stream.state.last_seq,
            }
        if consumer_failed is None:
            consumer = consumer_task.result()
            fields["consumer"] = {
                "name": consumer.name,
                "pending": consumer.num_pending,
                "ack_pending": consumer.num_ack_pending,
                "redelivered": consumer.num_redelivered,
            }
        self._head = orjson.dumps(fields)[:-1] + b","
        self._taken, self._took = time.monotonic(), time.monotonic() - started
