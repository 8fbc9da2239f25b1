"""The dashboard's login: a person gives the read token once, on the form at ``/login`` or as
``/?token=<read token>``, and the browser gets a session cookie instead of keeping the token.

The cookie's value is HMAC-SHA256 keyed by the token (``tokens.session_value``): the raw token is
never stored in the browser, and a rotated token ends every session made with the old one. The
cookie is HttpOnly, SameSite=Strict, Path=/, and Secure on HTTPS; it grants read on GET and HEAD only
(``auth.AuthMiddleware``). The page and its stylesheet are package files, read once.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from logmesh.common.auth import READ, REALM, SESSION_COOKIE, Authenticator
from logmesh.common.errors import error_response
from logmesh.common.tokens import session_value

_MESSAGE_SLOT = "<!-- message -->"
_MAX_FORM_BYTES = 4096  # one token and its field name, with room to spare
_NO_STORE = {"Cache-Control": "no-store"}
_FORM_TYPE = "application/x-www-form-urlencoded"


@functools.cache
def _files() -> tuple[str, bytes]:
    here = resources.files("logmesh.common")
    page = here.joinpath("login.html").read_text("utf-8")
    if page.count(_MESSAGE_SLOT) != 1:
        raise RuntimeError(f"login.html must hold {_MESSAGE_SLOT} exactly once")
    return page, here.joinpath("login.css").read_bytes()


def _page(status: int = 200, message: str | None = None) -> Response:
    """The form; with a message (a fixed sentence, never the input) after a refused token."""
    page, _ = _files()
    if message is not None:
        page = page.replace(_MESSAGE_SLOT, f'<p class="error" role="alert">{message}</p>')
    headers = dict(_NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = REALM + ', error="invalid_token"'
    return Response(page, status_code=status, media_type="text/html; charset=utf-8", headers=headers)


def _cookie(value: str, secure: bool, *, clear: bool = False) -> str:
    attributes = [f"{SESSION_COOKIE}={value}", "Path=/", "HttpOnly", "SameSite=Strict"]
    if clear:
        attributes.append("Max-Age=0")
    if secure:
        attributes.append("Secure")
    return "; ".join(attributes)


class Login:
    """``GET /login`` (the form), ``POST /login``, ``POST /logout``, ``GET /login.css``, and the
    answer to ``GET /?token=``."""

    def __init__(self, auth: Authenticator) -> None:
        self._auth = auth

    def _sign_in(self, token: str, request: Request) -> Response:
        """303 to a clean ``/`` with the session cookie for a read token; else 401 and the form."""
        raw = token.encode("utf-8", errors="replace")
        granted = self._auth.grants(raw) if raw else frozenset()
        if READ not in granted:
            if not raw:
                message = "No token given."
            elif granted:
                message = "That token cannot read: it is an ingest token."
            else:
                message = "That token was not recognised."
            return _page(401, message)
        cookie = _cookie(session_value(raw), request.url.scheme == "https")
        return Response(status_code=303, headers={"Location": "/", "Set-Cookie": cookie, **_NO_STORE})

    async def form(self, request: Request) -> Response:
        return _page()

    async def stylesheet(self, request: Request) -> Response:
        return Response(_files()[1], media_type="text/css; charset=utf-8", headers={"Cache-Control": "no-cache"})

    async def submit(self, request: Request) -> Response:
        media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if media_type != _FORM_TYPE:
            return error_response(415, None, f"the login form is sent as {_FORM_TYPE}")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                return error_response(413, None, f"a login form is at most {_MAX_FORM_BYTES} bytes")
        fields = parse_qs(body.decode("latin-1"), keep_blank_values=True)
        return self._sign_in((fields.get("token") or [""])[0], request)

    async def logout(self, request: Request) -> Response:
        cookie = _cookie("", request.url.scheme == "https", clear=True)
        return Response(status_code=303, headers={"Location": "/login", "Set-Cookie": cookie, **_NO_STORE})

    async def token_in_url(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``GET /?token=<t>``: signs in as the form does, then the dashboard's URL holds no token."""
        request = Request(scope, receive)
        await self._sign_in(request.query_params.get("token", ""), request)(scope, receive, send)

    def routes(self) -> list[Route]:
        return [
            Route("/login", self.form, methods=["GET"]),
            Route("/login", self.submit, methods=["POST"]),
            Route("/logout", self.logout, methods=["POST"]),
            Route("/login.css", self.stylesheet, methods=["GET"]),
        ]


_SET_COOKIE = {"Set-Cookie": {"schema": {"type": "string"}}}
_HTML = {"content": {"text/html": {"schema": {"type": "string"}}}}
_SIGNED_IN = {"description": "signed in: the session cookie is set; Location is /", "headers": _SET_COOKIE}
_REFUSED = {"description": "the token is not a read token: the form again, with why", **_HTML}

LOGIN_PATHS: dict[str, Any] = {
    "/login": {
        "get": {"summary": "The dashboard's login form", "responses": {"200": {"description": "OK", **_HTML}}},
        "post": {
            "summary": "Sign in to the dashboard with a read token",
            "requestBody": {
                "required": True,
                "content": {
                    _FORM_TYPE: {
                        "schema": {"type": "object", "properties": {"token": {"type": "string"}}, "required": ["token"]}
                    }
                },
            },
            "responses": {"303": _SIGNED_IN, "401": _REFUSED},
        },
    },
    "/logout": {
        "post": {
            "summary": "Sign out: clears the session cookie",
            "responses": {"303": {"description": "signed out; Location is /login", "headers": _SET_COOKIE}},
        }
    },
    "/login.css": {
        "get": {
            "summary": "The login form's stylesheet",
            "responses": {"200": {"description": "OK", "content": {"text/css": {"schema": {"type": "string"}}}}},
        }
    },
}


def describe_token_in_url(spec: dict[str, Any]) -> dict[str, Any]:
    """Adds ``?token=`` to the dashboard's ``GET /`` in ``spec``."""
    page = spec["paths"]["/"]["get"]
    page.setdefault("parameters", []).append(
        {
            "name": "token",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "a read token: signs in as POST /login does, then redirects to / without it",
        }
    )
    page["responses"]["303"] = _SIGNED_IN
    return spec
