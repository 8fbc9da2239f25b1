from __future__ import annotations

from pydantic import Field

from logmesh.common.settings import JetStreamName, ReadingHttpSettings


class QuerySettings(ReadingHttpSettings):
    consumer: JetStreamName = Field("sink", description="the sink's durable consumer, for lag figures")
    query_timeout: float = Field(5.0, gt=0, description="seconds to wait for the sink to answer a query")
    cluster_nodes: str = Field(
        "",
        description="the NATS nodes to show in /stats, name=url[@pid] comma-separated (logmesh up gives its own)",
    )
