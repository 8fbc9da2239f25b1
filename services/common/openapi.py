"""The OpenAPI description of the HTTP API. Each service declares the paths of its routes next to
them, naming the pydantic models and parameters it uses, so that the description cannot drift from
what it accepts and answers; ``GET /openapi.json`` serves it and the fuzz tests read it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from logmesh import __version__
from logmesh.common.model import FieldError
from logmesh.common.query_contract import Param

REF = "#/components/schemas/{model}"


class ErrorInfo(BaseModel):
    status: int
    code: str
    message: str
    details: list[FieldError]


class ErrorBody(BaseModel):
    """The one error shape of every service."""

    error: ErrorInfo


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    checks: dict[str, dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _ModelRef:
    """Stands for a model's schema in a path until ``openapi`` collects the models."""

    model: type[BaseModel]
    mode: Literal["validation", "serialization"]


_ERRORS = {
    "400": "malformed JSON",
    "404": "not found",
    "408": "the body did not arrive in time",
    "413": "body over the size limit",
    "415": "not application/json",
    "422": "invalid input; details name the index and field of every problem",
    "502": "the sink answered with an error",
    "503": "a dependency is down; retry after Retry-After",
    "504": "the sink did not answer in time",
}


def json_content(schema: type[BaseModel] | dict[str, Any], *, request: bool = False) -> dict[str, Any]:
    """A JSON body of this model (or plain schema): as requests are validated, or as answers are."""
    if isinstance(schema, type):
        schema = {"schema": _ModelRef(schema, "validation" if request else "serialization")}
    else:
        schema = {"schema": schema}
    return {"content": {"application/json": schema}}


def model_schema(model: type[BaseModel], *, request: bool = False) -> Any:
    """A reference to a model's schema, for use inside a larger schema."""
    return _ModelRef(model, "validation" if request else "serialization")


def responses(ok: str, model: type[BaseModel], *errors: str) -> dict[str, Any]:
    out: dict[str, Any] = {ok: {"description": "OK", **json_content(model)}}
    for code in errors:
        out[code] = {"description": _ERRORS[code], **json_content(ErrorBody)}
    return out


def parameters(params: Sequence[Param]) -> list[dict[str, Any]]:
    return [p.openapi() for p in params]


def openapi(title: str, *path_groups: dict[str, Any]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for group in path_groups:
        paths.update(group)
    paths["/openapi.json"] = {"get": {"summary": "This description", "responses": {"200": {"description": "OK"}}}}
    used: dict[tuple[type[BaseModel], str], None] = {}
    _collect(paths, used)
    refs, definitions = models_json_schema(list(used), ref_template=REF)  # type: ignore[arg-type]
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": __version__},
        "paths": _resolved(paths, refs),
        "components": {"schemas": definitions.get("$defs", {})},
    }


def _collect(node: Any, used: dict[tuple[type[BaseModel], str], None]) -> None:
    if isinstance(node, _ModelRef):
        used[(node.model, node.mode)] = None
    elif isinstance(node, dict):
        for value in node.values():
            _collect(value, used)
    elif isinstance(node, list):
        for value in node:
            _collect(value, used)


def _resolved(node: Any, refs: dict[Any, Any]) -> Any:
    if isinstance(node, _ModelRef):
        return refs[(node.model, node.mode)]
    if isinstance(node, dict):
        return {k: _resolved(v, refs) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolved(v, refs) for v in node]
    return node
