"""The dashboard page and its files as served: markup with nothing inline that the
Content-Security-Policy blocks, each linked file with its content type, and caching that picks up
a new version at once (the browser test, tests/test_dashboard.py, runs the page itself). The login
page likewise, and the sign-out form only where people sign in."""

from __future__ import annotations

import asyncio
from html.parser import HTMLParser
from urllib.parse import urlsplit

import httpx
import pytest

from logmesh.query.app import create_app
from logmesh.query.settings import QuerySettings

pytestmark = pytest.mark.timeout(60)

MEDIA_TYPES = {
    "stylesheet": "text/css; charset=utf-8",
    "script": "text/javascript; charset=utf-8",
    "icon": "image/png",
}


class _Page(HTMLParser):
    """What a browser would load from the page, and what it has inline."""

    def __init__(self) -> None:
        super().__init__()
        self.links: dict[str, str] = {}  # kind -> URL
        self.inline: list[str] = []
        self.forms: list[dict[str, str | None]] = []
        self.inputs: list[dict[str, str | None]] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.inline += [f"<{tag} {name}=...>" for name in found if name.startswith("on") or name == "style"]
        if tag == "style":
            self.inline.append("<style>")
        elif tag == "script":
            self._in_script = True
            if found.get("src") is None:
                self.inline.append("<script> without src")
            self.links["script"] = found["src"] or ""
        elif tag == "link" and found.get("rel") in ("stylesheet", "icon"):
            self.links[found["rel"] or ""] = found["href"] or ""
        elif tag == "form":
            self.forms.append(found)
        elif tag == "input":
            self.inputs.append(found)

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append(f"script text {data[:40]!r}")


def parsed(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    return parser


async def _fetch_all() -> dict[str, httpx.Response]:
    app = create_app(QuerySettings(no_auth=True))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        page = await client.get("/")
        parser = _Page()
        parser.feed(page.text)
        out = {"page": page}
        assert set(parser.links) == set(MEDIA_TYPES), parser.links
        assert parser.inline == [], parser.inline
        for kind, url in parser.links.items():
            assert not url.startswith("/") and "//" not in url, f"{kind} URL {url} must be relative"
            current = await client.get("/" + url)
            path = "/" + urlsplit(url).path
            etag = current.headers["etag"]
            out[kind] = current
            out[f"{kind} unversioned"] = await client.get(path)
            out[f"{kind} old version"] = await client.get(path + "?v=0123456789abcdef")
            out[f"{kind} unchanged"] = await client.get("/" + url, headers={"if-none-match": f'W/{etag}, "x"'})
            out[f"{kind} changed"] = await client.get("/" + url, headers={"if-none-match": '"0123456789abcdef"'})
        out["page unchanged"] = await client.get("/", headers={"if-none-match": page.headers["etag"]})
        return out


@pytest.fixture(scope="module")
def answers() -> dict[str, httpx.Response]:
    return asyncio.run(_fetch_all())


def test_the_page_is_html_revalidated_on_every_load(answers: dict[str, httpx.Response]) -> None:
    page = answers["page"]
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["cache-control"] == "no-cache"
    unchanged = answers["page unchanged"]
    assert unchanged.status_code == 304 and unchanged.content == b""
    assert unchanged.headers["etag"] == page.headers["etag"]


@pytest.mark.parametrize("kind", MEDIA_TYPES)
def test_each_linked_file_is_served_with_its_type_and_kept_while_current(
    answers: dict[str, httpx.Response], kind: str
) -> None:
    current = answers[kind]
    assert current.status_code == 200
    assert current.headers["content-type"] == MEDIA_TYPES[kind]
    assert current.headers["cache-control"] == "public, max-age=31536000, immutable"
    # Without the current version in the URL, the browser asks again next time.
    for stale in ("unversioned", "old version"):
        other = answers[f"{kind} {stale}"]
        assert other.status_code == 200 and other.content == current.content
        assert other.headers["cache-control"] == "no-cache", stale
        assert other.headers["etag"] == current.headers["etag"]
    assert answers[f"{kind} unchanged"].status_code == 304
    assert answers[f"{kind} unchanged"].content == b""
    assert answers[f"{kind} changed"].status_code == 200
    assert answers[f"{kind} changed"].content == current.content


def test_the_icon_is_a_png(answers: dict[str, httpx.Response]) -> None:
    assert answers["icon"].content.startswith(b"\x89PNG\r\n\x1a\n")


def test_without_authentication_the_page_offers_no_sign_out(answers: dict[str, httpx.Response]) -> None:
    assert parsed(answers["page"].text).forms == []


TOKEN = "read-token-for-the-page"


async def _fetch_signed_in() -> dict[str, httpx.Response]:
    app = create_app(QuerySettings(query_token=TOKEN))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as client:
        login = await client.get("/login")
        stylesheet = await client.get("/" + parsed(login.text).links["stylesheet"])
        refused = await client.post("/login", data={"token": "not-it"})
        page = await client.get("/", headers={"authorization": f"Bearer {TOKEN}"})
        return {"login": login, "stylesheet": stylesheet, "refused": refused, "page": page}


@pytest.fixture(scope="module")
def signed_in() -> dict[str, httpx.Response]:
    return asyncio.run(_fetch_signed_in())


def test_the_login_page_is_a_form_with_nothing_inline(signed_in: dict[str, httpx.Response]) -> None:
    for name in ("login", "refused"):
        page = parsed(signed_in[name].text)
        assert signed_in[name].headers["content-type"] == "text/html; charset=utf-8"
        assert page.inline == [], (name, page.inline)
        assert set(page.links) == {"stylesheet"}
        assert not page.links["stylesheet"].startswith("/") and "//" not in page.links["stylesheet"]
        # Posted to this origin (the policy's form-action 'self'), the token as a password field.
        assert page.forms == [{"method": "post", "action": "login"}]
        assert [(i["name"], i["type"]) for i in page.inputs] == [("token", "password")]
    assert signed_in["login"].status_code == 200 and signed_in["refused"].status_code == 401
    assert "not recognised" in signed_in["refused"].text
    assert "not-it" not in signed_in["refused"].text
    stylesheet = signed_in["stylesheet"]
    assert stylesheet.status_code == 200 and stylesheet.headers["content-type"] == "text/css; charset=utf-8"


def test_a_signed_in_page_offers_to_sign_out(signed_in: dict[str, httpx.Response]) -> None:
    page = signed_in["page"]
    assert page.status_code == 200
    assert parsed(page.text).forms == [{"class": "sign-out", "method": "post", "action": "logout"}]
