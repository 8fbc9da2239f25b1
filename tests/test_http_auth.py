"""HTTP authentication: two scopes of bearer tokens, the dashboard's login, HTTPS.

Most of it in process, straight through ASGI without the lifespan: nothing connects to NATS, so a
data route that lets a request through answers 503 (or 422), and what is checked is 401, 403 or
let through. Commands refused for a missing token, and HTTPS, run as real processes."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from playwright.sync_api import sync_playwright
from pydantic import SecretStr
from starlette.applications import Starlette

from logmesh.cli.stack import UpSettings, combined_app
from logmesh.cli.up_secrets import UpAuth
from logmesh.common import tokens
from logmesh.common.auth import INGEST, READ, Authenticator
from logmesh.common.processes import free_port
from logmesh.common.settings import SettingsError, settings_from_args
from logmesh.common.tokens import TokenSet, digest
from logmesh.common.waiting import wait_until_async
from logmesh.ingest.app import create_app as ingest_app
from logmesh.ingest.settings import IngestSettings
from logmesh.query.app import create_app as query_app
from logmesh.query.settings import QuerySettings
from tests.harness import Service, Up, event, run_together, wait_for
from tests.test_dashboard import CHROMIUM_FLAGS, RECORD_VIOLATIONS, chromium

pytestmark = pytest.mark.timeout(60)

INGEST_TOKENS = ("ingest-a", "ingest-b")  # two: a rotation under way
READ_TOKENS = ("read-a", "read-b")
ALL_TOKENS = (*INGEST_TOKENS, *READ_TOKENS)
WRONG = "not-a-token"
REALM = 'Bearer realm="logmesh"'

CREDENTIALS: dict[str, dict[str, str]] = {
    "anonymous": {},
    "wrong": {"authorization": f"Bearer {WRONG}"},
    "ingest": {"authorization": f"Bearer {INGEST_TOKENS[1]}"},
    "read": {"authorization": f"bearer {READ_TOKENS[1]}"},  # the scheme in any case
}
PUBLISH = orjson.dumps([event("auth", "a-1")])


def up_app() -> Starlette:
    """``logmesh up``'s app (ingest and query routes on one port), both scopes configured."""
    auth = Authenticator.from_settings(
        IngestSettings(ingest_token=",".join(INGEST_TOKENS), query_token=" , ".join(READ_TOKENS)), [INGEST, READ]
    )
    return combined_app(IngestSettings(), QuerySettings(), auth=auth)


def client(app: Starlette, base_url: str = "http://app") -> httpx.AsyncClient:
    """A client that keeps no cookies: each request carries exactly the credentials it is given."""

    async def forget_cookies(response: httpx.Response) -> None:
        c.cookies.clear()

    c = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=base_url, event_hooks={"response": [forget_cookies]}
    )
    return c


