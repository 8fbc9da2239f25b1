"""Who may do what on NATS: one user per role, with the subjects it needs and nothing else.

The one place the permissions are written. ``logmesh up`` gives the embedded nats-server the
``authorization`` block :func:`server_authorization` renders; ``logmesh nats-config`` prints the
same block for a nats-server of your own (``deploy/nats-server.conf`` is its output, checked by a
test). Passwords are never in it: each is a variable (``$LOGMESH_SINK_NATS_PASSWORD``, ...) that
nats-server reads from its environment, so the file can be shown, committed and diffed.

The roles:

- ``publisher``: a third-party service that publishes events (``nats pub logs.<topic>``) and
  receives its PubAcks. Nothing else: no receipts (they move the counters), no JetStream API, no
  queries, no other client's inbox (every logmesh user has an inbox prefix of its own).
- ``ingest``: publishes events and receipts (a partition's on ``logmesh.receipts.<k>``); may read the
  stream's info and create it.
- ``sink``: the only consumer of the stream and the only responder to queries (a forged responder
  in its queue group would answer with forged data); may create its own consumer. It answers only
  into the inboxes of the users that may ask (query, admin): a request's reply subject is the
  requester's choice, and with nats-server's ``allow_responses`` a request replying "into"
  ``$JS.API.STREAM.DELETE.LOGS`` would have the sink delete the stream. It may create, read, pull from
  and ack any consumer of the stream (a partition's is named for its file), and take and renew the
  partition leases (``leases_bucket``), creating their bucket when it is missing.
- ``query``: asks the sink, reads the stream's and its consumers' info (owners come from the sinks). Publishes
  nothing else.
- ``admin``: everything; the only one that may update, purge or delete the stream or a consumer.

Services create the stream and the sink's consumer when they are missing (so they start in any
order), but cannot change or destroy them: an attacker holding a service's password cannot purge
acknowledged events by "updating" the stream to a one-second ``max_age``. A changed stream shape is
applied by whoever holds the admin password (``logmesh up`` does it at start).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from logmesh.common.leases_bucket import LEASE_BUCKET, LEASE_STREAM
from logmesh.common.subjects import LOG_SUBJECTS, QUERY_SUBJECT_PREFIX, RECEIPT_SUBJECT

Role = Literal["admin", "publisher", "ingest", "sink", "query"]
ROLES: tuple[Role, ...] = ("admin", "publisher", "ingest", "sink", "query")
SERVICE_ROLES: tuple[Role, ...] = ("ingest", "sink", "query")

# A publisher is any NATS client: it keeps the default inbox prefix. Every other user has its own,
# and only it may subscribe there, so nobody reads another role's replies.
DEFAULT_INBOX = "_INBOX"

# Who may ask the sink (queries, ``nats micro``), and so receive its answers.
ASKING_ROLES: tuple[Role, ...] = ("query", "admin")


def inbox_prefix(role: Role) -> str:
    return DEFAULT_INBOX if role == "publisher" else f"_INBOX_{role}"


def password_secret(role: Role) -> str:
    """The name of the role's password among ``logmesh up``'s secrets (``secrets_store``)."""
    return "publisher-password" if role == "publisher" else f"{role}-nats-password"


def secret_variable(secret: str) -> str:
    """The environment variable of a secret: ``sink-nats-password`` is ``LOGMESH_SINK_NATS_PASSWORD``,
    read by nats-server (its config names it) and by the settings of the command that takes it."""
    return "LOGMESH_" + secret.upper().replace("-", "_")


def password_variable(role: Role) -> str:
    return secret_variable(password_secret(role))


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _lease_reads(api: str) -> tuple[str, ...]:
    """Reading the lease bucket: its stream's info, a key's value (direct or through the leader)."""
    return (
        f"{api}.STREAM.INFO.{LEASE_STREAM}",
        f"{api}.DIRECT.GET.{LEASE_STREAM}",
        f"{api}.DIRECT.GET.{LEASE_STREAM}.>",
        f"{api}.STREAM.MSG.GET.{LEASE_STREAM}",
    )


def permissions(role: Role, stream: str = "LOGS") -> Permissions:
    """A partition's consumer is named for its file (``sink-p<k>-<file id>``), so the sink may use any
    consumer of ``stream``, whatever it is named, and no other stream's."""
    api = "$JS.API"
    inbox = inbox_prefix(role) + ".>"
    stream_info = f"{api}.STREAM.INFO.{stream}"
    stream_create = f"{api}.STREAM.CREATE.{stream}"
    if role == "admin":
        return Permissions(publish=(">",), subscribe=(">",))
    if role == "publisher":
        return Permissions(publish=(LOG_SUBJECTS,), subscribe=(inbox,))
    if role == "ingest":
        return Permissions(
            publish=(LOG_SUBJECTS, RECEIPT_SUBJECT, f"{RECEIPT_SUBJECT}.*", stream_info, stream_create),
            subscribe=(inbox,),
        )
    if role == "sink":
        return Permissions(
            publish=(
                stream_info,
                stream_create,
                f"{api}.CONSUMER.INFO.{stream}.*",
                f"{api}.CONSUMER.CREATE.{stream}.*",
                f"{api}.CONSUMER.CREATE.{stream}.*.>",  # the form that names the filter subject
                f"{api}.CONSUMER.DURABLE.CREATE.{stream}.*",
                f"{api}.CONSUMER.MSG.NEXT.{stream}.*",
                f"$JS.ACK.{stream}.*.>",
                f"$JS.ACK.*.*.{stream}.*.>",  # the form with a JetStream domain and account hash
                f"$KV.{LEASE_BUCKET}.>",
                f"{api}.STREAM.CREATE.{LEASE_STREAM}",
                *_lease_reads(api),
                *(inbox_prefix(asking) + ".>" for asking in ASKING_ROLES),
            ),
            subscribe=(f"{QUERY_SUBJECT_PREFIX}.>", "$SRV.>", inbox),
        )
    return Permissions(
        publish=(f"{QUERY_SUBJECT_PREFIX}.>", stream_info, f"{api}.CONSUMER.INFO.{stream}.*"),
        subscribe=(inbox,),
    )


def server_authorization(stream: str = "LOGS") -> str:
    """The ``authorization`` block for nats-server: every role's user, its password as a variable
    from the server's environment, its permissions. Anything not allowed is denied."""
    lines = ["authorization {", "  users = ["]
    for role in ROLES:
        p = permissions(role, stream)
        publish, subscribe = json.dumps(list(p.publish)), json.dumps(list(p.subscribe))
        allowed = f"publish: {{ allow: {publish} }}, subscribe: {{ allow: {subscribe} }}"
        lines.append(f"    {{ user: {role}, password: ${password_variable(role)}, permissions: {{ {allowed} }} }}")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"
