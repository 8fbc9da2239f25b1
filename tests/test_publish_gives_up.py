"""``logmesh publish`` against a target that fails: it says once what fails, gives up after
``--give-up-after`` seconds with what was acknowledged, and stops at the first SIGTERM or Ctrl+C."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from logmesh.common.jetstream import ensure_stream
from logmesh.common.processes import free_port, kill_process, python_command
from logmesh.common.settings import CommonSettings
from tests.harness import NatsServer, wait_for

pytestmark = pytest.mark.timeout(120)

# From spawning the interpreter to its exit, imports and the workload included, on a loaded machine,
# beyond the time it was told to keep trying. Before, it never exited at all.
STARTUP = 10.0
STOPS_WITHIN = 3.0
AGAIN = "the same command with --run-id t1 sends them again (duplicates are dropped)"


def publish(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            python_command("publish", "--events", "2000", "--run-id", "t1", *args), stdout=out, stderr=out
        )


def finished(proc: subprocess.Popen[bytes], log: Path, timeout: float) -> tuple[int, list[str]]:
    try:
        code = proc.wait(timeout)
    finally:
        kill_process(proc)
    return code, log.read_text().splitlines()


@pytest.fixture
def nothing_listens() -> int:
    return free_port()


@pytest.mark.parametrize("scheme", ["http", "nats"])
def test_publish_to_an_unreachable_target_gives_up_in_time_and_says_why(
    tmp_path: Path, nothing_listens: int, scheme: str
) -> None:
    target = f"{scheme}://127.0.0.1:{nothing_listens}"
    started = time.monotonic()
    proc = publish("--url" if scheme == "http" else "--nats-url", target, "--give-up-after", "1", log=tmp_path / "out")
    code, lines = finished(proc, tmp_path / "out", 1 + STARTUP)
    took = time.monotonic() - started
    assert code == 1, lines
    assert took >= 1.0
    # One line for the kind of failure, however many retries; then the summary.
    retrying = [line for line in lines if "retrying" in line]
    assert len(retrying) == 1 and retrying[0].endswith(f"connection refused at {target}; retrying for up to 1 s")
    assert lines[-1] == (
        f"logmesh publish: gave up after 1 s: connection refused at {target}; 0 of 2,000 events acknowledged; {AGAIN}"
    )
    assert "Traceback" not in "\n".join(lines)


def test_publish_into_a_full_stream_gives_up_saying_what_jetstream_answered(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "nats").start()
    try:

        async def tiny_stream() -> None:
            nc = await nats.connect(server.url)
            await ensure_stream(nc.jetstream(), CommonSettings(stream_max_bytes=100))
            await nc.close()

        asyncio.run(tiny_stream())
        proc = publish("--nats-url", server.url, "--give-up-after", "1", log=tmp_path / "out")
        code, lines = finished(proc, tmp_path / "out", 1 + STARTUP)
    finally:
        server.stop()
    assert code == 1, lines
    assert len([line for line in lines if "retrying" in line]) == 1, lines
    assert lines[-1] == (
        "logmesh publish: gave up after 1 s: JetStream did not store every event (503 maximum bytes exceeded) "
        f"at {server.url}; "
        f"0 of 2,000 events acknowledged; {AGAIN}"
    )


@pytest.fixture
def retrying_publish(
    tmp_path: Path, nothing_listens: int, request: pytest.FixtureRequest
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    scheme = request.param
    flag = "--url" if scheme == "http" else "--nats-url"
    proc = publish(flag, f"{scheme}://127.0.0.1:{nothing_listens}", log=tmp_path / "out")
    try:
        wait_for(lambda: "retrying for up to 30 s" in (tmp_path / "out").read_text(), 30, "publish to retry")
        yield tmp_path / "out", proc
    finally:
        kill_process(proc)


@pytest.mark.parametrize(
    ("retrying_publish", "sig"), [("http", signal.SIGTERM), ("nats", signal.SIGINT)], indirect=["retrying_publish"]
)
def test_the_first_sigterm_or_ctrl_c_stops_publish_at_once(
    retrying_publish: tuple[Path, subprocess.Popen[bytes]], sig: signal.Signals
) -> None:
    log, proc = retrying_publish
    started = time.monotonic()
    proc.send_signal(sig)
    code, lines = finished(proc, log, 30)
    took = time.monotonic() - started
    assert took < STOPS_WITHIN, f"took {took:.1f} s"
    assert code == 128 + sig.value
    assert lines[-1] == f"logmesh publish: stopped by {sig.name}; 0 of 2,000 events acknowledged; {AGAIN}"
