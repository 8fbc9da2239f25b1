"""The sink processes ``logmesh up`` runs as its children, each restarted when it dies.

One sink, one partition (the default): today's single sink, started exactly as before. With S sinks
over P partitions, sink i (named ``sink-<i>``) owns the partitions k with k % S == i and stands by
for all the others, so that any partition whose owner dies is taken over by another sink.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from logmesh.common.processes import stop_process

log = logging.getLogger("logmesh")

# What a sink takes besides its settings' flags (``logmesh sink --partitions ...``), by environment.
PARTITIONS_VARIABLE = "LOGMESH_PARTITIONS"
STANDBY_VARIABLE = "LOGMESH_STANDBY"
SINK_NAME_VARIABLE = "LOGMESH_SINK_NAME"
LEASE_TTL_VARIABLE = "LOGMESH_LEASE_TTL"


def _listed(partitions: list[int]) -> str:
    return ",".join(str(k) for k in partitions)


@dataclass(frozen=True)
class SinkRole:
    """What one sink child owns (``primary``) and may take over (``standby``)."""

    name: str
    primary: tuple[int, ...]
    standby: tuple[int, ...]

    def env(self, lease_ttl: float) -> dict[str, str]:
        return {
            SINK_NAME_VARIABLE: self.name,
            PARTITIONS_VARIABLE: _listed(list(self.primary)),
            STANDBY_VARIABLE: _listed(list(self.standby)),
            LEASE_TTL_VARIABLE: f"{lease_ttl:g}",
        }


def sink_roles(sinks: int, partitions: int) -> list[SinkRole]:
    everything = range(partitions)
    return [
        SinkRole(
            f"sink-{i}",
            tuple(k for k in everything if k % sinks == i),
            tuple(k for k in everything if k % sinks != i),
        )
        for i in range(sinks)
    ]


class SinkChildren:
    """Starts, restarts and stops the sinks. ``launch(i)`` starts sink i's process."""

    def __init__(self, count: int, launch: Callable[[int], subprocess.Popen[bytes]]) -> None:
        self._launch = launch
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * count
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def pids(self) -> list[int | None]:
        return [proc.pid if proc is not None else None for proc in self.procs]

    def start(self) -> None:
        for i in range(len(self.procs)):
            self.procs[i] = self._launch(i)
        self._supervisors = [asyncio.create_task(self._supervise(i)) for i in range(len(self.procs))]

    async def _supervise(self, i: int) -> None:
        """Restarts sink i if it dies: it resumes from its store and JetStream redelivers the rest."""
        delay = 0.5
        name = "sink" if len(self.procs) == 1 else f"sink-{i}"
        while not self._stopping:
            proc = self.procs[i]
            assert proc is not None
            code = await asyncio.to_thread(proc.wait)
            if self._stopping:
                return
            log.error("%s exited with code %s; restarting it in %.1f s", name, code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
            if not self._stopping:
                self.procs[i] = self._launch(i)

    async def stop(self, timeout: float = 30) -> int:
        """Each sink finishes its batch, commits, acks and drains; the worst exit code."""
        self._stopping = True
        for task in self._supervisors:  # one may be waiting to restart its sink: no need now
            task.cancel()
        if self._supervisors:
            await asyncio.wait(self._supervisors)
        codes = await asyncio.gather(*(stop_process(p, timeout=timeout) for p in self.procs if p is not None))
        worst: int = max(codes, default=0, key=abs)
        return worst
