from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from logmesh.common.settings import DataDir, JetStreamName, ServiceSettings, SinkMetricsPort


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

    @property
    def db_path(self) -> Path:
        return self.data_dir / "logmesh.duckdb"