async def ask(c: httpx.AsyncClient, method: str, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = PUBLISH if method == "POST" else None
    return await c.request(method, path, content=body, headers={"content-type": "application/json", **(headers or {})})


def assert_refused(resp: httpx.Response, status: int, challenge: str, message: str) -> None:
    """The one error shape, the challenge, the security headers, and never a token in the answer."""
    assert resp.status_code == status, (resp.request.url, resp.text)
    body = resp.json()
    code = {401: "unauthorized", 403: "forbidden"}[status]
    assert body == {"error": {"status": status, "code": code, "message": body["error"]["message"], "details": []}}
    assert message in body["error"]["message"], body
    assert resp.headers.get_list("www-authenticate") == [challenge]
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'none'" in resp.headers["content-security-policy"]
    assert not any(token in resp.text for token in (*ALL_TOKENS, WRONG))


# (method, path) -> the scope it needs. Unknown paths need read: an anonymous caller gets 401, not 404.
ROUTES = {
    ("POST", "/publish"): INGEST,
    ("GET", "/stats"): READ,
    ("GET", "/stats/history"): READ,
    ("GET", "/events"): READ,
    ("GET", "/events/auth/a-1"): READ,
    ("GET", "/dead-letters"): READ,
    ("GET", "/metrics"): READ,
    ("GET", "/openapi.json"): READ,
    ("GET", "/"): READ,
    ("GET", "/dashboard.js"): READ,
    ("GET", "/favicon.ico"): READ,
    ("GET", "/no-such-path"): READ,
    ("DELETE", "/stats"): READ,
}


A = {INGEST: "an ingest", READ: "a read"}
# What each route answers once let through, without NATS.
ALLOWED = dict(zip(ROUTES, (503, 503, 200, 503, 503, 503, 200, 200, 200, 200, 200, 404, 405), strict=True))


@pytest.fixture(scope="module")
def answers() -> dict[tuple[str, str, str], httpx.Response]:
    async def run() -> dict[tuple[str, str, str], httpx.Response]:
        async with client(up_app()) as c:
            return {
                (who, method, path): await ask(c, method, path, headers)
                for who, headers in CREDENTIALS.items()
                for method, path in ROUTES
            }

    return asyncio.run(run())


@pytest.mark.parametrize(("method", "path"), list(ROUTES))
def test_each_route_needs_its_scope(
    answers: dict[tuple[str, str, str], httpx.Response], method: str, path: str
) -> None:
    needed = ROUTES[(method, path)]
    other = READ if needed == INGEST else INGEST
    assert_refused(answers[("anonymous", method, path)], 401, REALM, f"no token: this route needs {A[needed]} token")
    assert_refused(answers[("wrong", method, path)], 401, REALM + ', error="invalid_token"', "token not recognised")
    forbidden = answers[(other, method, path)]
    assert_refused(
        forbidden, 403, f'{REALM}, error="insufficient_scope", scope="{needed}"', f"lacks the {needed} scope"
    )
    allowed = answers[(needed, method, path)]
    assert allowed.status_code == ALLOWED[(method, path)], allowed.text


def test_health_routes_are_open_and_readiness_shows_details_only_to_readers() -> None:
    async def run() -> dict[str, httpx.Response]:
        app = ingest_app(IngestSettings(ingest_token="i", query_token="r"))
        async with client(app) as c:
            return {
                "healthz": await c.get("/healthz", headers=CREDENTIALS["wrong"]),
                "anonymous": await c.get("/readyz"),
                "ingest": await c.get("/readyz", headers={"authorization": "Bearer i"}),
                "read": await c.get("/readyz", headers={"authorization": "Bearer r"}),
            }

    got = asyncio.run(run())
    assert got["healthz"].status_code == 200 and got["healthz"].json() == {"status": "ok"}
    # Not ready (no NATS), and the same shape for everyone; the details only for a reader.
    for who in ("anonymous", "ingest"):
        assert got[who].status_code == 503
        assert got[who].json() == {"ready": False, "checks": {"jetstream": {"ok": False}}}
    assert got["read"].json() == {"ready": False, "checks": {"jetstream": {"ok": False, "connected": False}}}


def test_ingest_without_a_read_token_refuses_every_read() -> None:
    async def run() -> list[httpx.Response]:
        async with client(ingest_app(IngestSettings(ingest_token="only-ingest"))) as c:
            return [await c.get("/metrics", headers=h) for h in ({}, CREDENTIALS["wrong"])] + [
                await c.get("/metrics", headers={"authorization": "Bearer only-ingest"}),
                await c.get("/login"),  # no dashboard here: no login page, and no hint of one
            ]

    anonymous, wrong, ingest, login = asyncio.run(run())
    assert (anonymous.status_code, wrong.status_code, ingest.status_code, login.status_code) == (401, 401, 403, 401)


def test_the_openapi_description_declares_the_bearer_scheme() -> None:
    async def run() -> Any:
        async with client(up_app()) as c:
            return (await c.get("/openapi.json", headers=CREDENTIALS["read"])).json()

    spec = asyncio.run(run())
    assert spec["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": spec["components"]["securitySchemes"]["bearer"]["description"],
    }
    paths = spec["paths"]
    assert paths["/publish"]["post"]["security"] == [{"bearer": ["ingest"]}]
    assert paths["/stats"]["get"]["security"] == [{"bearer": ["read"]}, {"session": []}]
    assert paths["/healthz"]["get"]["security"] == paths["/login"]["post"]["security"] == []
    error = paths["/events"]["get"]["responses"]["403"]["content"]["application/json"]["schema"]["$ref"]
    assert error.rsplit("/", 1)[1] in spec["components"]["schemas"]
    assert {"401", "403"} <= set(paths["/openapi.json"]["get"]["responses"])
    assert "token" in [p["name"] for p in paths["/"]["get"]["parameters"]]


# ---- the dashboard's login ------------------------------------------------------------------------


def cookie_of(resp: httpx.Response) -> tuple[str, set[str]]:
    """The session cookie's value and its attributes."""
    [header] = resp.headers.get_list("set-cookie")
    pair, *attributes = (part.strip() for part in header.split(";"))
    name, _, value = pair.partition("=")
    assert name == "logmesh_session", header
    return value, set(attributes)


def test_signing_in_sets_a_session_cookie_derived_from_the_token() -> None:
    async def run() -> dict[str, Any]:
        async with client(up_app()) as c:
            form = await c.post("/login", data={"token": READ_TOKENS[0]})
            in_url = await c.get(f"/?token={READ_TOKENS[1]}")
            value, _ = cookie_of(form)
            session = {"cookie": f"logmesh_session={value}"}
            return {
                "form": form,
                "in_url": in_url,
                "wrong": await c.post("/login", data={"token": WRONG}),
                "ingest": await c.post("/login", data={"token": INGEST_TOKENS[0]}),
                "wrong_in_url": await c.get(f"/?token={WRONG}"),
                "page": await c.get("/", headers=session),
                "stats": await c.get("/stats", headers=session),
                "publish": await ask(c, "POST", "/publish", session),
                "forged": await c.get("/stats", headers={"cookie": f"logmesh_session={READ_TOKENS[0]}"}),
                "browser": await c.get("/", headers={"accept": "text/html,application/xhtml+xml"}),
                "api_browser": await c.get("/stats", headers={"accept": "text/html"}),
                "logout": await c.post("/logout", headers=session),
            }

    got = asyncio.run(run())
    for how in ("form", "in_url"):
        resp = got[how]
        assert resp.status_code == 303 and resp.headers["location"] == "/"  # a clean URL: no token in it
        value, attributes = cookie_of(resp)
        assert re.fullmatch("[0-9a-f]{64}", value) and value not in ALL_TOKENS
        assert attributes == {"Path=/", "HttpOnly", "SameSite=Strict"}  # Secure only over HTTPS
    assert cookie_of(got["form"])[0] != cookie_of(got["in_url"])[0]  # one per token
    for refused, says in (("wrong", "not recognised"), ("ingest", "ingest token"), ("wrong_in_url", "not recognised")):
        resp = got[refused]
        assert resp.status_code == 401 and "set-cookie" not in resp.headers
        assert resp.headers["content-type"].startswith("text/html") and says in resp.text
        assert '<form method="post" action="login">' in resp.text and WRONG not in resp.text
    assert got["page"].status_code == 200 and "text/html" in got["page"].headers["content-type"]
    assert got["stats"].status_code == 503  # through to the route: no NATS here
    # The cookie reads, and only reads: publishing still needs the ingest token.
    assert_refused(got["publish"], 401, REALM, "needs an ingest token")
    assert_refused(got["forged"], 401, REALM + ', error="invalid_token"', "session has ended")
    assert got["browser"].status_code == 303 and got["browser"].headers["location"] == "/login"
    assert got["api_browser"].status_code == 401
    assert got["logout"].status_code == 303 and got["logout"].headers["location"] == "/login"
    assert cookie_of(got["logout"]) == ("", {"Path=/", "HttpOnly", "SameSite=Strict", "Max-Age=0"})


def test_the_cookie_is_secure_over_https() -> None:
    async def run() -> httpx.Response:
        async with client(up_app(), "https://app") as c:
            return await c.post("/login", data={"token": READ_TOKENS[0]})

    assert "Secure" in cookie_of(asyncio.run(run()))[1]


def test_no_token_reaches_a_log_line_or_a_metric(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> str:
        async with client(up_app()) as c:
            for headers in CREDENTIALS.values():
                await c.get("/stats", headers=headers)
                await ask(c, "POST", "/publish", headers)
            await c.get(f"/?token={READ_TOKENS[0]}")
            await c.get(f"/?token={WRONG}")
            await c.post("/login", data={"token": WRONG})
            return (await c.get("/metrics", headers=CREDENTIALS["read"])).text

    with caplog.at_level(logging.DEBUG):
        metrics = asyncio.run(run())
    assert 'route="/",status="303"' in metrics and 'route="/publish",status="403"' in metrics
    # The services' own lines (the test's client logs the URLs it asks for, tokens and all).
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] in ("logmesh", "uvicorn"))
    for token in (*ALL_TOKENS, WRONG):
        assert token not in metrics and token not in logged


