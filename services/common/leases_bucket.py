"""The key-value bucket that holds the partition leases: which sink owns which partition.

One key per partition (:func:`lease_key`), one value each (history 1), gone by itself when its owner
stops renewing it for the lease's time to live (the bucket's ``max_age``). ``logmesh up`` declares it
as the admin user; a sink declares it when it is missing (its NATS user may create it, not change it).
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

log = logging.getLogger("logmesh.nats")

LEASE_BUCKET = "LOGMESH_LEASES"
# The stream nats-server keeps the bucket in (what the NATS permissions name).
LEASE_STREAM = f"KV_{LEASE_BUCKET}"
# A sink's partitions go to a standby about two TTLs after it dies; the holder trusts its lease for
# 0.8 TTL after each renewal it sends (every third of the TTL), which a loaded event loop must not miss.
DEFAULT_LEASE_TTL = 5.0


def lease_key(partition: int) -> str:
    return f"p{partition}"


async def ensure_lease_bucket(js: JetStreamContext, ttl: float, replicas: int) -> KeyValue:
    """The lease bucket, created when missing (never changed: a bucket of another TTL is used as it is,
    and the log says so)."""
    try:
        kv = await js.key_value(LEASE_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        config = KeyValueConfig(
            bucket=LEASE_BUCKET,
            description="logmesh partition leases",
            history=1,
            ttl=ttl,
            replicas=replicas,
            storage=StorageType.FILE,
            direct=True,
        )
        try:
            return await js.create_key_value(config)
        except BadRequestError:  # another process created it first, perhaps with another TTL
            kv = await js.key_value(LEASE_BUCKET)
    status = await kv.status()
    have = status.ttl
    if have is not None and abs(have - ttl) > 1e-3:
        log.warning(
            "lease bucket %s keeps a lease %g s, not the configured %g s: running with %g s (delete the bucket "
            "as the admin user while no sink runs to change it)",
            LEASE_BUCKET,
            have,
            ttl,
            have,
        )
    return kv
