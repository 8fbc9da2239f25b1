"""Under ``logmesh up``, ``GET /metrics`` on the HTTP port holds the sink's metrics too: one scrape
target for the whole pipeline.

The sink child serves its metrics on a port of its own, an ephemeral loopback one unless ``up`` was
given ``--metrics-port``; it names that port in its stats reply (``sink.metrics_port``). Each scrape
fetches the sink's exposition from there, with a short timeout, and appends it. When the sink does not
answer (restarting, stuck), the scrape still answers, with ``logmesh_sink_metrics_missing 1``.

With several sinks (``--sinks``, partitions), every partition's owner is asked for its port; each
sink's samples get a ``sink`` label (its name) and the families are merged, so the exposition stays
valid with one family per name.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import httpx
import nats
import orjson
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from logmesh.common.http import ApiError
from logmesh.common.nats_answers import Answer
from logmesh.common.query_contract import NoQuery
from logmesh.query.scatter import Asker, Topology

log = logging.getLogger("logmesh")

AskSink = Callable[[str, BaseModel, float | None], Awaitable[Answer]]
# The owners of every partition, as (sink name, metrics port), when there are several partitions.
SinkPorts = Callable[[], Awaitable[list[tuple[str, int]]]]

FETCH_TIMEOUT = 1.0  # seconds for each of: asking the sink its port, fetching its metrics


def connect_host(listen_host: str) -> str:
    """Where to reach a server listening on ``listen_host`` from this machine, as a URL host."""
    host = "127.0.0.1" if listen_host in ("", "0.0.0.0") else "::1" if listen_host == "::" else listen_host
    return f"[{host}]" if ":" in host else host


class SinkMetricsRelay:
    def __init__(
        self, ask_sink: AskSink, registry: CollectorRegistry, sink_metrics_host: str, sinks: SinkPorts | None = None
    ) -> None:
        self._ask = ask_sink
        self._sinks = sinks
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
        if self._sinks is not None:
            owners = await self._sinks()
            if owners:
                return await self._labelled(owners)
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

    async def _labelled(self, owners: list[tuple[str, int]]) -> bytes:
        families: dict[str, Metric] = {}
        missing = 0
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT) as client:
            for name, port in sorted(set(owners)):
                try:
                    resp = await client.get(f"http://{self._host}:{port}/metrics")
                    resp.raise_for_status()
                except httpx.HTTPError as exc:
                    log.debug("metrics of %s not fetched from port %s: %s", name, port, exc)
                    missing = 1
                    continue
                for family in text_string_to_metric_families(resp.text):
                    merged = families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
                    for sample in family.samples:
                        labels = {"sink": name, **sample.labels}
                        merged.samples.append(sample._replace(labels=labels))
        self._missing.set(missing)
        return generate_latest(_Families(list(families.values())))


def partition_owners(asker: Asker, topology: Topology) -> SinkPorts:
    """Who owns each partition and serves its metrics where, asked of the partitions themselves."""

    async def owners() -> list[tuple[str, int]]:
        try:
            count = await topology.partitions()
        except ApiError:
            return []
        if count == 1:
            return []

        async def status(k: int) -> tuple[str, int] | None:
            try:
                answer = orjson.loads((await asker.ask(k, count, "status", NoQuery(), FETCH_TIMEOUT)).data)
            except (ApiError, nats.errors.Error, OSError, ValueError):
                return None
            port, owner = answer.get("metrics_port"), answer.get("owner")
            return (owner, port) if isinstance(port, int) and isinstance(owner, str) else None

        found = await asyncio.gather(*(status(k) for k in range(count)))
        return [f for f in found if f is not None]

    return owners


class _Families:
    """A collector of parsed families, for ``generate_latest``."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families