# ---- rotation -----------------------------------------------------------------------------------


def test_a_token_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    tokens = tmp_path / "read-tokens"
    tokens.write_text("# the dashboard's\nold-token\n\n")
    app = query_app(QuerySettings(query_token="fixed", query_token_file=tokens))

    async def run() -> None:
        async with client(app) as c:

            async def status(token: str) -> int:
                return (await c.get("/stats", headers={"authorization": f"Bearer {token}"})).status_code

            signed_in = await c.post("/login", data={"token": "old-token"})
            session = {"cookie": f"logmesh_session={cookie_of(signed_in)[0]}"}
            assert (await status("old-token"), await status("new-token")) == (503, 401)
            assert (await c.get("/stats", headers=session)).status_code == 503

            replacement = tmp_path / "read-tokens.new"
            replacement.write_text("new-token  \n# old-token withdrawn\n")
            os.replace(replacement, tokens)

            async def rotated() -> bool | None:
                return (await status("new-token"), await status("old-token")) == (503, 401) or None

            await wait_until_async(rotated, 10, "the new token file to be read")
            assert await status("fixed") == 503  # the setting's tokens stay
            ended = await c.get("/stats", headers=session)  # a session of the old token ends with it
            assert ended.status_code == 401 and "session has ended" in ended.text

    asyncio.run(run())


