"""A NATS cluster of real nats-servers on loopback: routes authenticated, clients that ride through
the death of their server, JetStream ready cluster-wide."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from logmesh.common.embedded_cluster import EmbeddedCluster, wait_jetstream
from logmesh.common.jetstream import close, connect
from logmesh.common.nats_cluster import ROUTE_PASSWORD_VARIABLE, node_config, route_env, server_name
from logmesh.common.natsio import NatsIo
from logmesh.common.publisher import STORED, AckedPublisher, Outgoing
from logmesh.common.secrets_store import new_secret
from tests.harness import wait_for

PASSWORD = "Aroutepasswordroutepassword1"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    nodes = EmbeddedCluster(tmp_path / "nats", 3, port=0, owner="the tests")
    nodes.authorize(None, {}, PASSWORD)
    asyncio.run(nodes.start())
    yield nodes
    nodes.stop_sync()


async def _routed(sender_url: str, receiver_url: str, timeout: float = 0.5) -> bool:
    """Whether a message published on one node reaches a subscriber on the other (a route joins them)."""
    receiver, sender = await nats.connect(receiver_url), await nats.connect(sender_url)
    try:
        sub = await receiver.subscribe("probe")
        await receiver.flush()
        await asyncio.sleep(0.1)  # the interest crosses the route
        await sender.publish("probe", b"x")
        await sender.flush()
        try:
            await sub.next_msg(timeout)
            return True
        except TimeoutError:
            return False
    finally:
        await receiver.close()
        await sender.close()


def test_the_nodes_route_to_each_other_and_jetstream_gets_a_meta_leader(cluster: EmbeddedCluster) -> None:
    async def go() -> None:
        nc = await nats.connect(cluster.url.split(","))
        try:
            assert await wait_jetstream(nc, 30)
        finally:
            await nc.close()
        first, *others = [node.url for node in cluster.nodes]
        for other in others:
            assert await wait_for_async(functools.partial(_routed, other, first))

    asyncio.run(go())
    assert [m.name for m in cluster.members()] == ["n1", "n2", "n3"]
    assert all(m.pid is not None for m in cluster.members())
    for node in cluster.nodes:  # the password is in no file the nodes were given
        assert PASSWORD not in (node.store_dir / "nats-server.conf").read_text()


async def wait_for_async(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> bool:
    """Polls ``check`` until it is true; False after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.2)
    return False


def test_a_node_with_a_wrong_route_password_is_refused(tmp_path: Path) -> None:
    nodes = EmbeddedCluster(tmp_path / "nats", 3, port=0, owner="the tests")
    nodes.authorize(None, {}, PASSWORD)
    # Node 3 logs in to the others (and lets them in) with another password.
    routes = [(nodes.host, port) for port in nodes.route_ports]
    own = node_config(server_name(3), f"{nodes.host}:{nodes.route_ports[2]}", 3)
    nodes.nodes[2].authorize(own, route_env(routes, new_secret()))
    try:
        asyncio.run(nodes.start())
        n1, n2, n3 = (node.url for node in nodes.nodes)

        async def go() -> None:
            assert await wait_for_async(lambda: _routed(n2, n1))  # the right password joins n1 and n2
            assert not await _routed(n3, n1, timeout=1.5)
            assert not await _routed(n1, n3, timeout=1.0)

        asyncio.run(go())
        wait_for(lambda: "Authentication Failure" in nodes.nodes[0].log_path.read_text(), 10, "n1 to refuse n3")
    finally:
        nodes.stop_sync()
    assert ROUTE_PASSWORD_VARIABLE in (nodes.nodes[0].store_dir / "nats-server.conf").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("io", ["fast", "plain"])
def test_a_client_moves_to_another_node_when_its_server_is_killed(cluster: EmbeddedCluster, io: NatsIo) -> None:
    """Both NATS paths reconnect to another URL of the list by themselves; an acked publish retried
    with the same ids gets through once the stream has a leader again."""

    async def go() -> None:
        nc: Client = await connect(cluster.url, "tests", io=io)
        try:
            assert await wait_jetstream(nc, 30)
            js = nc.jetstream()
            await js.add_stream(name="T", subjects=["t.>"], num_replicas=3)
            before = nc.connected_url
            assert before is not None
            victim = next(node for node in cluster.nodes if node.port == before.port)
            assert victim.process is not None
            os.kill(victim.process.pid, signal.SIGKILL)
            assert await wait_for_async(lambda: _moved(nc, before.port))
            publisher = AckedPublisher(nc)
            await publisher.start()
            result = await publisher.publish([Outgoing("t.a", b"1", "id-1"), Outgoing("t.b", b"2", "id-2")], 5, 25)
            assert result.results == [STORED, STORED]
            again = await publisher.publish([Outgoing("t.a", b"1", "id-1")], 5, 25)
            assert again.duplicates == 1  # the window survived
            await publisher.stop()
        finally:
            await close(nc)

    asyncio.run(go())


async def _moved(nc: Client, port: int | None) -> bool:
    url = nc.connected_url
    return nc.is_connected and url is not None and url.port != port
