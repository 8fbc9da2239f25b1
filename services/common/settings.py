"""Typed settings shared by every service; each field is a ``--flag`` and a ``LOGMESH_*`` variable.

Precedence: command-line flag, then environment variable, then the default. A command's settings
class holds what that command uses and nothing else: its ``--help`` lists exactly those flags.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from logmesh.common.flags import SettingsError, allowed, choices, explain, flag_name, readable
from logmesh.common.partitions import MAX_PARTITIONS

__all__ = ["SettingsError", "flag_name"]

ENV_PREFIX = "LOGMESH_"


class EnvOnly:
    """Marks a setting read from its environment variable only: it gets no flag and no ``--help``
    line (test aids such as ``LOGMESH_FAILPOINTS``)."""


ENV_ONLY = EnvOnly()


class LogmeshSettings(BaseSettings):
    # A duration or a fraction of inf or nan is a typo, never a wish.
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True, allow_inf_nan=False)


# Each setting that several commands take is defined once: its type, range and help here, its usual
# default in the mixin below. A command composes the mixins it needs; one that runs on scratch
# resources (``demo``) restates only the default.
Port = Annotated[int, Field(ge=0, le=65535)]
ListenHost = Annotated[str, Field(description="HTTP listen address")]
ListenPort = Annotated[Port, Field(description="HTTP listen port (0 picks a free one)")]
NatsPort = Annotated[Port, Field(description="port of the embedded nats-server (0 picks a free one)")]
NatsUrl = Annotated[str, Field(description="NATS server URL(s), comma-separated")]


def _http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    return url


HttpUrl = Annotated[str, AfterValidator(_http_url)]

# What JetStream takes as a stream or consumer name; it goes into subjects ($JS.API.STREAM.INFO.<name>).
_NOT_IN_NAMES = frozenset(" \t\r\n.*>/\\")


def _jetstream_name(value: str) -> str:
    if not value or len(value) > 255 or _NOT_IN_NAMES.intersection(value):
        raise ValueError("must be a JetStream name (1-255 characters, no spaces, '.', '*', '>', '/' or '\\')")
    return value


JetStreamName = Annotated[str, AfterValidator(_jetstream_name)]

MSG_ID_KEY_MIN = 32


def check_msg_id_key(value: SecretStr | None) -> SecretStr | None:
    """Ingest's message-id key: long enough that nobody guesses it (it never appears in a message)."""
    if value is not None and len(value.get_secret_value()) < MSG_ID_KEY_MIN:
        raise ValueError(f"must be at least {MSG_ID_KEY_MIN} characters")
    return value


MsgIdKeySetting = Annotated[SecretStr | None, AfterValidator(check_msg_id_key)]
DataDirPath = Annotated[
    Path, Field(description="data directory: the DuckDB store (and, under logmesh up, the JetStream store in nats/)")
]


class Logging(LogmeshSettings):
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field("text", description="log line format")


class StreamName(LogmeshSettings):
    stream: JetStreamName = Field("LOGS", description="JetStream stream name")


class StreamShape(StreamName):
    """The stream's shape: whichever service starts first creates or updates the stream with it."""

    duplicate_window: float = Field(
        120.0, gt=0, description="seconds during which JetStream drops a repeated Nats-Msg-Id"
    )
    max_age: float = Field(7 * 86400.0, gt=0, description="seconds a message is kept in the stream")
    stream_max_bytes: int = Field(-1, ge=-1, description="stream size limit in bytes; -1 for none")
    replicas: int = Field(1, ge=1, le=5, description="stream replicas (clustered NATS only)")
    stream_partitions: int = Field(
        1,
        ge=1,
        le=MAX_PARTITIONS,
        description="partitions of the stream, fixed when it is created (a stream of another number is refused)",
    )


