"""The settings of ``logmesh up``: the services' settings, the embedded NATS (one server or a cluster),
the sinks and their partitions."""

from __future__ import annotations

import contextlib
from typing import Any

from pydantic import Field, model_validator

from logmesh.cli.up_secrets import UpSecrets
from logmesh.common.leases_bucket import DEFAULT_LEASE_TTL
from logmesh.common.natsio import NatsIo
from logmesh.common.partitions import MAX_PARTITIONS
from logmesh.common.settings import CommonSettings, DataDir, EmbeddedNatsPort, HttpListen, NatsAuth, Port

MAX_NATS_NODES = 5
MAX_SINKS = 16


class UpSettings(CommonSettings, DataDir, HttpListen, EmbeddedNatsPort, UpSecrets, NatsAuth):
    nats_url: str | None = Field(
        None,
        description="use this NATS server instead of starting one (every part connects with the --nats-user, "
        "--nats-creds or URL credentials given)",
    )
    nats_io: NatsIo = Field("fast", description="hot NATS paths of the sink and ingest: 'fast' or 'plain'")
    # The sink's metrics are in GET /metrics on the HTTP port; a port of their own only on request,
    # so that two ups on one machine never contend for one.
    metrics_port: Port | None = Field(
        None, description="also serve the sink's own metrics on this port (0 picks a free one)"
    )

    nats_nodes: int = Field(
        1, ge=1, le=MAX_NATS_NODES, description="embedded nats-servers: more than 1 runs a NATS cluster on loopback"
    )
    partitions: int = Field(
        1, ge=1, le=MAX_PARTITIONS, description="partitions of the stream (the same as --stream-partitions)"
    )
    sinks: int = Field(1, ge=1, le=MAX_SINKS, description="sink processes sharing the partitions")
    lease_ttl: float = Field(
        DEFAULT_LEASE_TTL, ge=1, le=600, description="seconds a sink's lease on a partition lasts unless renewed"
    )

    @model_validator(mode="before")
    @classmethod
    def _cluster_defaults(cls, data: Any) -> Any:
        """``--partitions`` is ``--stream-partitions``; a cluster's stream is replicated on up to 3 nodes."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        partitions, stream_partitions = data.get("partitions"), data.get("stream_partitions")
        if partitions is not None and stream_partitions is None:
            data["stream_partitions"] = partitions
        elif stream_partitions is not None and partitions is None:
            data["partitions"] = stream_partitions
        nodes = data.get("nats_nodes")
        if data.get("replicas") is None and nodes is not None and not data.get("nats_url"):
            with contextlib.suppress(TypeError, ValueError):  # the field's own check says what is wrong
                data["replicas"] = min(3, int(nodes))
        return data

    @model_validator(mode="after")
    def _consistent(self) -> UpSettings:
        if self.partitions != self.stream_partitions:
            raise ValueError(
                f"--partitions {self.partitions} and --stream-partitions {self.stream_partitions} disagree: give one"
            )
        if self.sinks > 1 and self.partitions == 1:
            raise ValueError(f"--sinks {self.sinks} needs --partitions 2 or more (one partition has one writer)")
        if self.nats_url and self.nats_nodes > 1:
            raise ValueError("--nats-nodes starts embedded nats-servers: it does not go with --nats-url")
        if not self.nats_url and self.replicas > self.nats_nodes:
            raise ValueError(f"--replicas {self.replicas} needs --nats-nodes {self.replicas} or more")
        return self

    @property
    def clustered(self) -> bool:
        return self.nats_nodes > 1

    @property
    def sink_metrics_host(self) -> str:
        """Loopback, unless the sink's metrics were asked for on a port of their own."""
        return "127.0.0.1" if self.metrics_port is None else self.host
