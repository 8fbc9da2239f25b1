from __future__ import annotations

from pydantic import Field

from logmesh.common.settings import MSG_ID_KEY_MIN, HttpSettings, MsgIdKeySetting


class IngestSettings(HttpSettings):
    max_batch: int = Field(10_000, ge=1, le=1_000_000, description="most events in one POST /publish")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest request body accepted")
    body_timeout: float = Field(30.0, gt=0, description="seconds allowed to receive a request body")
    publish_timeout: float = Field(
        10.0,
        gt=0,
        description="seconds to get a batch acked by JetStream, retrying with the same ids through a stream "
        "leader election, before answering 503",
    )
    msg_id_key: MsgIdKeySetting = Field(
        None,
        description=f"secret (at least {MSG_ID_KEY_MIN} characters) keying the message ids ingest gives events; "
        "give every ingest the same one so that JetStream's window catches a repeat sent to another, or after a "
        "restart (none: a random key per start)",
    )
