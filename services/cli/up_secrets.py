"""The secrets of ``logmesh up``: HTTP tokens, one NATS password per role, ingest's message-id key.

Each is a setting (``--publisher-password``, ``LOGMESH_SINK_NATS_PASSWORD``, ...) that wins when
given; otherwise ``up`` generates it once under ``DATA_DIR/secrets/`` and reuses it (see
``secrets_store``). The embedded nats-server gets the users and permissions of ``nats_roles``, its
passwords by environment; the sink child gets its own by environment too, never on its command line.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, Field, SecretStr

from logmesh.common.auth import INGEST, READ, Authenticator
from logmesh.common.nats_cluster import ROUTE_PASSWORD
from logmesh.common.nats_credentials import NatsCredentials
from logmesh.common.nats_roles import (
    ROLES,
    Role,
    password_secret,
    password_variable,
    secret_variable,
    server_authorization,
)
from logmesh.common.secrets_store import (
    ALL_SECRETS,
    CLUSTER_SECRETS,
    INGEST_TOKEN,
    MSG_ID_KEY,
    QUERY_TOKEN,
    ensure_secrets,
    secret_path,
    secrets_dir,
)
from logmesh.common.settings import (
    ENV_ONLY,
    HttpAuth,
    LogmeshSettings,
    MsgIdKeySetting,
    SettingsError,
    check_msg_id_key,
)

log = logging.getLogger("logmesh")


_GENERATED = "generated under DATA_DIR/secrets when not given"


def _nats_password(value: SecretStr | None) -> SecretStr | None:
    # nats-server reads it from its environment and parses it as a value: it must read as a string.
    if value is not None and not PASSWORD_SHAPE.fullmatch(value.get_secret_value()):
        raise ValueError("must be at least 16 letters, digits, '-' or '_', starting with a letter")
    return value


NatsPassword = Annotated[SecretStr | None, AfterValidator(_nats_password)]
PASSWORD_SHAPE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{15,}")


class UpSecrets(LogmeshSettings):
    publisher_password: NatsPassword = Field(
        None, description=f"NATS password of the 'publisher' user, for third-party publishers ({_GENERATED})"
    )
    admin_nats_password: NatsPassword = Field(
        None, description=f"NATS password of the 'admin' user, the only one that may change the stream ({_GENERATED})"
    )
    # The services' own passwords and the message-id key never leave logmesh: environment only.
    ingest_nats_password: Annotated[NatsPassword, ENV_ONLY] = Field(None, description="ingest's NATS password")
    sink_nats_password: Annotated[NatsPassword, ENV_ONLY] = Field(None, description="the sink's NATS password")
    query_nats_password: Annotated[NatsPassword, ENV_ONLY] = Field(None, description="query's NATS password")
    msg_id_key: Annotated[MsgIdKeySetting, ENV_ONLY] = Field(None, description="key of ingest's message ids")
    route_password: Annotated[NatsPassword, ENV_ONLY] = Field(
        None, description="password of the NATS cluster's routes (--nats-nodes 2 or more)"
    )


def _field(secret: str) -> str:
    return secret.replace("-", "_")


def _check_stored(data_dir: Path, secret: str, value: str, passwords: set[str]) -> None:
    try:
        if secret in passwords:
            _nats_password(SecretStr(value))
        elif secret == MSG_ID_KEY:
            check_msg_id_key(SecretStr(value))
    except ValueError as exc:
        raise SettingsError(f"{secret_path(data_dir, secret)} (or {secret_variable(secret)}): {exc}") from None


class UpAuth:
    """The secrets in force for one ``up``; ``None`` values throughout when authentication is off."""

    def __init__(self, values: dict[str, str] | None, where: Path | None = None) -> None:
        self.values = values
        self.where = where

    @classmethod
    def prepare(
        cls, settings: LogmeshSettings, data_dir: Path, *, enabled: bool, nats: bool = True, cluster: bool = False
    ) -> UpAuth:
        """Every secret, given or stored or generated now (said once, with where they are kept). A
        scope whose tokens come from a file (``--ingest-token-file``) gets none generated; with a
        NATS server of the operator's (``nats`` False) no NATS password is made: it has its own; the
        routes' password only for an embedded cluster (``cluster``).
        A stored value edited by hand is checked as a given one is (``SettingsError``)."""
        if not enabled:
            return cls(None)
        from_files = {
            INGEST_TOKEN: getattr(settings, "ingest_token_file", None),
            QUERY_TOKEN: getattr(settings, "query_token_file", None),
        }
        passwords = {password_secret(role) for role in ROLES} | {ROUTE_PASSWORD}
        given: dict[str, str | None] = {}
        for secret in (*ALL_SECRETS, *(CLUSTER_SECRETS if cluster else ())):
            if from_files.get(secret) is not None or (secret in passwords and not nats):
                continue
            value = getattr(settings, _field(secret), None)
            given[secret] = value.get_secret_value() if isinstance(value, SecretStr) else value
        values, generated = ensure_secrets(data_dir, given)
        for secret, value in values.items():
            _check_stored(data_dir, secret, value, passwords)
        where = secrets_dir(data_dir).resolve()
        if generated:
            print(f"logmesh: generated {', '.join(generated)} in {where} (mode 0600, kept for next time)", flush=True)
        return cls(values, where)

    @property
    def enabled(self) -> bool:
        return self.values is not None

    def get(self, secret: str) -> str | None:
        return self.values.get(secret) if self.values is not None else None

    def http_settings(self, settings: HttpAuth) -> HttpAuth:
        """``settings`` with the tokens in force: those given (flag, variable or file), else those
        stored or generated."""
        update = {}
        for field, secret in (("ingest_token", INGEST_TOKEN), ("query_token", QUERY_TOKEN)):
            value = self.get(secret) if self.values is not None and secret in self.values else None
            if getattr(settings, field) is None and value is not None:
                update[field] = SecretStr(value)
        return settings.model_copy(update=update)

    def authenticator(self, settings: HttpAuth) -> Authenticator | None:
        """Who may do what on the HTTP port of ``up``, which serves both scopes; None with --no-auth."""
        return Authenticator.from_settings(self.http_settings(settings), needs=[INGEST, READ])

    def credentials(self, role: Role) -> NatsCredentials:
        return NatsCredentials.for_role(role, self.get(password_secret(role)))

    def server_config(self, stream: str) -> str | None:
        return server_authorization(stream) if self.enabled else None

    def server_env(self) -> dict[str, str]:
        """The passwords, by the names the server's configuration gives them."""
        if self.values is None:
            return {}
        return {password_variable(role): self.values[password_secret(role)] for role in ROLES}
