"""What a logmesh client presents: a token for the HTTP API, credentials for NATS.

Found the same way by ``publish``, ``stats``, ``tail``, the demo and the benchmarks: a flag or its
environment variable first, else the secrets ``logmesh up`` keeps under ``--data-dir``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pydantic import Field, SecretStr

from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.nats_roles import Role, password_secret
from logmesh.common.secrets_store import INGEST_TOKEN, QUERY_TOKEN, read_secret
from logmesh.common.settings import DataDirPath, LogmeshSettings, NatsAuth
from logmesh.common.tokens import first_token


class SecretsDir(LogmeshSettings):
    data_dir: DataDirPath = Field(Path("data"), description="where logmesh up keeps its secrets, when not given")


class IngestTokenGiven(SecretsDir):
    ingest_token: SecretStr | None = Field(None, description="token for POST /publish (several: the first is used)")


class QueryTokenGiven(SecretsDir):
    query_token: SecretStr | None = Field(None, description="token for reading (several: the first is used)")


def _first(given: SecretStr | None, what: str) -> str | None:
    token = first_token(given, None, what)
    return token.decode() if token is not None else None


def ingest_token(s: IngestTokenGiven) -> str | None:
    return _first(s.ingest_token, "--ingest-token") or read_secret(s.data_dir, INGEST_TOKEN)


def query_token(s: QueryTokenGiven) -> str | None:
    return _first(s.query_token, "--query-token") or read_secret(s.data_dir, QUERY_TOKEN)


TOKEN_HINT = "give --%s-token (or its LOGMESH_ variable), or --data-dir where logmesh up keeps its secrets"


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def nats_credentials(s: NatsAuth, data_dir: Path, role: Role) -> NatsCredentials:
    """The credentials given, else the role's user with the password ``logmesh up`` stored."""
    given = NatsCredentials.from_settings(s, role)
    if given.user or given.creds is not None:
        return given
    password = read_secret(data_dir, password_secret(role))
    if password is None:
        return given  # none given, none stored: a server without authorization (or the URL has them)
    return dataclasses.replace(given, user=role, password=password)
