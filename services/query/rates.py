"""The last minutes of rates, kept by the query service so a dashboard opened now shows them at once.

Every few seconds the recorder reads the ``/stats`` snapshot (which :class:`StatsView` keeps fresh
anyway) and turns the change of each counter since the previous reading into a rate per second. The
sink's counters move when it commits; the stream's last sequence moves when a message arrives, so
``appended`` against ``committed`` shows a sink falling behind (and catching up) as it happens. A
ring buffer holds the last quarter of an hour: some 450 small points, whatever the event rate, and
no work at all on the ingest or commit paths.

A reading that fails (the sink or NATS down) starts a new baseline instead of a point: the next
point is not an average over the outage, and the chart shows the outage as a gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from logmesh.common.http import ApiError
from logmesh.common.openapi import parameters, responses
from logmesh.common.query_contract import Param

log = logging.getLogger("logmesh.query.rates")

SAMPLE_EVERY = 2.0
KEEP_SECONDS = 15 * 60

# Rate name in a point -> where its counter is in a /stats snapshot.
_COUNTERS: dict[str, tuple[str, ...]] = {
    "arrived": ("arrived",),
    "committed": ("unique_processed",),
    "duplicates_window": ("duplicates", "window"),
    "duplicates_store": ("duplicates", "store"),
    "invalid": ("invalid",),
}


# ASCII digits only (float() would take "١٢" or "1e999"), at most 12 before the point.
_UNIX_TIME = re.compile(r"[0-9]{1,12}(\.[0-9]{1,9})?")


def _unix_time(raw: str) -> float:
    if _UNIX_TIME.fullmatch(raw) is None:
        raise ValueError("must be a Unix time in seconds, the t of the newest point already fetched")
    return float(raw)


class HistoryQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    since: float | None = None


HISTORY_PARAMS = (
    Param(
        "since",
        "since",
        {"type": "string", "pattern": r"^[0-9]{1,12}(\.[0-9]{1,9})?$"},
        _unix_time,
        "only points after this Unix time (the t of the newest point already fetched)",
    ),
)


class RatePoint(BaseModel):
    t: float = Field(description="end of the interval (Unix time)")
    seconds: float = Field(description="length of the interval")
    arrived: float = Field(description="events per second the sink counted as arrived (stored, duplicate or invalid)")
    committed: float = Field(description="events per second stored as new")
    duplicates_window: float = Field(description="events per second dropped by JetStream's duplicate window")
    duplicates_store: float = Field(description="events per second dropped by the store's primary key")
    invalid: float = Field(description="messages per second kept as dead letters")
    appended: float | None = Field(
        description="messages per second appended to the stream, as they arrive (before the sink reads them)"
    )
    pending: int | None = Field(description="consumer messages not yet delivered, at t")
    ack_pending: int | None = Field(description="consumer messages delivered, not yet acked, at t")


class RateHistory(BaseModel):
    interval_seconds: float = Field(description="how often the counters are read")
    window_seconds: float = Field(description="how far back the history goes")
    points: list[RatePoint] = Field(description="oldest first; a gap where the counters could not be read")


HISTORY_PATHS: dict[str, Any] = {
    "/stats/history": {
        "get": {
            "summary": "Rates per second over the last minutes, from the counters read every few seconds",
            "parameters": parameters(HISTORY_PARAMS),
            "responses": responses("200", RateHistory, "422"),
        }
    }
}


@dataclass(frozen=True, slots=True)
class _Reading:
    at: float  # the snapshot's as_of (Unix time)
    counts: tuple[int, ...]  # in the order of _COUNTERS
    last_seq: int | None  # the stream's, when JetStream answered


def _counter(stats: Mapping[str, Any], path: tuple[str, ...]) -> int:
    value: Any = stats
    for key in path:
        value = value[key]
    return int(value)


class RateRecorder:
    """Rates per second over each interval between two readings of the counters, the newest last."""

    def __init__(
        self,
        snapshot: Callable[[], Awaitable[Mapping[str, Any]]],
        every: float = SAMPLE_EVERY,
        keep: float = KEEP_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._snapshot = snapshot
        self._clock = clock  # Unix time, as the snapshots' as_of
        self.every, self.keep = every, keep
        self._points: deque[dict[str, Any]] = deque(maxlen=math.ceil(keep / every) + 1)
        self._last: _Reading | None = None
        self._recorder: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._recorder is None:
            self._recorder = asyncio.create_task(self._record_forever())

    async def stop(self) -> None:
        if self._recorder is not None:
            self._recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recorder
            self._recorder = None

    def record(self, stats: Mapping[str, Any]) -> None:
        """Adds the point from the previous reading to this /stats snapshot."""
        stream = stats.get("stream")
        reading = _Reading(
            float(stats["as_of"]),
            tuple(_counter(stats, path) for path in _COUNTERS.values()),
            int(stream["last_seq"]) if stream else None,
        )
        last, self._last = self._last, reading
        if last is None or reading.at <= last.at:
            return
        deltas = [now - before for now, before in zip(reading.counts, last.counts, strict=True)]
        if min(deltas) < 0:  # the counters went back (another store file): a new baseline
            return
        seconds = reading.at - last.at
        point: dict[str, Any] = {"t": round(reading.at, 3), "seconds": round(seconds, 3)}
        point.update((name, round(delta / seconds, 3)) for name, delta in zip(_COUNTERS, deltas, strict=True))
        appended = None if reading.last_seq is None or last.last_seq is None else reading.last_seq - last.last_seq
        point["appended"] = round(appended / seconds, 3) if appended is not None and appended >= 0 else None
        consumer = stats.get("consumer") or {}
        point["pending"] = consumer.get("pending")
        point["ack_pending"] = consumer.get("ack_pending")
        self._points.append(point)
        while self._points and self._points[0]["t"] < reading.at - self.keep:
            self._points.popleft()

    def lost(self) -> None:
        """No reading this time: the next one starts a new baseline."""
        self._last = None

    def answer(self, since: float | None = None) -> dict[str, Any]:
        oldest = self._clock() - self.keep
        if since is not None:
            oldest = max(oldest, since)
        return {
            "interval_seconds": self.every,
            "window_seconds": self.keep,
            "points": [p for p in self._points if p["t"] > oldest],
        }

    async def _record_forever(self) -> None:
        failing = False
        while True:
            try:
                self.record(await self._snapshot())
                failing = False
            except ApiError:
                self.lost()  # the sink or NATS is down; /stats and /readyz say so
            except Exception:
                self.lost()
                if not failing:
                    log.exception("rate history: could not read the counters")
                failing = True
            await asyncio.sleep(self.every)
