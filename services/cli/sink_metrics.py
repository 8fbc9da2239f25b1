"""Under ``logmesh up``, ``GET /metrics`` on the HTTP port holds the sink's metrics too: one scrape
target for the whole pipeline.

The sink child serves its metrics on a port of its own, an ephemeral loopback one unless ``up`` was
given ``--metrics-port``; it names that port in its stats reply (``sink.metrics_port``). Each scrape
fetches the sink's exposition from there, with a short timeout, and appends it. When the sink does not
answer (restarting, stuck), the scrape still answers, with ``logmesh_sink_metrics_missing 1``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import httpx
import nats
import orjson
from prometheus_client import CollectorRegistry, Gauge
from pydantic import BaseModel

from logmesh.common.http import ApiError
from logmesh.common.nats_answers import Answer
from logmesh.common.query_contract import NoQuery

log = logging.getLogger("logmesh")

AskSink = Callable[[str, BaseModel, float | None], Awaitable[Answer]]

FETCH_TIMEOUT = 1.0  # seconds for each of: asking the sink its port, fetching its metrics


def connect_host(listen_host: str) -> str:
    """Where to reach a server listening on ``listen_host`` from this machine, as a URL host."""
    host = "127.0.0.1" if listen_host in ("", "0.0.0.0") else "::1" if listen_host == "::" else listen_host
    return f"[{host}]" if ":" in host else host


class SinkMetricsRelay:
    def __init__(self, ask_sink: AskSink, registry: CollectorRegistry, sink_metrics_host: str) -> None:
        self._ask = ask_sink
        self._host = connect_host(sink_metrics_host)
        self._port: int | None = None
        self._missing = Gauge(
            "logmesh_sink_metrics_missing",
            "1 when this scrape lacks the sink's metrics (the sink is not running or did not answer in time)",
            registry=registry,
        )

    async def port(self) -> int | None:
        """The port the sink serves its metrics on, as it says; None when it serves none or does
        not answer."""
        try:
            answer = await self._ask("status", NoQuery(), FETCH_TIMEOUT)
            port = orjson.loads(answer.data)["metrics_port"]
        except (ApiError, nats.errors.Error, OSError, ValueError, KeyError, TypeError):
            return None
        return port if isinstance(port, int) else None

    async def exposition(self) -> bytes:
        """The sink's metrics in the text format, or nothing (and the missing gauge set)."""
        for _ in range(2):  # a cached port goes stale when the sink restarts: ask once more
            if self._port is None:
                self._port = await self.port()
                if self._port is None:
                    break
            try:
                async with httpx.AsyncClient(timeout=FETCH_TIMEOUT) as client:
                    resp = await client.get(f"http://{self._host}:{self._port}/metrics")
                resp.raise_for_status()
            except httpx.HTTPError as exc:
                log.debug("sink metrics not fetched from port %s: %s", self._port, exc)
                self._port = None
                continue
            self._missing.set(0)
            return resp.content
        self._missing.set(1)
        return b""
