"""The ``cluster`` part of ``/stats``: the NATS nodes, which of them hold the stream, who leads it.

JetStream names the servers that hold the stream (its leader and replicas) but not where they listen
or their process ids; the ``cluster_nodes`` setting adds those (``logmesh up`` knows them; an operator
may write them down): ``n1=nats://10.0.0.1:4222@1234,n2=nats://10.0.0.2:4222``, ``@<pid>`` optional.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.js.api import StreamInfo

from logmesh.common.jetstream import shown_url

_MAX_PID_DIGITS = 10


@dataclass(frozen=True, slots=True)
class NodeAddress:
    name: str
    url: str  # credentials hidden
    pid: int | None


def parse_cluster_nodes(text: str) -> tuple[NodeAddress, ...]:
    """The nodes a ``cluster_nodes`` setting names; ValueError says which entry is wrong and how."""
    if not text.strip():
        return ()
    nodes: list[NodeAddress] = []
    for number, entry in enumerate(text.split(","), start=1):
        entry = entry.strip()
        name, equals, rest = entry.partition("=")
        name, rest = name.strip(), rest.strip()
        if not (equals and name and rest) or any(c.isspace() for c in name):
            raise ValueError(
                f"entry {number} ({entry[:64]!r}) must be name=url or name=url@pid, like n1=nats://127.0.0.1:4222@1234"
            )
        url, at, pid = rest.rpartition("@")
        # A URL may hold user:password@host: only digits after the last @ are a process id.
        if not (at and pid.isascii() and pid.isdigit() and len(pid) <= _MAX_PID_DIGITS and url):
            url, pid = rest, ""
        if any(node.name == name for node in nodes):
            raise ValueError(f"entry {number} names node {name!r} a second time")
        nodes.append(NodeAddress(name, shown_url(url), int(pid) if pid else None))
    return tuple(nodes)


def cluster_state(stream: StreamInfo | None, known: tuple[NodeAddress, ...]) -> dict[str, Any]:
    """The ``cluster`` field: the nodes named in the setting (in its order), then any other server
    JetStream names as holding the stream; ``ok`` is whether the node holds a current copy."""
    holding: dict[str, bool] = {}
    leader: str | None = None
    replicas: int | None = None
    if stream is not None:
        replicas = stream.config.num_replicas
        cluster = stream.cluster
        if cluster is not None and cluster.leader:
            leader = cluster.leader
            holding[leader] = True
        for peer in (cluster.replicas if cluster is not None else None) or []:
            if peer.name:
                holding[peer.name] = bool(peer.current) and not peer.offline
    nodes = [{"name": n.name, "url": n.url, "ok": holding.get(n.name, False), "pid": n.pid} for n in known]
    named = {n.name for n in known}
    nodes += [{"name": name, "url": None, "ok": ok, "pid": None} for name, ok in holding.items() if name not in named]
    return {"nodes": nodes, "stream_leader": leader, "replicas": replicas}
