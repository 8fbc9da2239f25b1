"""Which partitions this sink serves, decided by leases (``lease.py``), and a pipeline for each.

A primary partition's lease is tried at once and every third of the TTL; a standby partition's only
once its key has been absent for a whole TTL, so a live primary always wins it back first. A partition
won is served until its lease is lost (its pipeline stops at once and leaves what it holds unacked) or
the sink stops (its pipeline commits what it holds, then the lease is given up). There is no
rebalancing: a primary that comes back takes its partition again only once it is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

import nats
from nats.aio.client import Client
from nats.js.api import StreamInfo
from nats.js.kv import KeyValue

from logmesh.common.claims import DirLock, Refused
from logmesh.sink.lease import Lease
from logmesh.sink.metrics import SinkMetrics
from logmesh.sink.pipeline import Pipeline
from logmesh.sink.place import Place
from logmesh.sink.settings import SinkSettings

log = logging.getLogger("logmesh.sink")

Claim = Callable[[Place], DirLock | None]


class Ownership:
    def __init__(
        self,
        settings: SinkSettings,
        nc: Client,
        stream: StreamInfo,
        count: int,
        kv: KeyValue,
        ttl: float,
        metrics: SinkMetrics,
        pipelines: dict[int, Pipeline],
        claim: Claim,
    ) -> None:
        self._settings = settings
        self._nc = nc
        self._stream = stream
        self._count = count
        self._kv = kv
        self.ttl = ttl
        self._metrics = metrics
        self._pipelines = pipelines  # the partitions served now, shared with the sink
        self._claim = claim
        self._owner: dict[str, object] = {
            "owner": settings.owner_name,
            "pid": os.getpid(),
            "host": socket.gethostname(),
        }

    async def run(self, primary: tuple[int, ...], standby: tuple[int, ...], stopping: asyncio.Event) -> None:
        tasks = [asyncio.create_task(self._own(k, False, stopping)) for k in primary]
        tasks += [asyncio.create_task(self._own(k, True, stopping)) for k in standby]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

    async def _own(self, partition: int, standby: bool, stopping: asyncio.Event) -> None:
        lease = Lease(self._kv, partition, self._owner, self.ttl)
        absent_since: float | None = None
        while not stopping.is_set():
            try:
                if standby:
                    absent = await lease.absent()
                    absent_since = (absent_since or time.monotonic()) if absent else None
                    may_try = absent_since is not None and time.monotonic() - absent_since >= self.ttl
                else:
                    may_try = True
                won = may_try and await lease.acquire()
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("partition %d: lease not checked (%s); trying again", partition, exc)
                won = False
            if won:
                absent_since = None
                log.info("partition %d: lease won by %s%s", partition, self._owner["owner"], " (standby)" * standby)
                await self._serve(partition, lease, stopping)
                if stopping.is_set():
                    return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), self.ttl / 3)

    async def _serve(self, partition: int, lease: Lease, stopping: asyncio.Event) -> None:
        place = Place(partition, self._count, self._settings.data_dir, self._settings.consumer)
        pipeline = Pipeline(self._settings, place, self._metrics, lease, self._settings.owner_name)
        renewing = asyncio.create_task(self._renew(lease, pipeline))
        claim: DirLock | None = None
        try:
            claim = self._claim(place)
            self._pipelines[partition] = pipeline
            await pipeline.run(self._nc, self._stream, stopping)
        except Refused as exc:
            log.error("%s cannot be served here: %s", place, exc)
        except Exception:
            log.exception("%s stopped on an error", place)
        finally:
            renewing.cancel()
            self._pipelines.pop(partition, None)
            if claim is not None:
                claim.release()
            if lease.held:
                await lease.release()
            log.info("partition %d: lease given up", partition)

    async def _renew(self, lease: Lease, pipeline: Pipeline) -> None:
        """Renews every third of the TTL; stops the pipeline at once when the lease is lost, or when
        its validity runs out before a renewal is answered."""
        while True:
            await asyncio.sleep(min(self.ttl / 3, lease.remaining))
            if not await lease.renew() or not lease.valid():
                log.warning(
                    "partition %d: lease lost (%s); stopping its pipeline",
                    lease.partition,
                    "renewal refused" if not lease.held else "not renewed in time",
                )
                lease.lost()
                pipeline.stop_now()
                return
