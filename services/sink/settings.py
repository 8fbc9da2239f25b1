from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from logmesh.common.leases_bucket import DEFAULT_LEASE_TTL
from logmesh.common.partitions import parse_partition_list
from logmesh.common.settings import DataDir, JetStreamName, ServiceSettings, SinkMetricsPort

_SINK_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _partition_list(text: str) -> str:
    parse_partition_list(text)  # ValueError says what is wrong
    return text.strip()


def _sink_name(name: str) -> str:
    if name and not _SINK_NAME.fullmatch(name):
        raise ValueError("a sink name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return name


PartitionList = Annotated[str, AfterValidator(_partition_list)]


class SinkSettings(ServiceSettings, DataDir, SinkMetricsPort):
    consumer: JetStreamName = Field("sink", description="durable consumer name")
    decoder: Literal["sql", "reference"] = Field(
        "sql",
        description="batch decoding: 'sql' (one DuckDB query per batch, the reference decoder for what it leaves) "
        "or 'reference' (the reference decoder for every message)",
    )
    batch_size: int = Field(
        20_000,
        ge=1,
        le=100_000,
        description="most messages committed in one transaction (a backlog drains in batches this big; under "
        "light load the linger decides)",
    )
    linger: float = Field(
        0.05, ge=0, le=5, description="seconds a partial batch may wait for more messages before it commits"
    )
    poison_after: int = Field(
        5,
        ge=1,
        description="deliveries after which a message is committed on its own, under the crash journal that "
        "sets aside a message the sink keeps stopping on",
    )
    ack_wait: float = Field(30.0, gt=0, description="seconds JetStream waits for an ack before redelivering")
    max_ack_pending: int = Field(50_000, ge=1, description="most unacknowledged messages the consumer hands out")
    memory_limit: str = Field("640MB", description="DuckDB memory limit (the sink stays under 1 GiB at 10 M events)")
    db_threads: int = Field(
        1, ge=1, le=64, description="DuckDB worker threads (one leaves the other cores to NATS and Python)"
    )
    metrics_host: str = Field("127.0.0.1", description="address of the sink's Prometheus endpoint")
    checkpoint_threshold: str = Field("1GB", description="WAL size that triggers a DuckDB checkpoint")

    partitions: PartitionList = Field(
        "all",
        description="partitions this sink owns when it can (a list like 0,2,3, or all: every partition of the "
        "stream); it takes each at once when free",
    )
    standby: PartitionList = Field(
        "",
        description="partitions this sink takes over only after their owner has been gone for a whole lease TTL "
        "(a list like 1,3)",
    )
    sink_name: Annotated[str, AfterValidator(_sink_name)] = Field(
        "", description="this sink's name in the partition leases (default <hostname>-<pid>)"
    )
    lease_ttl: float = Field(
        DEFAULT_LEASE_TTL,
        ge=1,
        le=600,
        description="seconds a partition lease lasts without renewal (renewed every third of it): a shorter TTL "
        "hands a dead sink's partitions over sooner, a longer one rides through longer NATS elections",
    )

    @model_validator(mode="after")
    def _disjoint(self) -> SinkSettings:
        both = set(self.primary_partitions or ()) & set(self.standby_partitions)
        if both:
            raise ValueError(f"partition {min(both)} is both in --partitions and --standby")
        if self.primary_partitions is None and self.standby_partitions:
            raise ValueError("--standby needs --partitions to be a list: with --partitions all there is none left")
        return self

    @property
    def primary_partitions(self) -> tuple[int, ...] | None:
        """The partitions to own at once; None: every partition of the stream."""
        return parse_partition_list(self.partitions)

    @property
    def standby_partitions(self) -> tuple[int, ...]:
        return parse_partition_list(self.standby) or ()

    @property
    def owner_name(self) -> str:
        return self.sink_name or f"{socket.gethostname()}-{os.getpid()}"

    @property
    def db_path(self) -> Path:
        """The store with one partition (the single-node layout)."""
        return self.data_dir / "logmesh.duckdb"