class HttpAuth(LogmeshSettings):
    """Bearer tokens of the HTTP API (``logmesh.common.auth``): an ingest token for ``POST /publish``, a
    read token for everything else but ``/healthz`` and ``/readyz``. A setting may hold several tokens,
    comma-separated, so that a new one is accepted before the old one is withdrawn."""

    ingest_token: SecretStr | None = Field(
        None, description="bearer token(s) for POST /publish, comma-separated (several while rotating)"
    )
    query_token: SecretStr | None = Field(
        None,
        description="bearer token(s) for reading: stats, events, dead letters, metrics, the dashboard; comma-separated",
    )
    ingest_token_file: Path | None = Field(
        None, description="file of ingest tokens, one a line (# comments); re-read when it changes"
    )
    query_token_file: Path | None = Field(
        None, description="file of read tokens, one a line (# comments); re-read when it changes"
    )
    no_auth: bool = Field(
        False, description="serve without authentication: anyone who can reach the port can publish and read"
    )


class HttpTls(LogmeshSettings):
    """HTTPS: a certificate and its key, both or neither."""

    tls_cert: Path | None = Field(
        None, description="serve HTTPS with this PEM certificate (its chain after it); needs --tls-key"
    )
    tls_key: Path | None = Field(None, description="the PEM private key of --tls-cert")

    @model_validator(mode="after")
    def _a_usable_pair(self) -> HttpTls:
        if self.tls_cert is None and self.tls_key is None:
            return self
        if self.tls_cert is None or self.tls_key is None:
            raise ValueError("--tls-cert and --tls-key go together: give both or neither")
        # Loaded once here, so that a wrong path or a key of another certificate is a one-line
        # error at the start rather than a server that fails to come up.
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(self.tls_cert, self.tls_key)
        except OSError as exc:
            raise ValueError(f"TLS certificate {self.tls_cert} and key {self.tls_key}: {_ssl_reason(exc)}") from None
        return self

    @property
    def http_scheme(self) -> Literal["http", "https"]:
        return "https" if self.tls_cert is not None else "http"


