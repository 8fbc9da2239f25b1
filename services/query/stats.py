"""``/stats`` from a snapshot refreshed in the background, a few times a second.

Asking the sink and JetStream on every request made ``/stats`` as slow as the busiest of the three
under full load (p99 over 200 ms here): the sink's loop and JetStream's API queue behind the ingest
they are serving. A snapshot at most a fraction of a second old answers in about a millisecond and
costs the sink a few requests per second however many dashboards poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client

from logmesh.common.http import ApiError

REFRESH_EVERY = 0.25
# Older than this, the snapshot is not served: the request waits for a fresh one (or fails with it).
MAX_AGE = 1.0


class StatsView:
    def __init__(
        self,
        ask_sink: Callable[..., Awaitable[Any]],
        client: Callable[[], Client],
        stream: str,
        consumer: str,
    ) -> None:
        self._ask_sink = ask_sink
        self._client = client
        self._stream, self._consumer = stream, consumer
        self._snapshot: dict[str, Any] | None = None
        self._taken = 0.0
        self._refresher: asyncio.Task[None] | None = None
        self._refreshed = asyncio.Event()

    async def get(self) -> dict[str, Any]:
        if self._refresher is None:
            self._refresher = asyncio.create_task(self._refresh_forever())
        if self._snapshot is not None and time.monotonic() - self._taken < MAX_AGE:
            return self._snapshot
        return await self._take()  # first request, or the refresher is failing: show why

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher

    async def _refresh_forever(self) -> None:
        while True:
            with contextlib.suppress(ApiError):
                await self._take()
            await asyncio.sleep(REFRESH_EVERY)

    async def _take(self) -> dict[str, Any]:
        js = self._client().jetstream()
        stream_task = asyncio.create_task(js.stream_info(self._stream))
        consumer_task = asyncio.create_task(js.consumer_info(self._stream, self._consumer))
        try:
            out: dict[str, Any] = dict(await self._ask_sink("stats", {}))
        finally:
            await asyncio.wait({stream_task, consumer_task})
        out["as_of"] = time.time()
        # Lag and size come from JetStream itself; without them the counters are still worth serving.
        if stream_task.exception() is None:
            stream = stream_task.result()
            out["stream"] = {
                "name": stream.config.name,
                "messages": stream.state.messages,
                "bytes": stream.state.bytes,
                "first_seq": stream.state.first_seq,
                "last_seq": stream.state.last_seq,
            }
        if consumer_task.exception() is None:
            consumer = consumer_task.result()
            out["consumer"] = {
                "name": consumer.name,
                "pending": consumer.num_pending,
                "ack_pending": consumer.num_ack_pending,
                "redelivered": consumer.num_redelivered,
            }
        self._snapshot, self._taken = out, time.monotonic()
        return out
