"""The secrets ``logmesh up`` generates and keeps under ``DATA_DIR/secrets/``.

One file per secret (``ingest-token``, ``sink-nats-password``, ...), mode 0600 in a 0700 directory,
written once and reused on every start, so that tokens handed out stay valid across restarts. A
secret given by flag or environment wins over the file and is never written to disk. ``logmesh
publish``, ``stats`` and ``tail`` read the same files when pointed at the data directory.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
import string
from collections.abc import Mapping
from pathlib import Path

from logmesh.common.nats_cluster import ROUTE_PASSWORD
from logmesh.common.nats_roles import ROLES, password_secret, secret_variable

log = logging.getLogger("logmesh")

SECRETS_DIR = "secrets"
# The secrets of the HTTP API and of ingest; the NATS passwords are named by ``nats_roles.password_secret``.
INGEST_TOKEN = "ingest-token"
QUERY_TOKEN = "query-token"
MSG_ID_KEY = "msg-id-key"
# Every secret of a deployment: the tokens, the message-id key, a NATS password per role.
ALL_SECRETS = (INGEST_TOKEN, QUERY_TOKEN, MSG_ID_KEY, *(password_secret(role) for role in ROLES))
# And of a NATS cluster: the password its routes log in with (``nats_cluster``).
CLUSTER_SECRETS = (ROUTE_PASSWORD,)
# 32 random bytes, URL-safe, after a letter: fits a header, a URL's userinfo and a nats-server
# configuration variable (which nats-server parses as a value: "-x" or "123" would not be a string).
_BYTES = 32


# Every variable that may hold a secret: a child process gets only the ones meant for it.
SECRET_VARIABLES = frozenset(
    {secret_variable(name) for name in (*ALL_SECRETS, *CLUSTER_SECRETS)} | {"LOGMESH_NATS_PASSWORD"}
)


def without_secrets(env: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name not in SECRET_VARIABLES}


def new_secret() -> str:
    return secrets.choice(string.ascii_letters) + secrets.token_urlsafe(_BYTES)


def secrets_dir(data_dir: Path) -> Path:
    return data_dir / SECRETS_DIR


def secret_path(data_dir: Path, name: str) -> Path:
    return secrets_dir(data_dir) / name


def read_secret(data_dir: Path, name: str) -> str | None:
    """The stored secret, or None when there is none; warns when others may read the file."""
    path = secret_path(data_dir, name)
    try:
        mode = path.stat().st_mode
        value = path.read_text().strip()
    except FileNotFoundError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s may be read by other users (mode %o): chmod 600 it", path, stat.S_IMODE(mode))
    return value or None


def _write_new(path: Path, value: str) -> bool:
    """Writes ``value`` to a new file only this user may read; False if the file appeared first."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return True


def ensure_secrets(data_dir: Path, given: dict[str, str | None]) -> tuple[dict[str, str], list[str]]:
    """Every named secret: the given value when there is one, else the stored one, else a new
    strong one stored for next time. Returns the values and the names generated now."""
    directory = secrets_dir(data_dir)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)  # also one made earlier, or by hand, with a looser mode
    values: dict[str, str] = {}
    generated: list[str] = []
    for name, value in given.items():
        if value:
            values[name] = value
            continue
        stored = read_secret(data_dir, name)
        if stored is None:
            fresh = new_secret()
            if _write_new(secret_path(data_dir, name), fresh):
                generated.append(name)
                stored = fresh
            else:
                stored = read_secret(data_dir, name)
        if not stored:
            raise RuntimeError(f"{secret_path(data_dir, name)} is empty: delete it to have a new one generated")
        values[name] = stored
    return values, generated
