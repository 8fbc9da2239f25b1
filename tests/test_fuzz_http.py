"""The HTTP API fuzzed from its own OpenAPI description (schemathesis): schema-valid and invalid
requests to ingest and query on a real `logmesh up`. No 5xx, no hang, every response as described,
every 4xx in the one error shape."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import schemathesis.checks as checks
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.harness import Up

pytestmark = [pytest.mark.slow, pytest.mark.timeout(280)]

EXAMPLES_PER_OPERATION = 130


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    up = Up(Path(tmp_path_factory.mktemp("fuzz")) / "up", {"LOGMESH_MAX_BATCH": "50"})
    up.start()
    yield up
    up.close()


def fuzz(operation: Any, url: str, mode: GenerationMode) -> int:
    calls = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        nonlocal calls
        response = case.call(base_url=url, timeout=10)
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
    schema = schemathesis.openapi.from_url(running.url + "/openapi.json")
    calls = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            calls[f"{operation.label} {mode.value}"] = fuzz(operation, running.url, mode)
    assert sum(calls.values()) >= 1000, calls
