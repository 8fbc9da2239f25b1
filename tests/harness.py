"""Real processes for the tests: nats-server from the wheel, logmesh services, on free ports in temp
dirs. Every process a test starts, it stops."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import nats
import orjson
from nats.aio.client import Client

from logmesh.bench import truth
from logmesh.common.embedded import EmbeddedNats
from logmesh.common.jetstream import ensure_stream
from logmesh.common.nats_roles import inbox_prefix, password_secret
from logmesh.common.processes import free_port, kill_process, python_command, spawn, stop_process_sync
from logmesh.common.secrets_store import INGEST_TOKEN, QUERY_TOKEN, read_secret
from logmesh.common.settings import ServiceSettings
from logmesh.common.waiting import wait_until

T = TypeVar("T")


def wait_for(condition: Callable[[], T | Literal[False] | None], timeout: float = 20.0, what: str = "condition") -> T:
    """Polls ``condition`` until it returns something truthy; fails the test after ``timeout`` s.
    Connection errors count as "not yet"."""
    return wait_until(condition, timeout, what, retry_on=(httpx.HTTPError, OSError, KeyError, nats.errors.Error))


class NatsServer:
    """The embedded nats-server launcher, driven from synchronous test code."""

    def __init__(self, store_dir: Path, port: int | None = None) -> None:
        self.launcher = EmbeddedNats(store_dir, port=port or 0, owner="the tests")

    @property
    def port(self) -> int:
        return self.launcher.port

    @property
    def url(self) -> str:
        return self.launcher.url

    def start(self) -> NatsServer:
        self.launcher.start_sync()
        return self

    def kill(self) -> None:
        self.launcher.kill()

    def stop(self) -> None:
        self.launcher.stop_sync()


class Service:
    """One ``logmesh <command>`` process."""

    def __init__(self, args: list[str], env: Mapping[str, str] | None = None, log_path: Path | None = None) -> None:
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = spawn(python_command(*self.args), env=self.env, stdout=out, stderr=out)
        finally:
            if not isinstance(out, int):
                out.close()  # the child has its own copy of the descriptor
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.proc is not None:
            kill_process(self.proc)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait: the graceful path. Returns the exit code; raises if it had to be killed."""
        assert self.proc is not None
        return stop_process_sync(self.proc, timeout, kill_is_failure=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""


def run_together(
    runs: Mapping[str, list[str]], env: Mapping[str, str] | None = None, timeout: float = 40
) -> dict[str, subprocess.CompletedProcess[str]]:
    """``logmesh <args>`` for each entry, as real processes started together (a refusal each is a
    whole interpreter start: in turn they would add up), with what each printed."""
    procs = {
        name: subprocess.Popen(
            python_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        for name, args in runs.items()
    }
    done = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=timeout)
            done[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in procs.values():
            proc.kill()
            proc.wait()
    return done


class ScopedTokens(httpx.Auth):
    """The token each request needs: the ingest token for ``/publish``, the read token for the rest.
    A request that brings its own ``Authorization`` keeps it (the tests of refusals)."""

    def __init__(self, ingest: str | None, read: str | None) -> None:
        self.ingest, self.read = ingest, read

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.ingest if request.url.path == "/publish" else self.read
        if token and "authorization" not in request.headers:
            request.headers["Authorization"] = f"Bearer {token}"
        yield request


# What the ``service`` fixture gives every ingest and query it starts, and their clients use.
SERVICE_TOKENS = {"LOGMESH_INGEST_TOKEN": "tests-ingest-token", "LOGMESH_QUERY_TOKEN": "tests-query-token"}
SERVICE_AUTH = ScopedTokens(SERVICE_TOKENS["LOGMESH_INGEST_TOKEN"], SERVICE_TOKENS["LOGMESH_QUERY_TOKEN"])


@dataclass(frozen=True)
class UpNode:
    """A nats-server ``up`` started, as its ready line names it."""

    name: str
    url: str
    pid: int


_READY = "logmesh is up:"
_READY_CLUSTER = re.compile(r"  nodes \[(?P<nodes>[^]]*)\]  partitions (?P<partitions>\d+)  sinks \[(?P<sinks>[^]]*)\]")
_READY_NODE = re.compile(r"(?P<name>\S+) (?P<url>nats://\S+) pid (?P<pid>\d+)")
_READY_SINK = re.compile(r"sink-\d+ pid (?P<pid>\d+)")


class Up:
    """``logmesh up`` as a separate process: embedded NATS, sink child, ingest + query on one port.
    Its HTTP client carries the tokens ``up`` generated (``auth``); ``nats_url`` is the admin's.
    ``nats_nodes``, ``partitions``, ``sinks``: a NATS cluster on loopback and partitioned sinks
    (``nodes`` and ``sink_pids`` then say what runs, from the ready line)."""

    def __init__(
        self,
        data_dir: Path,
        env: Mapping[str, str] | None = None,
        *,
        nats_nodes: int = 1,
        partitions: int = 1,
        sinks: int = 1,
    ) -> None:
        self.data_dir = data_dir
        self.http_port = free_port()
        self.nats_port = free_port()
        self.clustered = nats_nodes > 1 or partitions > 1 or sinks > 1
        args = ["up", "--data-dir", str(data_dir), "--http-port", str(self.http_port)]
        args += ["--nats-port", str(self.nats_port)]
        if self.clustered:
            args += ["--nats-nodes", str(nats_nodes), "--partitions", str(partitions), "--sinks", str(sinks)]
        data_dir.mkdir(parents=True, exist_ok=True)
        self.service = Service(args, env, log_path=data_dir / "up.log")
        self.http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def nats_url(self) -> str:
        """The embedded server's URL (every node's, comma-separated, in a cluster), as its admin
        user when authorization is on: the tests look at and break what they need to."""
        password = self.secret(password_secret("admin"))
        user = f"admin:{password}@" if password else ""
        if not self.clustered:
            return f"nats://{user}127.0.0.1:{self.nats_port}"
        return ",".join(node.url.replace("nats://", f"nats://{user}", 1) for node in self.nodes)

    def ready_line(self) -> str:
        lines = [line for line in self.service.log().splitlines() if line.startswith(_READY)]
        if not lines:
            raise AssertionError(f"logmesh up printed no ready line:\n{self.service.log()[-3000:]}")
        return lines[-1]

    def _cluster_part(self) -> re.Match[str]:
        found = _READY_CLUSTER.search(self.ready_line())
        if found is None:
            raise AssertionError(f"the ready line names no nodes: {self.ready_line()}")
        return found

    @property
    def nodes(self) -> list[UpNode]:
        """The nats-servers ``up`` runs, as its ready line names them (a cluster only)."""
        return [UpNode(m["name"], m["url"], int(m["pid"])) for m in _READY_NODE.finditer(self._cluster_part()["nodes"])]

    @property
    def sink_pids(self) -> list[int]:
        return [int(m["pid"]) for m in _READY_SINK.finditer(self._cluster_part()["sinks"])]

    @property
    def nats_address(self) -> str:
        """The URL without credentials, as the services connect to it (their users by environment)."""
        return f"nats://127.0.0.1:{self.nats_port}"

    def secret(self, name: str) -> str | None:
        return read_secret(self.data_dir, name)

    def start(self) -> Up:
        self.service.start()
        wait_for(self._ready, 60 if self.clustered else 30, "logmesh up to be ready")
        if self.clustered:  # printed right after /readyz first answers 200
            wait_for(lambda: _READY_CLUSTER.search(self.service.log()), 10, "the ready line")
        self.http.auth = self.auth
        return self

    @property
    def auth(self) -> ScopedTokens:
        """For any client of this ``up`` (``httpx.Client(auth=up.auth)``)."""
        return ScopedTokens(self.secret(INGEST_TOKEN), self.secret(QUERY_TOKEN))

    def _ready(self) -> bool:
        if not self.service.alive():
            raise AssertionError(f"logmesh up exited:\n{self.service.log()[-3000:]}")
        return self.http.get("/readyz").status_code == 200

    def stop(self) -> int:
        code = self.service.stop()
        return code

    def close(self) -> None:
        self.http.close()
        if self.service.alive():
            self.service.stop()

    # ---- helpers used by many tests ----------------------------------------------------------

    def publish(self, events: Any) -> httpx.Response:
        return self.http.post("/publish", content=orjson.dumps(events), headers={"content-type": "application/json"})

    def stats(self) -> dict[str, Any]:
        resp = self.http.get("/stats")
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    def settled_stats(self, arrived: int | None = None, timeout: float = 30) -> dict[str, Any]:
        """Stats once the sink has committed and acked everything in the stream."""

        asked_at = time.time()

        def settled() -> dict[str, Any] | None:
            s = self.stats()
            if s["as_of"] <= asked_at:
                return None  # a snapshot from before the call (at most a second old): it may lag
            consumer = s.get("consumer") or {}
            done = consumer.get("pending") == 0 and consumer.get("ack_pending") == 0
            if done and (arrived is None or s["arrived"] == arrived):
                return s
            return None

        return wait_for(settled, timeout, f"the sink to settle (arrived={arrived})")


def event(topic: str = "orders", event_id: str = "e1", **extra: Any) -> dict[str, Any]:
    body = {
        "topic": topic,
        "event_id": event_id,
        "timestamp": "2026-11-22T10:00:00Z",
        "source": "tests",
        "payload": {"n": 1},
    }
    body.update(extra)
    return body


def over_nats(url: str, work: Callable[[Client], Awaitable[T]]) -> T:
    """Runs ``work`` on a fresh connection to ``url``, from synchronous test code, and closes it."""

    async def go() -> T:
        # The admin's own inbox prefix: the sink answers only into the inboxes of those who may ask.
        nc = await nats.connect(url.split(","), inbox_prefix=inbox_prefix("admin"))
        try:
            return await work(nc)
        finally:
            await nc.close()

    return asyncio.run(go())


def nats_publish(url: str, messages: list[tuple[str, bytes, dict[str, str] | None]]) -> None:
    """Core publishes with no reply subject, as ``nats pub`` sends them."""

    async def publish(nc: Client) -> None:
        for subject, data, headers in messages:
            await nc.publish(subject, data, headers=headers)
        await nc.flush()

    over_nats(url, publish)


def jetstream_info(url: str, stream: str = "LOGS", consumer: str = "sink") -> tuple[Any, Any]:
    async def info(nc: Client) -> tuple[Any, Any]:
        js = nc.jetstream()
        return await js.stream_info(stream), await js.consumer_info(stream, consumer)

    return over_nats(url, info)


def sink_request(url: str, endpoint: str, query: dict[str, Any] | None = None) -> Any:
    """Asks the sink directly over NATS, as the query service does."""

    async def ask(nc: Client) -> Any:
        reply = await nc.request(f"logmesh.query.{endpoint}", orjson.dumps(query or {}), timeout=5)
        return orjson.loads(reply.data)

    return over_nats(url, ask)


def jetstream_publish(url: str, events: list[dict[str, Any]]) -> None:
    """Acked JetStream publishes, one per event, with the logmesh message id."""

    async def publish(nc: Client) -> None:
        js = nc.jetstream()
        await ensure_stream(js, ServiceSettings())  # as any logmesh service would on start
        for e in events:
            await js.publish(
                f"logs.{e['topic']}", orjson.dumps(e), headers={"Nats-Msg-Id": f"{e['topic']}:{e['event_id']}"}
            )

    over_nats(url, publish)


def delete_message(url: str, seq: int, stream: str = "LOGS") -> None:
    async def delete(nc: Client) -> None:
        await nc.jetstream().delete_msg(stream, seq)

    over_nats(url, delete)


def stream_truth(url: str) -> dict[str, int]:
    return over_nats(url, truth.stream_truth)


def stored_keys(url: str) -> list[tuple[str, str]]:
    return over_nats(url, truth.stored_keys)


def settled(url: str, stream: str = "LOGS", consumer: str = "sink") -> bool:
    _, c = jetstream_info(url, stream, consumer)
    return bool(c.num_pending == 0 and c.num_ack_pending == 0)
