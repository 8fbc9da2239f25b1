"""Separate services over NATS with TLS (mutual: the server checks the client's certificate too)
and a user per role, as `docs/security.md` says to deploy them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import nats
import orjson
import pytest
import trustme

from logmesh.common.embedded import EmbeddedNats
from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.nats_roles import ROLES, password_variable, server_authorization
from logmesh.common.secrets_store import new_secret
from tests.harness import Service, wait_for

pytestmark = pytest.mark.timeout(90)


class TlsNats:
    def __init__(self, root: Path) -> None:
        ca = trustme.CA()
        self.ca = root / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca))
        server, client = ca.issue_cert("127.0.0.1", "localhost"), ca.issue_cert("logmesh-client")
        server.private_key_and_cert_chain_pem.write_to_path(str(root / "server.pem"))
        client.cert_chain_pems[0].write_to_path(str(root / "client.pem"))
        client.private_key_pem.write_to_path(str(root / "client.key"))
        self.cert, self.key = root / "client.pem", root / "client.key"
        self.passwords = {role: new_secret() for role in ROLES}
        config = (
            f'tls {{ cert_file: "{root / "server.pem"}", key_file: "{root / "server.pem"}", '
            f'ca_file: "{self.ca}", verify: true }}\n' + server_authorization()
        )
        env = {password_variable(role): self.passwords[role] for role in ROLES}
        self.server = EmbeddedNats(root / "nats", port=0, owner="the tests", config=config, env=env)

    @property
    def url(self) -> str:
        return f"tls://127.0.0.1:{self.server.port}"

    def flags(self) -> list[str]:
        return ["--nats-url", self.url, "--nats-tls-ca", str(self.ca)]

    def client_flags(self) -> list[str]:
        return ["--nats-tls-cert", str(self.cert), "--nats-tls-key", str(self.key)]

    def env(self, role: str) -> dict[str, str]:
        return {"LOGMESH_NATS_USER": role, "LOGMESH_NATS_PASSWORD": self.passwords[role]}  # type: ignore[index]


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[TlsNats]:
    nats_tls = TlsNats(tmp_path)
    nats_tls.server.start_sync()
    yield nats_tls
    nats_tls.server.stop_sync()


def _ask_sink(t: TlsNats, endpoint: str) -> dict[str, object]:
    credentials = NatsCredentials(
        user="admin", password=t.passwords["admin"], tls_ca=t.ca, tls_cert=t.cert, tls_key=t.key, inbox="_INBOX_admin"
    )

    async def ask() -> dict[str, object]:
        nc = await nats.connect(t.url, **credentials.connect_options())
        try:
            reply = await nc.request(f"logmesh.query.{endpoint}", b"{}", timeout=5)
        finally:
            await nc.close()
        answer: dict[str, object] = orjson.loads(reply.data)
        return answer

    return asyncio.run(ask())


def test_the_sink_and_a_publisher_work_over_mutual_tls(
    tls_nats: TlsNats, service: Callable[..., Service], tmp_path: Path
) -> None:
    t = tls_nats
    sink = service(["sink", *t.flags(), *t.client_flags(), "--data-dir", str(tmp_path / "data")], env=t.env("sink"))
    wait_for(lambda: "sink ready" in sink.log(), 30, "the sink to be ready over TLS")
    events = tmp_path / "events"
    publish = ["publish", *t.flags(), *t.client_flags(), "--events", "300", "--dup", "0.2", "--give-up-after", "20"]
    publisher = service(publish, env={**t.env("ingest"), "LOGMESH_DATA_DIR": str(events)}, name="publish")
    assert publisher.proc is not None and publisher.proc.wait(60) == 0, publisher.log()

    def stored() -> bool:
        stats = _ask_sink(t, "stats")
        return stats["unique_processed"] == 240

    wait_for(stored, 30, "the sink to store the events it got over TLS")
    assert sink.alive()


def test_a_client_without_the_servers_ca_or_its_own_certificate_is_refused(
    tls_nats: TlsNats, service: Callable[..., Service], tmp_path: Path
) -> None:
    t = tls_nats
    untrusting = service(["sink", "--nats-url", t.url, "--data-dir", str(tmp_path / "a")], env=t.env("sink"))
    no_certificate = service(["sink", *t.flags(), "--data-dir", str(tmp_path / "b")], env=t.env("sink"), name="nocert")
    wait_for(lambda: "certificate" in untrusting.log().lower(), 20, "the refusal of an unknown server certificate")
    wait_for(lambda: "waiting for NATS" in no_certificate.log(), 20, "the server's refusal of a client without one")
