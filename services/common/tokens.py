"""The bearer tokens of one scope, kept as SHA-256 digests: from a setting (comma-separated) and from
a file (one a line) that is read again when it changes, so that tokens rotate without a restart.

Only digests are kept, of each token and of the dashboard session value it gives: a request's token
is hashed once and compared with every digest in constant time (``logmesh.common.auth``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path

from pydantic import SecretStr

from logmesh.common.flags import SettingsError

log = logging.getLogger("logmesh.auth")

# A token file is looked at (one stat) at most this often, from the request that finds it due.
RELOAD_INTERVAL = 1.0
# The dashboard's cookie holds HMAC-SHA256(token, this label): not the token, and a new token ends it.
_SESSION_LABEL = b"logmesh dashboard session v1"


def digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


def session_value(token: bytes) -> str:
    """The value of the dashboard's session cookie for a read token."""
    return hmac.new(token, _SESSION_LABEL, hashlib.sha256).hexdigest()


def _bearer_safe(token: str) -> bool:
    """Whether a ``Authorization: Bearer`` header can carry the token: visible ASCII, no spaces."""
    return all("!" <= c <= "~" for c in token)


def listed_tokens(setting: SecretStr | None, what: str) -> list[bytes]:
    """The tokens of a comma-separated setting; empty entries (a trailing comma) are skipped."""
    tokens = [t.strip() for t in (setting.get_secret_value() if setting else "").split(",")]
    tokens = [t for t in tokens if t]
    for number, token in enumerate(tokens, 1):
        if not _bearer_safe(token):
            # Never the token itself: it would end up in a terminal or a log.
            raise SettingsError(f"{what}: token {number} is not visible ASCII without spaces, as a Bearer header needs")
        _warn_if_short(token, f"{what}: token {number}")
    return [t.encode("ascii") for t in tokens]


# Generated tokens are 44 characters; one much shorter may be guessed, by a person or a dictionary.
SHORT_TOKEN = 16


def _warn_if_short(token: str, which: str) -> None:
    if len(token) < SHORT_TOKEN:
        log.warning("%s is %d characters: fewer than %d are easy to guess", which, len(token), SHORT_TOKEN)


def first_token(setting: SecretStr | None, file: Path | None, what: str) -> bytes | None:
    """One token of a scope (the first listed, else the file's first), for a client in the process
    that serves it (``logmesh demo`` publishing to its own port)."""
    listed = listed_tokens(setting, what)
    if listed:
        return listed[0]
    if file is not None:
        try:
            return next(iter(_file_tokens(file.read_bytes(), file)), None)
        except (OSError, ValueError) as exc:
            raise SettingsError(f"{what} file: {_reason(exc, file)}") from None
    return None


def _file_tokens(text: bytes, path: Path) -> list[bytes]:
    """One token a line; blank lines and ``#`` comments are skipped. ValueError names a bad line."""
    try:
        lines = text.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    tokens = []
    for number, line in enumerate(lines, 1):
        token = line.strip()
        if not token or token.startswith("#"):
            continue
        if not _bearer_safe(token):
            raise ValueError(f"{path} line {number}: not a token (visible ASCII without spaces)")
        _warn_if_short(token, f"{path} line {number}")
        tokens.append(token.encode("ascii"))
    return tokens


class TokenSet:
    """The tokens of one scope. ``digests()`` and ``sessions()`` are what a request is checked against."""

    def __init__(self, scope: str, listed: Iterable[bytes], file: Path | None = None) -> None:
        self.scope = scope
        self._listed = list(listed)
        self._file = file
        self._from_file: list[bytes] = []
        self._stamp: tuple[int, int, int] | None = None
        self._due = 0.0
        self._problem = ""
        if file is not None:
            try:
                self._stamp, self._from_file = self._read(file)
            except (OSError, ValueError) as exc:
                raise SettingsError(f"{scope} token file: {_reason(exc, file)}") from None
            self._due = time.monotonic() + RELOAD_INTERVAL
        self._digests: tuple[bytes, ...] = ()
        self._sessions: tuple[bytes, ...] = ()
        self._derive()

    def __len__(self) -> int:
        return len(self._digests)

    def digests(self) -> tuple[bytes, ...]:
        """SHA-256 of each token."""
        if self._file is not None:
            self._reload_if_changed()
        return self._digests

    def sessions(self) -> tuple[bytes, ...]:
        """SHA-256 of each token's session cookie value."""
        if self._file is not None:
            self._reload_if_changed()
        return self._sessions

    def _derive(self) -> None:
        tokens = dict.fromkeys([*self._listed, *self._from_file])  # in order, each once
        self._digests = tuple(digest(t) for t in tokens)
        self._sessions = tuple(digest(session_value(t).encode("ascii")) for t in tokens)

    @staticmethod
    def _read(file: Path) -> tuple[tuple[int, int, int], list[bytes]]:
        with file.open("rb") as f:
            st = os.fstat(f.fileno())
            return (st.st_mtime_ns, st.st_size, st.st_ino), _file_tokens(f.read(), file)

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + RELOAD_INTERVAL
        assert self._file is not None
        try:
            st = os.stat(self._file)
            if (st.st_mtime_ns, st.st_size, st.st_ino) == self._stamp:
                return
            self._stamp, self._from_file = self._read(self._file)
        except (OSError, ValueError) as exc:
            # The tokens read before stay: a file being replaced must not lock everyone out. Said
            # once per problem, not once a second.
            problem = _reason(exc, self._file)
            if problem != self._problem:
                log.error("%s token file: %s; keeping the tokens read before", self.scope, problem)
                self._problem = problem
            return
        self._problem = ""
        self._derive()
        log.info("%s token file %s read again: %d token(s)", self.scope, self._file, len(self._digests))


def _reason(exc: OSError | ValueError, file: Path) -> str:
    if isinstance(exc, OSError):
        return f"cannot read {file}: {exc.strerror or exc}"
    return str(exc)
