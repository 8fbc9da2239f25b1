"""What a process claims for itself before it starts anything: a directory (an exclusive ``flock`` on
a lock file in it) or a TCP port (a socket bound before the server starts). A claim already held is
refused at once, in one line that says who holds it, rather than found out later as a crash loop, a
hang, or two servers writing one store.

The lock files: ``logmesh.lock`` for a whole data directory (``up``, ``demo``, a standalone ``sink``),
``store.lock`` for the DuckDB store (every sink), ``nats.lock`` for a JetStream store directory (the
embedded nats-server). Each holds the holder's PID, command and start time, for the refusal.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson

from logmesh.common.waiting import WaitTimeout, wait_until

DATA_LOCK = "logmesh.lock"
STORE_LOCK = "store.lock"
NATS_LOCK = "nats.lock"


class Refused(Exception):
    """A command cannot start; the message is the one line that says why."""


@dataclass(frozen=True)
class Holder:
    pid: int
    command: str
    since: str

    def __str__(self) -> str:
        return f"PID {self.pid} ({self.command}, since {self.since})"


class InUse(Refused):
    def __init__(self, what: str, target: Path, holder: Holder | None) -> None:
        by = holder if holder is not None else "another process"
        super().__init__(f"{what} {target} is in use by {by}")
        self.holder = holder


class DirLock:
    """An exclusive lock on ``target``, taken through the lock file ``path``. It lasts until
    ``release``, or until this process and every child given ``fd`` (``spawn(pass_fds=...)``) have
    exited: a child that outlives a killed parent keeps the claim."""

    def __init__(self, path: Path, what: str, target: Path, command: str) -> None:
        self.path = path
        self.what = what
        self.target = target.resolve()
        self.command = command
        self._fd: int | None = None

    @property
    def fd(self) -> int:
        assert self._fd is not None, "not held"
        return self._fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DirLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise Refused(f"cannot lock {self.what} {self.target}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InUse(self.what, self.target, _holder_of(self.path)) from None
        since = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        record = orjson.dumps({"pid": os.getpid(), "command": self.command, "since": since})
        os.ftruncate(fd, 0)
        os.pwrite(fd, record + b"\n", 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the lock goes with the last descriptor of this open file
            self._fd = None


def _read_holder(path: Path) -> Holder | None:
    try:
        record = orjson.loads(path.read_bytes())
        return Holder(int(record["pid"]), str(record["command"]), str(record["since"]))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def _holder_of(path: Path) -> Holder | None:
    # The holder writes its record just after taking the lock: give it a moment.
    try:
        return wait_until(lambda: _read_holder(path), 1.0, f"the holder of {path}", interval=0.02)
    except WaitTimeout:
        return None


def lock_data_dir(data_dir: Path, command: str, *, parent_may_hold: bool = False) -> DirLock | None:
    """The whole data directory. With ``parent_may_hold``, a directory held by this process's parent
    (the ``up`` that started this sink) is accepted, and None returned: the parent's claim covers it."""
    lock = DirLock(data_dir / DATA_LOCK, "data dir", data_dir, command)
    try:
        held = lock.acquire()
    except InUse as exc:
        if parent_may_hold and exc.holder is not None and exc.holder.pid == os.getppid():
            return None
        raise
    keep_private(data_dir)
    return held


def keep_private(directory: Path) -> None:
    """Events, secrets and stream are this user's: other users of the machine may not even list the
    data directory, and what the process creates from now on is its owner's alone."""
    os.umask(0o077)
    try:
        if directory.stat().st_uid == os.getuid():
            directory.chmod(0o700)
    except OSError as exc:
        raise Refused(f"cannot make {directory} private: {exc.strerror or exc}") from None


def lock_store(data_dir: Path, store: Path, command: str) -> DirLock:
    """The DuckDB store in ``data_dir``, whoever holds the directory."""
    return DirLock(data_dir / STORE_LOCK, "store", store, command).acquire()


def lock_nats_store(store_dir: Path, command: str) -> DirLock:
    """A JetStream store directory: two nats-servers on one store lose acknowledged messages."""
    return DirLock(store_dir / NATS_LOCK, "nats store", store_dir, command).acquire()


class PortInUse(Refused):
    pass


def listen_socket(host: str, port: int, flag: str) -> socket.socket:
    """A TCP socket bound to ``host:port``, for the HTTP server to take over. ``flag`` names the
    setting that picks the port, for the refusal."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except OSError as exc:
        raise Refused(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} is in use: stop what runs there or pick another with {flag}") from None
        raise Refused(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock
