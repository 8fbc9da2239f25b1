"""Which partitions this sink serves, decided by leases (``lease.py``), and a pipeline for each.

A primary partition's lease is tried at once and every third of the TTL; a standby partition's only
once its key has been absent for a whole TTL, so a live primary always wins it back first. A partition
won is served until its lease is lost (its pipeline stops at once and leaves what it holds unacked) or
the sink stops (its pipeline commits what it holds, then the lease is given up). There is no
rebalancing: a primary that comes back takes its partition again only once it is free.

A partition this sink cannot serve (its file refused, its store lock held, its store failing) is not
kept: the lease is given up and the partition left alone for at least two TTLs, more after each
failure in a row, so that a standby (which waits a whole TTL of absence) gets its turn.
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
from logmesh.sink.commit import Unservable
from logmesh.sink.lease import Lease
from logmesh.sink.metrics import SinkMetrics
from logmesh.sink.pipeline import Pipeline
from logmesh.sink.place import Place
from logmesh.sink.settings import SinkSettings

log = logging.getLogger("logmesh.sink")

Claim = Callable[[Place], DirLock | None]

# After a failed serve the partition is left alone for this many TTLs, doubled with each failure in a
# row up to the last.
BACKOFF_TTLS = 2.0
MAX_BACKOFF_TTLS = 16.0


def backoff(ttl: float, failures: int) -> float:
    """How long a partition whose serving failed ``failures`` times in a row is left alone."""
    return ttl * min(BACKOFF_TTLS * 2.0 ** (failures - 1), MAX_BACKOFF_TTLS)


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
            # Each gives its lease up and closes its file on the way out.
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _own(self, partition: int, standby: bool, stopping: asyncio.Event) -> None:
        lease = Lease(self._kv, partition, self._owner, self.ttl)
        absent_since: float | None = None
        failures = 0
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
                failed = not await self._serve(partition, lease, stopping)
                if stopping.is_set():
                    return
                failures = failures + 1 if failed else 0
            pause = backoff(self.ttl, failures) if won and failures else self.ttl / 3
            if pause > self.ttl:
                log.warning("partition %d: not served here; trying again in %.1f s", partition, pause)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)

    async def _serve(self, partition: int, lease: Lease, stopping: asyncio.Event) -> bool:
        """Serves the partition while the lease lasts. False when it could not be served here."""
        place = Place(partition, self._count, self._settings.data_dir, self._settings.consumer)
        pipeline = Pipeline(self._settings, place, self._metrics, lease, self._settings.owner_name)
        keeping = [
            asyncio.create_task(self._renew(lease, pipeline)),
            asyncio.create_task(self._expire(lease, pipeline)),
        ]
        claim: DirLock | None = None
        try:
            claim = self._claim(place)
            self._pipelines[partition] = pipeline
            await pipeline.run(self._nc, self._stream, stopping)
            return True
        except (Refused, Unservable) as exc:
            log.error("%s cannot be served here: %s", place, exc)
            return False
        except Exception:
            log.exception("%s stopped on an error", place)
            return False
        finally:
            for task in keeping:
                task.cancel()
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

    @staticmethod
    async def _expire(lease: Lease, pipeline: Pipeline) -> None:
        """Stops the pipeline, and with it the partition's queries, the moment the lease's validity
        runs out, even while a renewal is still waiting for its answer."""
        while True:
            left = lease.remaining
            if left <= 0:
                break
            await asyncio.sleep(left)  # validity only moves on with a renewal: look again then
        log.warning("partition %d: lease no longer valid; stopping its pipeline", lease.partition)
        pipeline.stop_now()
