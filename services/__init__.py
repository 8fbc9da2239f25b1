"""logmesh: a pub-sub log aggregator on NATS JetStream and DuckDB."""

__version__ = "0.1.0"
