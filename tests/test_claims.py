"""A data directory or a port that another process holds is refused at once, in one line that says
who holds it; the holder keeps working and loses nothing."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from logmesh.common.claims import NATS_LOCK, InUse, PortInUse, listen_socket, lock_data_dir
from logmesh.common.processes import free_port, python_command
from tests.harness import NatsServer, Service, Up, event, wait_for

pytestmark = pytest.mark.timeout(120)

# From spawning the interpreter to its exit, imports included, on a loaded machine. The failures
# guarded against here never exit at all.
REFUSED_WITHIN = 10.0
SINCE = r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def refused(*args: str) -> tuple[str, float]:
    """Runs ``logmesh *args``, which must exit 1 promptly having printed exactly one line (stderr)."""
    started = time.monotonic()
    done = subprocess.run(python_command(*args), capture_output=True, text=True, timeout=60)
    elapsed = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert elapsed < REFUSED_WITHIN, f"took {elapsed:.1f} s"
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0], elapsed


def in_use_line(command: str, what: str, target: Path, pid: int, holder: str) -> str:
    return rf"logmesh {command}: {what} {re.escape(str(target.resolve()))} is in use by PID {pid} \({holder}, {SINCE}\)"


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def test_a_second_up_on_the_same_data_dir_is_refused_and_the_first_loses_nothing(
    make_up: Callable[..., Up], tmp_path: Path
) -> None:
    data_dir = tmp_path / "shared"
    first = make_up(data_dir=data_dir)
    assert first.service.proc is not None
    first_pid = first.service.proc.pid
    events = [event(f"t{i % 3}", f"kept-{i}") for i in range(300)]
    assert first.publish(events[:200]).status_code == 202
    first.settled_stats(arrived=200)

    again = ["up", "--data-dir", str(data_dir), "--http-port", str(free_port()), "--nats-port", str(free_port())]
    line, _ = refused(*again)
    assert re.fullmatch(in_use_line("up", "data dir", data_dir, first_pid, "logmesh up"), line), line
    # Nor may a standalone sink take the store from under it.
    line, _ = refused("sink", "--data-dir", str(data_dir), "--nats-url", first.nats_url)
    assert re.fullmatch(in_use_line("sink", "data dir", data_dir, first_pid, "logmesh up"), line), line
    # The JetStream store is still the first's alone.
    assert orjson.loads((data_dir / "nats" / NATS_LOCK).read_bytes())["pid"] == first_pid

    assert first.publish(events[200:]).status_code == 202
    assert first.settled_stats(arrived=300)["unique_processed"] == 300
    assert first.stop() == 0

    reopened = make_up(data_dir=data_dir)
    stats = reopened.settled_stats(arrived=300)
    assert stats["unique_processed"] == 300 and stats["invariant_holds"]
    assert reopened.http.get("/events/t2/kept-299").status_code == 200


def test_up_refuses_a_data_dir_that_a_standalone_sink_holds(tmp_path: Path, service: Callable[..., Service]) -> None:
    data_dir = tmp_path / "data"
    # No NATS there: the sink holds its claims while it waits.
    sink = service(["sink", "--data-dir", str(data_dir), "--nats-url", f"nats://127.0.0.1:{free_port()}"])
    assert sink.proc is not None
    pid = sink.proc.pid
    wait_for(lambda: orjson.loads((data_dir / "store.lock").read_bytes())["pid"] == pid, 20, "the sink's claim")

    line, _ = refused("up", "--data-dir", str(data_dir), "--http-port", str(free_port()), "--nats-port", "0")
    assert re.fullmatch(in_use_line("up", "data dir", data_dir, pid, "logmesh sink"), line), line
    assert not (data_dir / "nats").exists(), "up started a nats-server before it was refused"
    assert sink.alive()


@pytest.mark.parametrize("command", ["up", "ingest", "query"])
def test_a_port_in_use_ends_the_command_at_once(command: str, taken_port: int, tmp_path: Path) -> None:
    args = [command, "--http-port", str(taken_port), "--nats-url", f"nats://127.0.0.1:{free_port()}"]
    if command == "up":
        args = ["up", "--http-port", str(taken_port), "--nats-port", str(free_port()), "--data-dir", str(tmp_path)]
    line, _ = refused(*args)
    assert (
        line == f"logmesh {command}: port {taken_port} is in use: stop what runs there or pick another with --http-port"
    )
    if command == "up":
        assert not (tmp_path / "nats").exists(), "up started a nats-server before it was refused"


def test_the_nats_port_in_use_is_refused_in_one_line(taken_port: int, tmp_path: Path) -> None:
    line, _ = refused("up", "--nats-port", str(taken_port), "--http-port", "0", "--data-dir", str(tmp_path))
    assert line.startswith(f"logmesh up: port {taken_port} is in use: "), line


def test_one_jetstream_store_one_nats_server(tmp_path: Path) -> None:
    running = NatsServer(tmp_path / "nats").start()
    try:
        with pytest.raises(InUse, match=rf"nats store .* is in use by PID {os.getpid()} \(nats-server of the tests"):
            NatsServer(tmp_path / "nats").start()
        running.kill()  # a crashed server leaves its store free
        running.start()
    finally:
        running.stop()


def test_a_claim_names_its_holder_and_ends_with_it(tmp_path: Path) -> None:
    held = lock_data_dir(tmp_path, "logmesh up")
    assert held is not None
    with pytest.raises(InUse) as refusal:
        lock_data_dir(tmp_path, "logmesh up")
    assert refusal.value.holder is not None and refusal.value.holder.pid == os.getpid()
    assert re.fullmatch(
        rf"data dir {re.escape(str(tmp_path))} is in use by PID \d+ \(logmesh up, {SINCE}\)", str(refusal.value)
    )
    held.release()
    again = lock_data_dir(tmp_path, "logmesh sink")
    assert again is not None
    again.release()


def test_listen_socket_refuses_a_taken_port(taken_port: int) -> None:
    with pytest.raises(PortInUse, match=f"^port {taken_port} is in use: .* --http-port$"):
        listen_socket("127.0.0.1", taken_port, "--http-port")
    with listen_socket("127.0.0.1", 0, "--http-port") as sock:
        assert sock.getsockname()[1] > 0
