"""With NATS unreachable, ``up`` and ``sink`` say what they wait for, and the first SIGTERM stops them
(and the sink under ``up``) at once."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from logmesh.common.processes import children, free_port
from tests.harness import Service, wait_for

pytestmark = pytest.mark.timeout(120)

STOPS_WITHIN = 5.0


def stop_and_time(svc: Service) -> tuple[int, float]:
    """SIGTERM, then the seconds until the process has exited."""
    assert svc.proc is not None
    started = time.monotonic()
    svc.proc.send_signal(signal.SIGTERM)
    code = svc.proc.wait(60)
    return code, time.monotonic() - started


def test_up_with_unreachable_nats_says_so_and_stops_at_once(tmp_path: Path, service: Callable[..., Service]) -> None:
    port = free_port()  # nothing listens there
    given = f"nats://logmesh:s3cret-pw@127.0.0.1:{port}"
    url = f"nats://logmesh:***@127.0.0.1:{port}"  # as the logs show it: no password in a log line
    up = service(["up", "--data-dir", str(tmp_path / "data"), "--http-port", "0", "--nats-url", given])
    assert up.proc is not None
    pid = up.proc.pid
    wait_for(lambda: f"logmesh: waiting for NATS at {url}" in up.log(), 30, "up to say what it waits for")
    sinks = wait_for(lambda: children(pid), 30, "the sink child")
    # One line from each connection that waits: ingest's and query's in up, and the sink's.
    waiting = f"logmesh.nats: waiting for NATS at {url}"
    wait_for(lambda: up.log().count(waiting) >= 3, 30, "the sink to wait for NATS too")
    assert "logmesh is up" not in up.log()

    code, took = stop_and_time(up)
    assert code == 0, up.log()
    assert took < STOPS_WITHIN, f"up took {took:.1f} s to stop:\n{up.log()}"
    for sink in sinks:
        assert not Path(f"/proc/{sink}").exists(), "the sink outlived up"
    assert "killing it" not in up.log()
    assert f"stopped while waiting for NATS at {url}" in up.log()  # the sink's own words
    assert "s3cret-pw" not in up.log()


def test_sink_with_unreachable_nats_stops_at_once(tmp_path: Path, service: Callable[..., Service]) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    sink = service(["sink", "--data-dir", str(tmp_path / "data"), "--nats-url", url])
    wait_for(lambda: f"waiting for NATS at {url}" in sink.log(), 30, "the sink to say what it waits for")
    code, took = stop_and_time(sink)
    assert code == 0, sink.log()
    assert took < STOPS_WITHIN, f"the sink took {took:.1f} s to stop:\n{sink.log()}"
    assert f"stopped while waiting for NATS at {url}" in sink.log()
