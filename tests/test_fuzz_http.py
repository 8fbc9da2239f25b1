"""The HTTP API fuzzed from its own OpenAPI description (schemathesis): schema-valid and invalid
requests to ingest and query on a real `logmesh up`. No 5xx, no hang, every response as described,
every 4xx in the one error shape."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_from_bytes

import httpx
import pytest
import schemathesis
import schemathesis.checks as checks
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Err

from logmesh.common.secrets_store import INGEST_TOKEN, QUERY_TOKEN
from tests.harness import Up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(280)]

# Per operation and mode; the routes grew from 7 to 13 operations, so fewer each keeps the suite in
# its time budget (the query-string fuzzer below adds 400 nasty parameter sets per route).
EXAMPLES_PER_OPERATION = 70


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(Path(tmp_path_factory.mktemp("fuzz")) / "up", {"LOGMESH_MAX_BATCH": "50"})
    up.start()
    yield up
    up.close()


def fuzz(operation: Any, up: Up, mode: GenerationMode) -> int:
    calls = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        nonlocal calls
        token = up.secret(INGEST_TOKEN if case.path == "/publish" else QUERY_TOKEN)
        response = case.call(base_url=up.url, timeout=10, headers={"Authorization": f"Bearer {token}"})
        calls += 1
        assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
        if 400 <= response.status_code < 500:
            body = response.json()
            assert set(body) == {"error"}, body
            assert set(body["error"]) == {"status", "code", "message", "details"}, body
            assert body["error"]["status"] == response.status_code
        if mode is GenerationMode.POSITIVE:
            # Whether schema-valid data is accepted is not checked: rules such as "printable" have no
            # exact JSON-schema form, and their 422 is described and in the one shape.
            case.validate_response(response, excluded_checks=[checks.positive_data_acceptance])

    # One database key per operation and mode: otherwise every operation shares the key of ``run``,
    # and a saved failure is replayed against whichever operation comes first.
    run.hypothesis.inner_test._hypothesis_internal_add_digest = f"{operation.label} {mode.value}".encode()  # type: ignore[attr-defined]
    with contextlib.suppress(Unsatisfiable):  # no parameters: nothing schema-invalid to send
        run()
    return calls


def test_every_operation_answers_as_described(running: Up) -> None:
    read = {"Authorization": f"Bearer {running.secret(QUERY_TOKEN)}"}
    # The JSON API; the sign-in form answers a person in HTML, and tests/test_http_auth.py covers it.
    schema = schemathesis.openapi.from_url(running.url + "/openapi.json", headers=read).exclude(
        path=["/login", "/logout"]
    )
    calls = {}
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls[f"{operation.label} {mode.value}"] = fuzz(operation, running, mode)
    assert sum(calls.values()) >= 1000, calls


# What the schema-driven cases rarely produce: digits of other scripts that str.isdigit() accepts
# ('²', '①', '٣', fullwidth), numbers far past any bound, empty values, repeated and unknown
# parameters, bytes that are not UTF-8.
_UNICODE_DIGITS = st.text(
    st.characters(categories=("Nd", "No"), min_codepoint=0x80).filter(str.isdigit), min_size=1, max_size=4
)
_VALUES = st.one_of(
    _UNICODE_DIGITS.map(quote),
    st.tuples(_UNICODE_DIGITS, st.integers(0, 10**6)).map(lambda p: quote(f"{p[1]}{p[0]}")),
    st.integers(min_value=-(10**60), max_value=10**60).map(str),
    st.just(""),
    st.sampled_from(["asc", "desc", "0", "1", "1000", "1001", "9" * 19, "9" * 20, "1e3", "%205", "%2B5", "-0"]),
    st.text(max_size=20).map(lambda t: quote(t, safe="")),
    st.binary(max_size=12).map(quote_from_bytes),
)
_NAMES = st.one_of(st.sampled_from(["limit", "cursor", "order", "topic"]), st.text(max_size=8).map(quote))
_PARAMS = st.lists(st.tuples(_NAMES, _VALUES), max_size=4)
_PATH_PART = st.one_of(
    st.sampled_from(["orders", "e1", "a..b", "%20x"]), st.binary(min_size=1, max_size=12).map(quote_from_bytes)
)
_ROUTES = st.one_of(
    st.sampled_from(["/events", "/dead-letters", "/stats", "/healthz", "/readyz", "/"]),
    st.tuples(_PATH_PART, _PATH_PART).map(lambda p: f"/events/{p[0]}/{p[1]}"),
)


def test_no_query_string_makes_a_route_fail(running: Up) -> None:
    with httpx.Client(base_url=running.url, timeout=10, auth=running.auth) as client:

        @given(route=_ROUTES, params=_PARAMS)
        @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
        def run(route: str, params: list[tuple[str, str]]) -> None:
            url = route + ("?" + "&".join(f"{k}={v}" for k, v in params) if params else "")
            response = client.get(url)
            assert response.status_code < 500, (url, response.status_code, response.text[:300])
            if 400 <= response.status_code < 500:
                body = response.json()
                assert set(body) == {"error"} and body["error"]["status"] == response.status_code, (url, body)
                if response.status_code == 422:
                    assert body["error"]["details"][0]["field"], (url, body)
            elif response.headers.get("content-type", "").startswith("application/json"):
                json.loads(response.content)  # a page spliced together is still JSON

        run()
