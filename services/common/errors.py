"""The one JSON error shape of every HTTP answer that is not a success.

Every error body is ``{"error": {"status", "code", "message", "details"}}``; ``details`` lists
``{"index", "field", "message"}`` items when an input was rejected. Kept apart from the app
assembly (``http``) so that the authentication middleware answers in the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from starlette.responses import JSONResponse, Response


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Sequence[Mapping[str, Any]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details or [])
        self.headers = dict(headers or {})


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}


def error_response(
    status: int,
    code: str | None,
    message: str,
    details: Sequence[Mapping[str, Any]] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = {
        "error": {
            "status": status,
            "code": code or _CODES.get(status, "error"),
            "message": message,
            "details": list(details),
        }
    }
    return FastJSONResponse(body, status_code=status, headers=dict(headers or {}))
