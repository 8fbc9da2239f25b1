"""HTTP authentication: bearer tokens in two scopes, checked by one pure ASGI middleware.

``ingest`` is ``POST /publish``; ``read`` is every other route, the dashboard and any unknown path
(an anonymous caller learns nothing, not even which paths exist), except ``/healthz``, ``/readyz``
and the login page. A browser that signed in (``logmesh.common.login``) carries a session cookie
derived from its read token; it stands for the read scope on GET and HEAD only.

A request's token is hashed once (SHA-256) and compared with the digest of every configured token of
both scopes with ``hmac.compare_digest``, without stopping at a match: the time taken says nothing
about which token, or how much of one, was right.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Collection, Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.json_schema import models_json_schema
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from logmesh.common.errors import error_response
from logmesh.common.flags import SettingsError
from logmesh.common.openapi import REF, ErrorBody
from logmesh.common.settings import HttpAuth
from logmesh.common.tokens import TokenSet, digest, listed_tokens

log = logging.getLogger("logmesh.auth")

AccessScope = Literal["ingest", "read"]
INGEST: AccessScope = "ingest"
READ: AccessScope = "read"

SESSION_COOKIE = "logmesh_session"
_SESSION_COOKIE_NAME = SESSION_COOKIE.encode()
REALM = 'Bearer realm="logmesh"'
# Set on /readyz requests: whether the caller may read, and so see more than the status.
MAY_READ = "logmesh.may_read"

# The one map from a path to the scope it needs. Everything not named here needs read.
_OPEN = frozenset({"/healthz", "/readyz"})
LOGIN_OPEN = frozenset({"/login", "/login.css", "/logout"})  # served only with the dashboard
_INGEST = frozenset({"/publish"})


def required_scope(path: str, *, login: bool) -> AccessScope | None:
    """The scope a path needs, None when it is open. ``login``: the app serves the login page."""
    if path in _OPEN or (login and path in LOGIN_OPEN):
        return None
    return INGEST if path in _INGEST else READ


def _any_equal(candidate: bytes, digests: Iterable[bytes]) -> bool:
    found = False
    for known in digests:
        found |= hmac.compare_digest(candidate, known)  # no early exit: constant time per set
    return found


class Authenticator:
    """The tokens of both scopes, and the checks made against them."""

    def __init__(self, ingest: TokenSet, read: TokenSet) -> None:
        self._ingest = ingest
        self._read = read

    @classmethod
    def from_settings(cls, settings: HttpAuth, needs: Collection[AccessScope]) -> Authenticator | None:
        """The tokens of ``settings``; None with ``--no-auth``. A scope in ``needs`` without a token is
        a :class:`SettingsError` (one line: the command exits 2). A scope not needed may have none:
        its routes then answer 401 to everyone."""
        if settings.no_auth:
            return None
        ingest = _token_set(INGEST, "ingest", settings.ingest_token, settings.ingest_token_file, needs)
        read = _token_set(READ, "query", settings.query_token, settings.query_token_file, needs)
        return cls(ingest, read)

    def grants(self, token: bytes) -> frozenset[AccessScope]:
        """The scopes a bearer token grants (none for a token not recognised)."""
        candidate = digest(token)
        ingest = _any_equal(candidate, self._ingest.digests())
        read = _any_equal(candidate, self._read.digests())
        return frozenset(s for s, granted in ((INGEST, ingest), (READ, read)) if granted)

    def session_is_valid(self, value: bytes) -> bool:
        """Whether a session cookie's value comes from a current read token."""
        return _any_equal(digest(value), self._read.sessions())

    def may_read(self, scope: Scope) -> bool:
        """Whether the request carries read access (a read token, or a session on GET or HEAD)."""
        header, cookie, _ = _credentials(scope["headers"])
        if header is not None:
            token = bearer_token(header)
            return token is not None and READ in self.grants(token)
        return cookie is not None and scope["method"] in ("GET", "HEAD") and self.session_is_valid(cookie)


def _token_set(
    scope: AccessScope, flag: str, listed: SecretStr | None, file: Path | None, needs: Collection[AccessScope]
) -> TokenSet:
    """A scope's tokens from its settings (``--<flag>-token``, ``--<flag>-token-file``); none, when the
    scope is needed, is a :class:`SettingsError`."""
    setting = f"--{flag}-token (LOGMESH_{flag.upper()}_TOKEN)"
    tokens = TokenSet(scope, listed_tokens(listed, setting), file)
    if scope in needs and not len(tokens):
        given = f"{file} holds none" if file is not None else f"give {setting} or --{flag}-token-file"
        raise SettingsError(f"no {scope} token: {given}, or --no-auth to serve without authentication")
    return tokens


def bearer_token(header: bytes) -> bytes | None:
    """The token of ``Bearer <token>`` (scheme in any case), or None when the header is another scheme."""
    scheme, _, token = header.strip().partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None