def test_settings_never_show_a_token() -> None:
    shown = QuerySettings(query_token="secret-read", ingest_token="secret-ingest")
    for text in (repr(shown), str(shown), shown.model_dump_json()):
        assert "secret-" not in text, text


def test_a_token_file_gone_bad_keeps_the_tokens_read_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tokens, "RELOAD_INTERVAL", 0.0)  # looked at on every request
    path = tmp_path / "tokens"
    path.write_text("good\n")
    read = TokenSet(READ, [], path)
    assert read.digests() == (digest(b"good"),)
    path.write_text("good\nbad token\n")  # a half-edited file: refused whole, said once
    with caplog.at_level(logging.ERROR):
        assert read.digests() == read.digests() == (digest(b"good"),)
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR] == [
        f"read token file: {path} line 2: not a token (visible ASCII without spaces); keeping the tokens read before"
    ]
    path.write_text("# comments and blank lines\n\n  next  \n")
    assert read.digests() == (digest(b"next"),)
    path.write_text("")  # every token withdrawn
    assert read.digests() == ()


def test_a_token_file_is_checked_at_the_start(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# none yet\n")
    with pytest.raises(SettingsError) as empty:
        Authenticator.from_settings(QuerySettings(query_token_file=path), [READ])
    assert str(empty.value) == f"no read token: {path} holds none, or --no-auth to serve without authentication"
    path.write_bytes(b"ok\n\xff\n")
    with pytest.raises(SettingsError, match=f"^read token file: {re.escape(str(path))} is not UTF-8 text$"):
        Authenticator.from_settings(QuerySettings(query_token_file=path), [READ])


# ---- settings and commands ----------------------------------------------------------------------


def test_no_auth_is_logged_as_a_warning_at_every_start(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ingest_app(IngestSettings(no_auth=True, ingest_token="ignored"))
        query_app(QuerySettings(no_auth=True))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert all("authentication is off" in w and "anyone who can reach" in w for w in warnings), warnings


def test_up_serves_the_tokens_given_else_those_it_keeps(tmp_path: Path) -> None:
    assert UpAuth(None).authenticator(UpSettings(no_auth=True)) is None
    kept = UpAuth.prepare(UpSettings(), tmp_path, enabled=True)
    generated = kept.authenticator(UpSettings())
    assert generated is not None
    assert generated.grants((kept.get("ingest-token") or "").encode()) == {INGEST}
    assert generated.grants((kept.get("query-token") or "").encode()) == {READ}
    given = kept.authenticator(UpSettings(ingest_token="given-token"))
    assert given is not None and given.grants(b"given-token") == {INGEST}
    assert given.grants((kept.get("ingest-token") or "").encode()) == frozenset()  # a token given wins


def refusals(runs: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess[str]]:
    """``logmesh <args>`` for each entry, run together, with no token in their environment."""
    clean = {k: v for k, v in os.environ.items() if "TOKEN" not in k and k != "LOGMESH_NO_AUTH"}
    return run_together(runs, clean)


def test_a_service_without_its_token_exits_2_with_one_line(tmp_path: Path) -> None:
    nowhere = ["--nats-url", f"nats://127.0.0.1:{free_port()}"]
    done = refusals(
        {
            "ingest": ["ingest", *nowhere, "--http-port", str(free_port()), "--query-token", "read-token-of-the-tests"],
            "query": [
                "query",
                *nowhere,
                "--http-port",
                str(free_port()),
                "--ingest-token",
                "ingest-token-of-the-tests",
            ],
            "file": ["query", *nowhere, "--http-port", "0", "--query-token-file", str(tmp_path / "none")],
            "space": ["query", *nowhere, "--http-port", "0", "--query-token", "a-long-enough-token,two words"],
        }
    )
    said = {name: run.stderr.splitlines() for name, run in done.items()}
    assert all(run.returncode == 2 and run.stdout == "" for run in done.values()), said
    tail = ", or --no-auth to serve without authentication"
    assert said["ingest"] == [
        f"logmesh ingest: no ingest token: give --ingest-token (LOGMESH_INGEST_TOKEN) or --ingest-token-file{tail}"
    ]
    assert said["query"] == [
        f"logmesh query: no read token: give --query-token (LOGMESH_QUERY_TOKEN) or --query-token-file{tail}"
    ]
    assert said["file"] == [
        f"logmesh query: read token file: cannot read {tmp_path / 'none'}: No such file or directory"
    ]
    assert said["space"] == [
        "logmesh query: --query-token (LOGMESH_QUERY_TOKEN): token 2 is not visible ASCII without spaces, "
        "as a Bearer header needs"
    ]


# ---- HTTPS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def write_pair(ca: trustme.CA, where: Path) -> tuple[Path, Path]:
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = where / "cert.pem", where / "key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def test_tls_settings_take_both_files_or_neither_and_a_matching_pair(ca: trustme.CA, tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert, _ = write_pair(ca, tmp_path / "a")
    _, other_key = write_pair(ca, tmp_path / "b")

    def refusal(**given: Any) -> str:
        with pytest.raises(SettingsError) as refused:
            settings_from_args(QuerySettings, argparse.Namespace(**given))
        return str(refused.value)

    assert refusal(tls_cert=str(cert)) == "--tls-cert and --tls-key go together: give both or neither"
    assert refusal(tls_cert=str(cert), tls_key=str(other_key)).startswith(
        f"TLS certificate {cert} and key {other_key}: not a PEM certificate and its key"
    )


def test_https_end_to_end(ca: trustme.CA, tmp_path: Path, service: Callable[..., Service]) -> None:
    cert, key = write_pair(ca, tmp_path)
    port = free_port()
    args = ["query", "--nats-url", f"nats://127.0.0.1:{free_port()}", "--http-port", str(port)]
    query = service([*args, "--tls-cert", str(cert), "--tls-key", str(key), "--query-token", "tls-read"])
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trusted, timeout=10) as c:
        assert wait_for(lambda: c.get("/healthz").status_code == 200, 30, "query over https")
        assert c.get("/stats").status_code == 401
        assert c.get("/stats", headers={"authorization": "Bearer tls-read"}).status_code == 503  # no NATS
        signed_in = c.post("/login", data={"token": "tls-read"})
        assert signed_in.status_code == 303 and "Secure" in cookie_of(signed_in)[1]
    with pytest.raises(httpx.TransportError):  # plain HTTP gets no answer on the HTTPS port
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
    wait_for(lambda: f"query listening on https://127.0.0.1:{port}" in query.log(), 10, "the ready line")
    assert "tls-read" not in query.log()
    assert query.stop() == 0


# ---- any Authorization header at all ---------------------------------------------------------------

_SCHEMES = st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"Basic", b"Token", b"", b"Bearer\t", b"Bearer:"])
_TOKENS = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([t.encode() for t in ALL_TOKENS]).map(lambda t: t + b"x"),
    st.sampled_from([t.encode() for t in ALL_TOKENS]).map(lambda t: t[:-1]),
    st.sampled_from([b"\x00", b"\r\n", "١٢٣".encode(), "🙂".encode(), b" " * 100]),
    st.integers(1, 70_000).map(lambda n: b"a" * n),
)
_HEADERS = st.one_of(
    st.tuples(_SCHEMES, st.sampled_from([b" ", b"  ", b"\t", b""]), _TOKENS).map(lambda p: b"".join(p)),
    st.binary(max_size=200),
)