def _ssl_reason(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"not a PEM certificate and its key ({exc.reason or exc})"
    return exc.strerror or str(exc)


class HttpListen(HttpAuth, HttpTls):
    host: ListenHost = "127.0.0.1"
    http_port: ListenPort = 8080


class DataDir(LogmeshSettings):
    data_dir: DataDirPath = Path("data")


class EmbeddedNatsPort(LogmeshSettings):
    nats_port: NatsPort = 4222


class SinkMetricsPort(LogmeshSettings):
    metrics_port: Port = Field(9464, description="port of the sink's Prometheus endpoint (0 picks a free one)")


def _readable_file(path: Path) -> Path:
    if not path.is_file():
        raise ValueError(f"{path} is not a readable file")
    return path


ReadableFile = Annotated[Path, AfterValidator(_readable_file)]


class NatsAuth(LogmeshSettings):
    """How a client proves who it is to NATS, and TLS. A user and password may also be in the URL
    (``nats://user:password@host``); a credentials file holds a JWT and an NKey seed."""

    nats_user: str | None = Field(None, description="NATS user name")
    nats_password: SecretStr | None = Field(None, description="NATS password of --nats-user")
    nats_creds: ReadableFile | None = Field(None, description="NATS credentials file (JWT and NKey seed)")
    nats_tls_ca: ReadableFile | None = Field(None, description="CA certificate that signed the NATS server's")
    nats_tls_cert: ReadableFile | None = Field(None, description="client certificate for NATS (mutual TLS)")
    nats_tls_key: ReadableFile | None = Field(None, description="private key of --nats-tls-cert")

    @model_validator(mode="after")
    def _pairs(self) -> NatsAuth:
        if (self.nats_tls_cert is None) != (self.nats_tls_key is None):
            raise ValueError("give --nats-tls-cert and --nats-tls-key together")
        if self.nats_password is not None and not self.nats_user:
            raise ValueError("--nats-password needs --nats-user")
        if self.nats_creds is not None and self.nats_user:
            raise ValueError("give --nats-creds or --nats-user, not both")
        return self


class NatsServer(NatsAuth):
    nats_url: NatsUrl = "nats://127.0.0.1:4222"


class CommonSettings(StreamShape, Logging):
    """What a process that may create the stream needs besides NATS: the stream's shape, logging."""


class NatsServiceSettings(StreamName, Logging, NatsServer):
    """A long-running service on NATS: where NATS is, which stream, how to log."""

    nats_io: Literal["fast", "plain"] = Field(
        "fast",
        description="hot NATS paths: 'fast' (raw wire parser and bulk writes on nats-py internals) or 'plain' "
        "(nats-py's public API only)",
    )
    failpoints: Annotated[str, ENV_ONLY] = Field(
        "", description="testing aid: name=action,... (see services/common/failpoints.py)"
    )


class ServiceSettings(NatsServiceSettings, CommonSettings):
    """A service that writes to the stream (ingest, sink), and so may create it."""


class HttpSettings(ServiceSettings, HttpListen):
    """An HTTP service that writes to the stream (ingest)."""


class ReadingHttpSettings(NatsServiceSettings, HttpListen):
    """An HTTP service that only reads (query): it never creates the stream, so takes no shape."""


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def _env_prefix(settings_cls: type[BaseSettings]) -> str:
    return str(settings_cls.model_config.get("env_prefix", ENV_PREFIX))


def _help(description: str, rule: str | None, env: str, default: Any) -> str:
    said = description + (f"; {rule}" if rule else "")
    return f"{said} [env {env}; default {readable(default)}]".replace("%", "%%")


def add_settings_arguments(parser: argparse.ArgumentParser, settings_cls: type[BaseSettings]) -> None:
    """Adds one flag per settings field, the command's own fields first. Defaults are left to the
    settings object so that an unset flag falls back to the environment variable; values are checked
    there too (:func:`settings_from_args`), so that a bad flag and a bad variable read alike."""
    group = parser.add_argument_group("settings (every flag is also an environment variable)")
    prefix = _env_prefix(settings_cls)
    inherited = {name for base in settings_cls.__mro__[1:] for name in getattr(base, "model_fields", {})}
    fields = sorted(settings_cls.model_fields.items(), key=lambda item: item[0] in inherited)
    for name, info in fields:
        if any(isinstance(m, EnvOnly) for m in info.metadata):
            continue
        env = prefix + name.upper()
        literal = choices(info)
        if info.annotation is bool:
            text = _help(info.description or name, None, env, info.default)
            # ``--no-auth`` is a switch: a ``--no-no-auth`` would read as a joke.
            action: Any = "store_true" if name.startswith("no_") else argparse.BooleanOptionalAction
            group.add_argument(flag_name(name), dest=name, action=action, default=argparse.SUPPRESS, help=text)
        else:
            # Choices are shown as the metavar, and checked with every other rule by the settings.
            text = _help(info.description or name, None if literal else allowed(info), env, info.default)
            metavar = "{" + ",".join(literal) + "}" if literal else None
            group.add_argument(flag_name(name), dest=name, default=argparse.SUPPRESS, metavar=metavar, help=text)


def add_command(
    commands: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    settings_cls: type[BaseSettings],
    handler: Callable[[argparse.Namespace], int],
    text: str,
) -> None:
    """One ``logmesh`` subcommand: a flag (and environment variable) per field of its settings."""
    parser = commands.add_parser(name, help=text, description=text)
    add_settings_arguments(parser, settings_cls)
    parser.set_defaults(handler=handler, command_parser=parser, settings_cls=settings_cls)


def settings_from_args(settings_cls: type[SettingsT], args: argparse.Namespace, **overrides: Any) -> SettingsT:
    """The command's settings from its flags, then the environment. A value it does not take raises
    :class:`SettingsError`, one line naming the flag or the variable: ``logmesh`` prints it and exits 2."""
    given = {k: v for k, v in vars(args).items() if k in settings_cls.model_fields}
    given.update(overrides)
    try:
        return settings_cls(**given)
    except ValidationError as exc:
        raise SettingsError(explain(exc, settings_cls.model_fields, given, _env_prefix(settings_cls))) from None
