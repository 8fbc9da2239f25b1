"""Typed settings shared by every service; each field is a ``--flag`` and a ``LOGMESH_*`` variable.

Precedence: command-line flag, then environment variable, then the default.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "LOGMESH_"


class _Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)


# Each setting that several commands take is defined once: its type, range and help here, its usual
# default in the mixin below. A command composes the mixins it needs; one that runs on scratch
# resources (``demo``) restates only the default.
ListenHost = Annotated[str, Field(description="HTTP listen address")]
ListenPort = Annotated[int, Field(ge=0, le=65535, description="HTTP listen port (0 picks a free one)")]
NatsPort = Annotated[int, Field(ge=0, le=65535, description="port of the embedded nats-server (0 picks a free one)")]
MetricsPort = Annotated[
    int, Field(ge=0, le=65535, description="port of the sink's Prometheus endpoint (0 picks a free one)")
]
DataDirPath = Annotated[
    Path, Field(description="data directory: the DuckDB store (and, under logmesh up, the JetStream store in nats/)")
]


class HttpListen(_Settings):
    host: ListenHost = "127.0.0.1"
    http_port: ListenPort = 8080


class DataDir(_Settings):
    data_dir: DataDirPath = Path("data")


class EmbeddedNatsPort(_Settings):
    nats_port: NatsPort = 4222


class SinkMetricsPort(_Settings):
    metrics_port: MetricsPort = 9464


class CommonSettings(_Settings):
    """The stream's shape (whichever service starts first creates or updates the stream with it) and
    how to log."""

    stream: str = Field("LOGS", description="JetStream stream name")
    duplicate_window: float = Field(
        120.0, gt=0, description="seconds during which JetStream drops a repeated Nats-Msg-Id"
    )
    max_age: float = Field(7 * 86400.0, gt=0, description="seconds a message is kept in the stream")
    stream_max_bytes: int = Field(-1, description="stream size limit in bytes; -1 for none")
    replicas: int = Field(1, ge=1, le=5, description="stream replicas (clustered NATS only)")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
    log_format: Literal["text", "json"] = Field("text", description="log line format")


class ServiceSettings(CommonSettings):
    """What every service needs: where NATS is, and the common settings."""

    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server URL(s), comma-separated")
    nats_io: Literal["fast", "plain"] = Field(
        "fast",
        description="hot NATS paths: 'fast' (raw wire parser and bulk writes on nats-py internals) or 'plain' "
        "(nats-py's public API only)",
    )
    failpoints: str = Field("", description="testing aid: name=action,... (see services/common/failpoints.py)")


class HttpSettings(ServiceSettings, HttpListen):
    """An HTTP service (ingest, query)."""


SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_settings_arguments(parser: argparse.ArgumentParser, settings_cls: type[BaseSettings]) -> None:
    """Adds one flag per settings field. Defaults are left to the settings object so that an unset
    flag falls back to the environment variable."""
    group = parser.add_argument_group(f"{settings_cls.__name__} (each flag is also an environment variable)")
    prefix = settings_cls.model_config.get("env_prefix", ENV_PREFIX)
    for name, info in settings_cls.model_fields.items():
        env = prefix + name.upper()
        help_text = f"{info.description or name} [env {env}; default {info.default!r}]"
        if info.annotation is bool:
            group.add_argument(
                flag_name(name),
                dest=name,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            group.add_argument(flag_name(name), dest=name, default=argparse.SUPPRESS, help=help_text)


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
    parser.set_defaults(handler=handler)


def settings_from_args(settings_cls: type[SettingsT], args: argparse.Namespace, **overrides: Any) -> SettingsT:
    given = {k: v for k, v in vars(args).items() if k in settings_cls.model_fields}
    given.update(overrides)
    return settings_cls(**given)