def _credentials(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None, bytes]:
    """The Authorization header, the session cookie's value and the Accept header, in one pass."""
    authorization: bytes | None = None
    session: bytes | None = None
    accept = b""
    for name, value in headers:
        if name == b"authorization":
            authorization = value if authorization is None else authorization
        elif name == b"cookie":
            for pair in value.split(b";"):
                key, _, cookie = pair.strip().partition(b"=")
                if key == _SESSION_COOKIE_NAME:
                    session = cookie
        elif name == b"accept":
            accept = value
    return authorization, session, accept


def _refusal(status: int, message: str, challenge: str) -> Response:
    return error_response(status, None, message, headers={"WWW-Authenticate": challenge})


_A = {INGEST: "an ingest", READ: "a read"}
_TO_LOGIN = {"Location": "/login", "Cache-Control": "no-store"}


class AuthMiddleware:
    """Lets a request through when it carries the scope its path needs; else answers 401 (no token,
    or one not recognised), 403 (a token of the other scope) or, for a browser opening the dashboard
    without a session, 303 to ``/login``. ``token_login`` answers ``GET /?token=<read token>`` (the
    login page's, when the app serves the dashboard).

    Like ``SecurityHeaders``, ``__call__`` returns the awaitable of the call it passes on: on the
    ``POST /publish`` path it costs a set lookup, one pass over the headers, one SHA-256 and a
    comparison per configured token."""

    __slots__ = ("_app", "_auth", "_token_login")

    def __init__(self, app: ASGIApp, auth: Authenticator, token_login: ASGIApp | None = None) -> None:
        self._app = app
        self._auth = auth
        self._token_login = token_login

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] != "http":
            return self._app(scope, receive, send)
        path = scope["path"]
        needed = required_scope(path, login=self._token_login is not None)
        if needed is None:
            if path == "/readyz":
                scope[MAY_READ] = self._auth.may_read(scope)
            return self._app(scope, receive, send)
        header, cookie, accept = _credentials(scope["headers"])
        if header is not None:
            refusal = self._check_bearer(header, needed)
            return self._app(scope, receive, send) if refusal is None else refusal(scope, receive, send)
        if needed == READ and scope["method"] in ("GET", "HEAD"):
            dashboard = path == "/" and self._token_login is not None
            if dashboard and _has_token_parameter(scope["query_string"]):
                assert self._token_login is not None
                return self._token_login(scope, receive, send)
            if cookie is not None and self._auth.session_is_valid(cookie):
                return self._app(scope, receive, send)
            if dashboard and b"text/html" in accept:
                return Response(status_code=303, headers=_TO_LOGIN)(scope, receive, send)
            if cookie is not None:
                message = "the dashboard session has ended (the read token changed); sign in again at /login"
                return _refusal(401, message, REALM + ', error="invalid_token"')(scope, receive, send)
        message = f"no token: this route needs {_A[needed]} token in the header 'Authorization: Bearer <token>'"
        return _refusal(401, message, REALM)(scope, receive, send)

    def _check_bearer(self, header: bytes, needed: AccessScope) -> Response | None:
        token = bearer_token(header)
        if token is None:
            return _refusal(401, "no token: the Authorization header is not 'Bearer <token>'", REALM)
        granted = self._auth.grants(token)
        if needed in granted:
            return None
        if granted:
            challenge = f'{REALM}, error="insufficient_scope", scope="{needed}"'
            return _refusal(403, f"the token lacks the {needed} scope this route needs", challenge)
        return _refusal(401, "token not recognised", REALM + ', error="invalid_token"')


def _has_token_parameter(query: bytes) -> bool:
    return any(pair.partition(b"=")[0] == b"token" for pair in query.split(b"&"))


def secured_openapi(spec: dict[str, Any], *, login: bool) -> dict[str, Any]:
    """``spec`` with the bearer scheme (and the dashboard's session cookie) declared, and each
    operation's security and 401/403 answers, from :func:`required_scope`."""
    spec["components"]["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "an ingest token (POST /publish) or a read token (every other route)",
        },
        "session": {
            "type": "apiKey",
            "in": "cookie",
            "name": SESSION_COOKIE,
            "description": "set by signing in at /login with a read token; GET and HEAD only",
        },
    }
    schemas = spec["components"]["schemas"]
    if ErrorBody.__name__ not in schemas:  # an app whose routes declare no error of their own
        _, definitions = models_json_schema([(ErrorBody, "serialization")], ref_template=REF)
        schemas.update(definitions.get("$defs", {}))
    error = {"content": {"application/json": {"schema": {"$ref": REF.format(model=ErrorBody.__name__)}}}}
    for path, operations in spec["paths"].items():
        needed = required_scope(path, login=login)
        for method, operation in operations.items():
            if needed is None:
                operation["security"] = []
                continue
            operation["security"] = [{"bearer": [needed]}]
            if needed == READ and method in ("get", "head"):
                operation["security"].append({"session": []})
            operation["responses"]["401"] = {"description": "no token, or a token not recognised", **error}
            operation["responses"]["403"] = {"description": f"the token lacks the {needed} scope", **error}
    return spec
