"""The sink process: one NATS connection, one pipeline per partition it serves (``pipeline.py``).

The number of partitions P is the stream's (``partitions.partitions_of``). With P = 1 the sink is the
single-node sink it always was: one pipeline, no lease, the consumer, file and query subjects as
configured. With P > 1 it serves the partitions whose leases it holds (``ownership.py``), each with
its own file, consumer and query service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from pathlib import Path

from nats.aio.client import Client
from nats.js.api import StreamInfo

from logmesh.common.claims import DirLock, Refused
from logmesh.common.jetstream import close, connect, wait_for_stream
from logmesh.common.leases_bucket import ensure_lease_bucket
from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.partitions import PartitionsMismatch, partitions_of
from logmesh.sink.lease import bucket_ttl
from logmesh.sink.metrics import PartitionSample, SinkMetrics
from logmesh.sink.ownership import Ownership
from logmesh.sink.pipeline import Pipeline
from logmesh.sink.place import Place
from logmesh.sink.settings import SinkSettings

log = logging.getLogger("logmesh.sink")


class SinkRefused(Refused):
    """The sink cannot serve what it was told to: one line says why."""


class Sink:
    def __init__(self, settings: SinkSettings, claimed: Iterable[Path] = ()) -> None:
        """``claimed``: lock files this process holds already (the CLI claims ``store.lock`` first)."""
        self.settings = settings
        self._claimed = {p.resolve() for p in claimed}
        self.pipelines: dict[int, Pipeline] = {}
        self.partitions: int | None = None  # P, once the stream is known
        self.metrics = SinkMetrics(owned=self._samples, ready=self._ready)

    def _samples(self) -> list[PartitionSample]:
        """Read on the metrics server's thread while the event loop adds and removes pipelines: it
        iterates a copy of the dict (``dict.copy`` is one step under the GIL), never the live dict."""
        return [p.sample() for p in self.pipelines.copy().values()]

    def _ready(self) -> bool:
        """Every partition served is ready (a sink that serves none, a standby, is ready too); with one
        partition, its pipeline."""
        if self.partitions is None or (self.partitions == 1 and not self.pipelines):
            return False
        return all(p.ready for p in self.pipelines.copy().values())

    @property
    def ready(self) -> bool:
        return self._ready()

    async def run(self, stopping: asyncio.Event) -> None:
        s = self.settings
        nc: Client | None = None
        try:
            nc = await connect(
                s.nats_url,
                "logmesh-sink",
                io=s.nats_io,
                stopping=stopping,
                credentials=NatsCredentials.from_settings(s, "sink"),
            )
            js = nc.jetstream()
            info = await wait_for_stream(js, s, stopping=stopping, may_update=False)
            try:
                count = partitions_of(info.config)
            except PartitionsMismatch as exc:
                raise SinkRefused(str(exc)) from None
            primary, standby = self._partitions_to_serve(count)
            self.partitions = count
            port = self.metrics.serve(s.metrics_host, s.metrics_port)
            log.info("sink metrics at %s", f"{s.metrics_host}:{port}" if port else "nowhere")
            if count == 1:
                await self._run_single(nc, info, stopping)
                return
            kv = await ensure_lease_bucket(js, s.lease_ttl, info.config.num_replicas or 1)
            ttl = await bucket_ttl(kv) or s.lease_ttl
            log.info(
                "sink %s: %d partitions in stream %s; primary %s, standby %s, lease TTL %g s",
                s.owner_name,
                count,
                s.stream,
                _listed(primary),
                _listed(standby),
                ttl,
            )
            ownership = Ownership(s, nc, info, count, kv, ttl, self.metrics, self.pipelines, self._claim)
            await ownership.run(primary, standby, stopping)
        finally:
            if nc is not None:
                await close(nc)
            log.info("sink stopped")

    def _partitions_to_serve(self, count: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        s = self.settings
        primary = s.primary_partitions
        primary = tuple(range(count)) if primary is None else primary
        standby = s.standby_partitions
        beyond = [k for k in (*primary, *standby) if k >= count]
        if beyond:
            raise SinkRefused(
                f"partition {min(beyond)} does not exist: stream {s.stream} has {count} partition(s), 0-{count - 1}"
            )
        if count == 1 and primary != (0,):
            raise SinkRefused(
                f"stream {s.stream} has one partition, which a sink always serves: use --partitions all (or 0) "
                "and no --standby"
            )
        return primary, standby

    async def _run_single(self, nc: Client, info: StreamInfo, stopping: asyncio.Event) -> None:
        s = self.settings
        place = Place(0, 1, s.data_dir, s.consumer)
        claim = self._claim(place)
        pipeline = Pipeline(s, place, self.metrics, None, s.owner_name)
        self.pipelines[0] = pipeline
        try:
            await pipeline.run(nc, info, stopping)
        finally:
            self.pipelines.pop(0, None)
            if claim is not None:
                claim.release()

    def _claim(self, place: Place) -> DirLock | None:
        """The store lock of ``place``'s file, unless this process holds it already."""
        if place.lock_path.resolve() in self._claimed:
            return None
        return DirLock(place.lock_path, "store", place.db_path, "logmesh sink").acquire()


def _listed(partitions: tuple[int, ...]) -> str:
    return ",".join(map(str, partitions)) or "none"
