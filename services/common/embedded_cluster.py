"""An embedded NATS cluster on one machine: N nats-servers (``EmbeddedNats``) on loopback, named
n1..nN, each with a store directory of its own and routes to the others (``nats_cluster``).

``logmesh up --nats-nodes 3`` runs it; one node (the default) stays the single ``EmbeddedNats``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import nats
import orjson
from nats.aio.client import Client

from logmesh.common.embedded import EmbeddedNats
from logmesh.common.nats_cluster import node_config, route_env, server_name
from logmesh.common.processes import free_port
from logmesh.common.waiting import WaitTimeout, wait_until_async

log = logging.getLogger("logmesh.nats")

JETSTREAM_INFO = "$JS.API.INFO"


@dataclass(frozen=True)
class Member:
    """A node as the ready line and ``/stats`` show it."""

    name: str
    url: str
    pid: int | None


class EmbeddedCluster:
    def __init__(self, nats_dir: Path, nodes: int, *, host: str = "127.0.0.1", port: int = 4222, owner: str) -> None:
        """``port``: the first node's client port (0 picks a free one); the others' client ports and
        every route port are free ones."""
        self.host = host
        self.nodes = [
            EmbeddedNats(nats_dir / server_name(i), host=host, port=port if i == 1 else 0, owner=owner)
            for i in range(1, nodes + 1)
        ]
        self.route_ports = [free_port(host) for _ in self.nodes]
        self.authorize(None, {}, None)
        self._supervisors: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def url(self) -> str:
        """Every node's URL, comma-separated: a client moves to another when its node dies."""
        return ",".join(node.url for node in self.nodes)

    def authorize(self, config: str | None, env: Mapping[str, str], route_password: str | None) -> None:
        """The same users and permissions (``config``, passwords in ``env``) on every node, and the
        routes between them, authenticated with ``route_password`` (None: routes without a login,
        as with ``--no-auth``)."""
        routes = [(self.host, port) for port in self.route_ports]
        variables = {**env, **route_env(routes, route_password)}
        for i, (node, route_port) in enumerate(zip(self.nodes, self.route_ports, strict=True), 1):
            own = node_config(
                server_name(i), f"{self.host}:{route_port}", len(self.nodes), authenticated=route_password is not None
            )
            node.authorize((config or "") + own, variables)

    def check_port(self) -> None:
        for node in self.nodes:
            node.check_port()

    def members(self) -> list[Member]:
        return [
            Member(server_name(i), node.url, node.process.pid if node.process is not None else None)
            for i, node in enumerate(self.nodes, 1)
        ]

    async def start(self, timeout: float = 15.0) -> None:
        """Starts every node (each takes clients at once; JetStream waits for a quorum: see
        :func:`wait_jetstream`)."""
        try:
            for node in self.nodes:
                await node.start(timeout)
        except BaseException:
            await self.stop()
            raise

    def supervise(self, restarted: Callable[[], None]) -> None:
        """Restarts a node that dies, as a service manager would: it rejoins the cluster and catches
        up from its own store. ``restarted`` is called with the new process running."""
        self._supervisors = [asyncio.create_task(self._supervise(i, restarted)) for i in range(len(self.nodes))]

    async def _supervise(self, i: int, restarted: Callable[[], None]) -> None:
        node, delay = self.nodes[i], 0.5
        while not self._stopping:
            process = node.process
            if process is None:
                return
            code = await asyncio.to_thread(process.wait)
            if self._stopping or node.process is not process:
                return
            log.error("nats-server %s exited with code %s; restarting it in %.1f s", server_name(i + 1), code, delay)
            await asyncio.sleep(delay)
            try:
                await node.start()
            except (RuntimeError, OSError) as exc:
                log.error("nats-server %s did not restart: %s", server_name(i + 1), exc)
                delay = min(delay * 2, 10.0)
                continue
            log.info("nats-server %s restarted (pid %s)", server_name(i + 1), node.process and node.process.pid)
            delay = 0.5
            restarted()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping = True
        for task in self._supervisors:
            task.cancel()
        if self._supervisors:
            await asyncio.wait(self._supervisors)
        await asyncio.gather(*(node.stop(timeout) for node in self.nodes))

    def stop_sync(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            node.stop_sync(timeout)


async def jetstream_ready(nc: Client) -> bool:
    """Whether JetStream answers for the whole cluster: it does once the nodes have elected a meta
    leader (before, ``$JS.API.INFO`` gets no answer or an error)."""
    try:
        reply = await nc.request(JETSTREAM_INFO, b"", timeout=1.0)
    except (TimeoutError, nats.errors.NoRespondersError, nats.errors.Error):
        return False
    try:
        answer = orjson.loads(reply.data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(answer, dict) and "error" not in answer


async def wait_jetstream(nc: Client, timeout: float, stopping: asyncio.Event | None = None) -> bool:
    """Waits until :func:`jetstream_ready`; False when ``stopping`` is set first. ``WaitTimeout``
    names what did not happen."""
    try:
        done = await wait_until_async(
            lambda: jetstream_ready(nc),
            timeout,
            "the JetStream cluster to elect a meta leader",
            interval=0.2,
            stopping=stopping,
        )
    except WaitTimeout as exc:
        raise RuntimeError(f"{exc}: see the nats-server logs under the data directory's nats/") from None
    return done is not None
