"""logmesh: a pub-sub log aggregator on NATS JetStream and DuckDB."""