def _carries_a_token(header: bytes) -> bool:
    parts = header.split()
    return len(parts) == 2 and parts[0].lower() == b"bearer" and parts[1].decode("latin-1") in ALL_TOKENS


async def _asgi_status(app: Starlette, method: str, path: str, headers: list[tuple[bytes, bytes]]) -> int:
    """The status of one request, its header values as raw bytes (no client would send some)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
        "client": ("127.0.0.1", 1), "server": ("app", 80),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": PUBLISH, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(next(m["status"] for m in sent if m["type"] == "http.response.start"))


@pytest.fixture(scope="module")
def secured() -> Iterator[Starlette]:
    yield up_app()


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(header=_HEADERS, cookie=st.binary(max_size=100), route=st.sampled_from(list(ROUTES)))
def test_no_authorization_header_fails_or_authorizes(
    secured: Starlette, header: bytes, cookie: bytes, route: tuple[str, str]
) -> None:
    if _carries_a_token(header):
        return
    method, path = route
    headers = [
        (b"authorization", header),
        (b"cookie", b"logmesh_session=" + cookie),
        (b"content-type", b"application/json"),
    ]
    status = asyncio.run(_asgi_status(secured, method, path, headers))
    assert status == 401, (header[:80], cookie, route, status)


# ---- end to end: logmesh up with tokens, and a person signing in with a browser ---------------------

E2E_INGEST, E2E_READ = "e2e-ingest-token", "e2e-read-token"


@pytest.mark.browser
@pytest.mark.timeout(120)
def test_a_person_signs_in_to_the_dashboard_of_an_authenticated_up(make_up: Callable[..., Up]) -> None:
    up = make_up({"LOGMESH_INGEST_TOKEN": E2E_INGEST, "LOGMESH_QUERY_TOKEN": E2E_READ})
    body = orjson.dumps([event("e2e", "1"), event("e2e", "2")])
    ingest = {"content-type": "application/json", "authorization": f"Bearer {E2E_INGEST}"}
    assert up.http.post("/publish", content=body, headers={"content-type": "application/json"}).status_code == 401
    assert up.http.post("/publish", content=body, headers=ingest).status_code == 202
    read = {"authorization": f"Bearer {E2E_READ}"}
    wait_for(lambda: up.http.get("/stats", headers=read).json()["unique_processed"] == 2, 30, "2 events stored")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context()
            page = context.new_page()
            page.add_init_script(RECORD_VIOLATIONS)
            page.goto(up.url + "/")
            assert page.url == up.url + "/login"  # no session: the server sends the browser to sign in
            page.fill("#token", E2E_READ)
            page.click("button[type=submit]")
            page.wait_for_function("() => document.getElementById('unique').textContent === '2'", timeout=20_000)
            assert page.url == up.url + "/"  # no token in the address bar
            [cookie] = context.cookies()
            assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == ("logmesh_session", True, "Strict")
            assert E2E_READ not in cookie["value"]
            assert page.evaluate("() => window.cspViolations") == []

            # The session ends (here the cookie is deleted; a rotated read token ends it the same way):
            # the page's next poll gets a 401 and the page goes to sign in again.
            context.clear_cookies()
            page.wait_for_url(up.url + "/login", timeout=10_000)

            page.goto(f"{up.url}/?token={E2E_READ}")
            page.wait_for_function("() => document.getElementById('unique').textContent === '2'", timeout=20_000)
            assert page.url == up.url + "/"
            page.click(".sign-out button")
            page.wait_for_url(up.url + "/login", timeout=10_000)
            assert context.cookies() == []
            assert page.evaluate("() => window.cspViolations") == []
        finally:
            browser.close()
    assert E2E_READ not in up.service.log() and E2E_INGEST not in up.service.log()


def test_a_short_token_is_served_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "logmesh.auth"):
        assert tokens.listed_tokens(SecretStr("short,a-token-of-twenty-chars"), "--query-token") == [
            b"short",
            b"a-token-of-twenty-chars",
        ]
    assert [r.getMessage() for r in caplog.records] == [
        "--query-token: token 1 is 5 characters: fewer than 16 are easy to guess"
    ]
