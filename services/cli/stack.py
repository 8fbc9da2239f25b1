"""The whole pipeline on one machine: embedded nats-server, the sink as a child process, and ingest
plus query routes on one HTTP port. ``logmesh up``, ``demo`` and ``bench`` run it."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import subprocess
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from starlette.applications import Starlette

from logmesh.cli.runner import start_server, stop_server
from logmesh.cli.sink_children import SinkChildren, sink_roles
from logmesh.cli.sink_metrics import SinkMetricsRelay, partition_owners
from logmesh.cli.up_secrets import UpAuth
from logmesh.cli.up_settings import UpSettings
from logmesh.common.auth import INGEST, AccessScope, Authenticator
from logmesh.common.claims import DirLock, listen_socket, lock_data_dir
from logmesh.common.embedded import EmbeddedNats, nats_answers
from logmesh.common.embedded_cluster import EmbeddedCluster, Member, wait_jetstream
from logmesh.common.http import Component, EmbeddedServer, bound_port, build_app
from logmesh.common.jetstream import close, connect, shown_url, wait_for_stream
from logmesh.common.leases_bucket import ensure_lease_bucket
from logmesh.common.nats_cluster import ROUTE_PASSWORD
from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.nats_roles import Role
from logmesh.common.processes import environment, python_command, spawn
from logmesh.common.secrets_store import MSG_ID_KEY, without_secrets
from logmesh.common.settings import (
    CommonSettings,
    flag_name,
)
from logmesh.common.tokens import first_token
from logmesh.common.waiting import wait_until_async
from logmesh.ingest.app import Ingest
from logmesh.ingest.settings import IngestSettings
from logmesh.query.app import Query
from logmesh.query.settings import QuerySettings

__all__ = ["Stack", "UpSettings", "combined_app"]

log = logging.getLogger("logmesh")

# How long a cluster may take to elect its JetStream meta leader (about 5 s on loopback).
CLUSTER_READY_TIMEOUT = 60.0


def _components(
    ingest_settings: IngestSettings,
    query_settings: QuerySettings,
    sink_metrics_host: str = "127.0.0.1",
    auth: Authenticator | None = None,
) -> tuple[list[Component], SinkMetricsRelay, Starlette]:
    registry = CollectorRegistry()
    query = Query(query_settings, signed_in=auth is not None)
    parts: list[Component] = [Ingest(ingest_settings, registry), query]
    owners = partition_owners(query.asker, query.topology)
    relay = SinkMetricsRelay(query.ask_sink, registry, sink_metrics_host, owners)
    return parts, relay, build_app("logmesh", parts, registry, [relay.exposition], auth=auth)


def combined_app(
    ingest_settings: IngestSettings, query_settings: QuerySettings, auth: Authenticator | None = None
) -> Starlette:
    return _components(ingest_settings, query_settings, auth=auth)[2]


class Stack:
    def __init__(self, settings: UpSettings, *, command: str = "up", sink_log_level: str | None = None) -> None:
        self.settings = settings
        self._auth: Authenticator | None = None
        self.command = f"logmesh {command}"
        self.sink_log_level = sink_log_level or settings.log_level
        self.nats: EmbeddedNats | None = None
        self.cluster: EmbeddedCluster | None = None
        self.nats_url = settings.nats_url or ""
        self.http_url = ""
        self.sinks = SinkChildren(settings.sinks, self._launch_sink)
        self._claim: DirLock | None = None
        self._listener: socket.socket | None = None
        self._parts: list[Component] = []
        self._sink_metrics: SinkMetricsRelay | None = None
        self._server: EmbeddedServer | None = None
        self._serving: asyncio.Task[None] | None = None
        self.auth = UpAuth(None)

    def _common(self) -> dict[str, Any]:
        return {name: getattr(self.settings, name) for name in CommonSettings.model_fields}

    def sink_command(self, i: int = 0) -> list[str]:
        flags = {
            **self._common(),
            "metrics_host": self.settings.sink_metrics_host,
            # A port asked for is sink 0's; any other sink picks a free one.
            "metrics_port": (self.settings.metrics_port if i == 0 else None) or 0,
            "log_level": self.sink_log_level,
            "nats_io": self.settings.nats_io,
            "data_dir": self.settings.data_dir,
        }
        args = ["sink"]
        for name, value in flags.items():
            args += [flag_name(name), str(value)]
        return python_command(*args)

    def credentials(self, role: Role) -> NatsCredentials:
        """Who the part in ``role`` connects as: its own user on the embedded server; on a server
        of the operator's (``--nats-url``), the credentials given."""
        if self.settings.nats_url:
            return NatsCredentials.from_settings(self.settings, role)
        return self.auth.credentials(role)

    def sink_env(self, i: int = 0) -> dict[str, str]:
        # The URL may hold credentials: like the password, it goes by environment, not on the argv.
        env = {k: v for k, v in without_secrets(environment({})).items() if not k.startswith("LOGMESH_NATS_")}
        env = {**env, "LOGMESH_NATS_URL": self.nats_url, **self.credentials("sink").env()}
        s = self.settings
        if s.stream_partitions > 1:
            env.update(sink_roles(s.sinks, s.stream_partitions)[i].env(s.lease_ttl))
        return env

    def members(self) -> list[Member]:
        """The nats-servers this ``up`` runs (none on a server of the operator's)."""
        if self.cluster is not None:
            return self.cluster.members()
        if self.nats is not None:
            pid = self.nats.process.pid if self.nats.process is not None else None
            return [Member("nats", self.nats.url, pid)]
        return []

    def _node_list(self) -> str:
        """The nodes for the query's ``cluster_nodes``: name=url@pid."""
        return ",".join(f"{m.name}={m.url}@{m.pid}" for m in self.members()) if self.cluster is not None else ""

    def _node_restarted(self) -> None:
        for part in self._parts:
            if isinstance(part, Query):
                part.known_nodes(self._node_list())

    async def start(self) -> None:
        """Claims the data directory and the HTTP port before starting anything (``claims.Refused``
        when either is taken), then starts NATS, the sink and HTTP."""
        s = self.settings
        self._claim = lock_data_dir(s.data_dir, self.command)
        self._listener = listen_socket(s.host, s.http_port, "--http-port")
        if s.no_auth:
            log.warning("NATS authorization is off (--no-auth): any client of NATS can publish, read and delete")
        if s.clustered:
            self.cluster = EmbeddedCluster(s.data_dir / "nats", s.nats_nodes, port=s.nats_port, owner=self.command)
            self.cluster.check_port()  # refused before any secret is made
        elif not s.nats_url:
            self.nats = EmbeddedNats(s.data_dir / "nats", port=s.nats_port, owner=self.command)
            self.nats.check_port()  # refused before any secret is made
        self.auth = UpAuth.prepare(s, s.data_dir, enabled=not s.no_auth, nats=not s.nats_url, cluster=s.clustered)
        self._auth = self.auth.authenticator(s)  # a token file that cannot be read: exit 2, nothing started
        if self.cluster is not None:
            route_password = self.auth.get(ROUTE_PASSWORD)
            self.cluster.authorize(self.auth.server_config(s.stream), self.auth.server_env(), route_password)
            await self.cluster.start()
            self.nats_url = self.cluster.url
            await self._declare_stream()
        elif self.nats is not None:
            self.nats.authorize(self.auth.server_config(s.stream), self.auth.server_env())
            await self.nats.start()
            self.nats_url = self.nats.url
            await self._declare_stream()
        self.sinks.start()
        http = {
            "nats_url": self.nats_url,
            "nats_io": s.nats_io,
            "host": s.host,
            "http_port": s.http_port,
            "no_auth": s.no_auth,
            **self._common(),
        }
        key = self.auth.get(MSG_ID_KEY)
        ingest = IngestSettings(
            **http, **self.credentials("ingest").settings_fields(), msg_id_key=SecretStr(key) if key else None
        )
        query = QuerySettings(**http, **self.credentials("query").settings_fields(), cluster_nodes=self._node_list())
        self._parts, self._sink_metrics, app = _components(ingest, query, s.sink_metrics_host, self._auth)
        if self.cluster is not None:
            self.cluster.supervise(self._node_restarted)
        self._server, self._serving = await start_server(app, self._listener, s)
        self.http_url = f"{s.http_scheme}://{s.host}:{bound_port(self._server)}"

    def client_options(self, scope: AccessScope) -> dict[str, Any]:
        """``httpx`` client options for this process's own requests to its HTTP port (``demo``
        publishing and reading its stats): a token of ``scope`` when authentication is on, and
        trust in exactly the certificate served (whatever host name it carries) with TLS."""
        s, options = self.settings, dict[str, Any]()
        if self._auth is not None:
            tokens = self.auth.http_settings(s)
            setting, file = (
                (tokens.ingest_token, tokens.ingest_token_file)
                if scope == INGEST
                else (tokens.query_token, tokens.query_token_file)
            )
            token = first_token(setting, file, f"{scope} token")
            options["headers"] = {"Authorization": f"Bearer {(token or b'').decode()}"}
        if s.tls_cert is not None:
            pinned = ssl.create_default_context(cafile=str(s.tls_cert))
            pinned.check_hostname = False
            pinned.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the certificate itself is trusted
            options["verify"] = pinned
        return options

    async def _declare_stream(self) -> None:
        """As the admin user, the only one that may change the stream: creates it, or applies a
        changed shape (``--max-age``, ...), before any service starts."""
        s = self.settings
        nc = await connect(self.nats_url, "logmesh-up", io="plain", credentials=self.credentials("admin"))
        try:
            if self.cluster is not None:
                log.info("waiting for the NATS cluster (%d nodes) to elect its JetStream meta leader", s.nats_nodes)
                await wait_jetstream(nc, CLUSTER_READY_TIMEOUT)
            await wait_for_stream(nc.jetstream(), CommonSettings(**self._common()))
            if s.stream_partitions > 1:
                await ensure_lease_bucket(nc.jetstream(), s.lease_ttl, s.replicas)
        finally:
            await close(nc)

    async def sink_metrics_port(self) -> int | None:
        """The port the sink serves its own metrics on, as it says; None if it serves none."""
        return await self._sink_metrics.port() if self._sink_metrics is not None else None

    async def wait_ready(self, stopping: asyncio.Event) -> bool:
        """Waits until every part is ready (``/readyz`` would answer 200), saying what it waits for
        whenever that changes. False when ``stopping`` is set first."""
        said = ""

        async def ready() -> bool:
            nonlocal said
            waiting = await self._waiting_for()
            if waiting and waiting != said:
                log.log(logging.WARNING if waiting.startswith("NATS") else logging.INFO, "waiting for %s", waiting)
            said = waiting
            return not waiting

        return await wait_until_async(ready, None, "logmesh to be ready", interval=0.25, stopping=stopping) is not None

    async def _waiting_for(self) -> str:
        if not await asyncio.to_thread(nats_answers, self.nats_url):
            return f"NATS at {shown_url(self.nats_url)}"
        checks: dict[str, Any] = {}
        for part in self._parts:
            checks.update(await part.readiness())
        return ", ".join(name for name, check in checks.items() if not check.get("ok"))

    def _launch_sink(self, i: int) -> subprocess.Popen[bytes]:
        # Each sink gets the data directory's claim too: should this process die first, the claim
        # lasts until every sink has finished its batch and exited.
        fds = [self._claim.fd] if self._claim else []
        return spawn(self.sink_command(i), env=self.sink_env(i), pass_fds=fds)

    async def stop(self) -> int:
        """Stops in dependency order: HTTP (finish requests), the sink (commit, ack, drain), NATS;
        then gives up the claims. Safe after a start that failed part way."""
        if self._server is not None and self._serving is not None:
            await stop_server(self._server, self._serving)
        if self._listener is not None:
            self._listener.close()
        code = await self.sinks.stop(timeout=30)
        if self.nats is not None:
            await self.nats.stop()
        if self.cluster is not None:
            await self.cluster.stop()
        if self._claim is not None:
            self._claim.release()
        return code
