"""``logmesh up`` is one scrape target: ``GET /metrics`` on its HTTP port holds the sink's metrics
besides ingest's and query's. It binds its HTTP and NATS ports and no fixed port besides (the sink's
own endpoint is on an ephemeral loopback port), so that two of them run side by side on one machine."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Up, event, wait_for

pytestmark = pytest.mark.timeout(120)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def family_names(text: str) -> list[str]:
    return [family.name for family in text_string_to_metric_families(text)]


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (Linux)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return found


def listening_ports(pid: int) -> dict[int, str]:
    """TCP ports that ``pid`` or a descendant listens on, with the address (Linux: /proc)."""
    inodes = set()
    for p in process_tree(pid):
        for fd in Path(f"/proc/{p}/fd").glob("*"):
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    ports = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                host = socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else f"v6:{address}"
                ports[int(port, 16)] = host
    return ports


def ready_line(up: Up) -> str:
    """The line ``up`` prints once ready (just after /readyz turns 200)."""

    def printed() -> str | None:
        return next((line for line in up.service.log().splitlines() if line.startswith("logmesh is up:")), None)

    return wait_for(printed, 30, "the ready line")


def sink_of(up: Up) -> int:
    assert up.service.proc is not None
    for pid in process_tree(up.service.proc.pid):
        if b"sink" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
            return pid
    raise AssertionError("no sink child")


@pytest.fixture
def make_default_up(make_up: Callable[..., Up], monkeypatch: pytest.MonkeyPatch) -> Callable[..., Up]:
    """``logmesh up`` as a user runs it: no --metrics-port (the tests' environment sets one)."""
    monkeypatch.delenv("LOGMESH_METRICS_PORT", raising=False)
    return make_up


def test_up_serves_the_sinks_metrics_on_its_http_port_and_binds_no_other_fixed_port(
    make_default_up: Callable[..., Up],
) -> None:
    first, second = make_default_up(), make_default_up()
    assert first.publish([event("a", "1"), event("a", "2"), event("b", "3")]).status_code == 202
    assert first.publish([event("a", "1")]).status_code == 202
    stats = first.settled_stats(arrived=4)

    text = first.http.get("/metrics").text
    names = family_names(text)
    assert len(names) == len(set(names)), "a metric family served twice"
    got = samples(text)
    assert got[("logmesh_events_received_total", ())] == stats["received"] == 3
    assert got[("logmesh_events_unique_total", ())] == stats["unique_processed"] == 3
    assert got[("logmesh_events_duplicate_total", (("layer", "window"),))] == stats["duplicates"]["window"] == 1
    assert got[("logmesh_topic_events_unique_total", (("topic", "a"),))] == 2
    assert got[("logmesh_sink_ready", ())] == 1
    assert got[("logmesh_ingest_events_total", (("outcome", "stored"),))] == 3  # up's own, beside the sink's
    assert got[("logmesh_sink_metrics_missing", ())] == 0

    for up in (first, second):
        assert up.service.proc is not None
        sink_port = up.stats()["sink"]["metrics_port"]
        ports = listening_ports(up.service.proc.pid)
        assert set(ports) == {up.http_port, up.nats_port, sink_port}, ports
        assert ports[sink_port] == "127.0.0.1"  # the sink's own endpoint: loopback only, ephemeral
        assert "Address already in use" not in up.service.log()
        assert samples(up.http.get("/metrics").text)[("logmesh_sink_ready", ())] == 1

    # The ready line names the ports bound and the data directory's absolute path.
    ready = ready_line(first)
    assert f"http://127.0.0.1:{first.http_port} " in ready and f"NATS nats://127.0.0.1:{first.nats_port} " in ready
    assert ready.endswith(f"data {first.data_dir.resolve()}  secrets {(first.data_dir / 'secrets').resolve()}")
    assert "metrics" not in ready.split("NATS", 1)[1]  # no port of the sink's own to name


def test_up_serves_its_own_metrics_and_says_the_sinks_are_missing_when_the_sink_does_not_answer(
    make_default_up: Callable[..., Up],
) -> None:
    up = make_default_up()
    sink = sink_of(up)
    os.kill(sink, signal.SIGSTOP)
    try:
        text = up.http.get("/metrics", timeout=30).text
    finally:
        os.kill(sink, signal.SIGCONT)
    got = samples(text)
    assert got[("logmesh_sink_metrics_missing", ())] == 1
    assert ("logmesh_events_received_total", ()) not in got
    assert "logmesh_http_request_seconds" in family_names(text)  # up's own: served all the same

    def back() -> bool:
        return samples(up.http.get("/metrics").text).get(("logmesh_sink_metrics_missing", ())) == 0

    wait_for(back, 30, "the sink's metrics to be back")


def test_up_with_metrics_port_also_serves_the_sinks_metrics_there(make_default_up: Callable[..., Up]) -> None:
    up = make_default_up({"LOGMESH_METRICS_PORT": "0"})  # asked for: a port of the sink's own (0: a free one)
    port = up.stats()["sink"]["metrics_port"]
    ready = ready_line(up)
    assert ready.endswith(f"sink metrics also on 127.0.0.1:{port}")
    assert up.service.proc is not None
    assert port in listening_ports(up.service.proc.pid)
