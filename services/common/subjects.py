"""The subjects and headers logmesh speaks on NATS, named once."""

from __future__ import annotations

LOG_SUBJECT_PREFIX = "logs."
LOG_SUBJECTS = "logs.>"
# Ingest and the load generator tell the sink here how many publishes JetStream dropped as duplicates.
RECEIPT_SUBJECT = "logmesh.receipts"
# The sink answers queries over its own DuckDB connection on these subjects.
QUERY_SUBJECT_PREFIX = "logmesh.query"
SINK_SERVICE_NAME = "logmesh-sink"
MSG_ID_HEADER = "Nats-Msg-Id"
SOURCE_HEADER = "Logmesh-Source"


def log_subject(topic: str) -> str:
    return LOG_SUBJECT_PREFIX + topic
