"""What a NATS connection presents: a user and password or a credentials file, TLS material, and
the inbox prefix its user may subscribe to (``nats_roles.inbox_prefix``)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from logmesh.common.nats_roles import DEFAULT_INBOX, Role, inbox_prefix
from logmesh.common.settings import ENV_PREFIX, NatsAuth


@dataclass(frozen=True)
class NatsCredentials:
    user: str | None = None
    password: str | None = None
    creds: Path | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    inbox: str = DEFAULT_INBOX

    def __repr__(self) -> str:  # never the password
        return f"NatsCredentials(user={self.user!r}, creds={self.creds}, tls={self.tls_ca is not None})"

    @classmethod
    def from_settings(cls, s: NatsAuth, role: Role) -> NatsCredentials:
        return cls(
            user=s.nats_user,
            password=s.nats_password.get_secret_value() if s.nats_password is not None else None,
            creds=s.nats_creds,
            tls_ca=s.nats_tls_ca,
            tls_cert=s.nats_tls_cert,
            tls_key=s.nats_tls_key,
            inbox=inbox_prefix(role),
        )

    @classmethod
    def for_role(cls, role: Role, password: str | None) -> NatsCredentials:
        """The role's own user (``logmesh up``'s embedded server), or no user when auth is off."""
        return cls(user=role if password else None, password=password, inbox=inbox_prefix(role))

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for nats-py's ``Client.connect``."""
        options: dict[str, Any] = {"inbox_prefix": self.inbox}
        if self.user:
            options.update(user=self.user, password=self.password or "")
        if self.creds is not None:
            options["user_credentials"] = str(self.creds)
        if self.tls_ca is not None or self.tls_cert is not None:
            context = ssl.create_default_context(cafile=str(self.tls_ca) if self.tls_ca else None)
            if self.tls_cert is not None and self.tls_key is not None:
                context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
            options["tls"] = context
        return options

    def shown(self) -> str:
        """Who connects, for a log line."""
        if self.creds is not None:
            return f"credentials file {self.creds}"
        return f"user {self.user}" if self.user else "no user"

    def settings_fields(self) -> dict[str, Any]:
        """The settings that say the same (``NatsAuth``'s fields): the inverse of ``from_settings``."""
        return {
            "nats_user": self.user,
            "nats_password": self.password,
            "nats_creds": self.creds,
            "nats_tls_ca": self.tls_ca,
            "nats_tls_cert": self.tls_cert,
            "nats_tls_key": self.tls_key,
        }

    def env(self) -> dict[str, str]:
        """The same, as a child service's environment: secrets never go on a command line."""
        return {ENV_PREFIX + name.upper(): str(value) for name, value in self.settings_fields().items() if value}
