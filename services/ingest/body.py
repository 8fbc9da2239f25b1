"""Reading and validating a ``POST /publish`` body: the whole request is checked before anything is
published, and every problem is reported with its index and field."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request

from logmesh.common.http import ApiError
from logmesh.common.model import EVENT_ADAPTER, EVENT_LIST_ADAPTER, Event, field_errors

JSON_TYPES = ("application/json",)


def check_content_type(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, not {media_type or 'missing'!r}",
        )


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """Reads the body, refusing it as soon as it is known to be too large (413 from Content-Length
    before reading anything) and giving up on a body that trickles in too slowly (408)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, "payload_too_large", f"body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"body not received within {timeout:g} s") from None
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "client went away before sending the whole body") from None
    return b"".join(chunks)


def parse_events(body: bytes, max_batch: int) -> list[Event]:
    """The events of a body holding one event object or an array of them. Raises 400 for malformed
    JSON and 422, listing every error, for invalid events."""
    start = body.lstrip()[:1]
    if not start:
        raise ApiError(400, "malformed_json", "body is empty; send an event object or an array of events")
    batch = start == b"["
    try:
        if batch:
            events = EVENT_LIST_ADAPTER.validate_json(body)
        elif start == b"{":
            events = [EVENT_ADAPTER.validate_json(body)]
        else:
            orjson.loads(body)  # only to tell malformed JSON (400) from the wrong kind of JSON (422)
            raise ApiError(422, "validation_error", "body must be an event object or an array of events")
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {exc}") from None
    except ValidationError as exc:
        if not _unreadable(exc):
            raise _rejection(exc, batch) from None
        events = _validated_by_the_standard_parser(body, batch)
    if batch and not events:
        raise ApiError(422, "validation_error", f"the array holds no events; send 1 to {max_batch}")
    if len(events) > max_batch:
        raise ApiError(
            422, "too_many_events", f"the array holds {len(events)} events; the most in one request is {max_batch}"
        )
    return events


def _unreadable(exc: ValidationError) -> bool:
    return any(e["type"] == "json_invalid" for e in exc.errors(include_url=False, include_input=False))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _validated_by_the_standard_parser(body: bytes, batch: bool) -> list[Event]:
    """A second reading of a body the validating parser could not read. That parser refuses escaped
    lone surrogates ("\\ud800"), which RFC 8259's grammar allows and a payload may carry; the standard
    library reads them (and refuses what is not JSON, with its position), and the events are
    validated from the values it read. Only bodies the fast parser refused pay for it."""
    try:
        value = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply (recursion limit)" if isinstance(exc, RecursionError) else str(exc)
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {reason}") from None
    try:
        return EVENT_LIST_ADAPTER.validate_python(value) if batch else [EVENT_ADAPTER.validate_python(value)]
    except ValidationError as exc:
        raise _rejection(exc, batch) from None


def event_texts(body: bytes) -> list[bytes]:
    """The exact text of each event in a body ``parse_events`` accepted, in order.

    Publishing these rather than the validated events encoded again keeps every value as it was
    sent: a number's digits (0.10000000000000000001, 1e-400 would become 0.1 and 0.0), a repeated
    key, an escape. The stdlib decoder finds where each element ends (it builds each element and
    drops it: 2.4 ms for 1,000 events, where encoding them again took 1.7 ms); it accepts all that
    the validating parser does, and that parser's nesting limit is far below its recursion limit.
    """
    text = body.decode()
    scan = json.JSONDecoder().raw_decode  # one per call: its scanner's key memo is not shared between threads
    start = _skip_space(text, 0)
    if text[start] == "{":
        return [text[start : scan(text, start)[1]].encode()]
    texts: list[bytes] = []
    at = _skip_space(text, start + 1)
    while text[at] != "]":
        end = scan(text, at)[1]
        texts.append(text[at:end].encode())
        at = _skip_space(text, end)
        if text[at] == ",":
            at = _skip_space(text, at + 1)
    return texts


_SPACE = re.compile(r"[ \t\n\r]*")


def _skip_space(text: str, at: int) -> int:
    match = _SPACE.match(text, at)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _rejection(exc: ValidationError, batch: bool) -> ApiError:
    kinds = {e["type"] for e in exc.errors(include_url=False, include_input=False)}
    if "json_invalid" in kinds:
        first = exc.errors(include_url=False, include_input=False)[0]
        return ApiError(400, "malformed_json", f"body is not valid JSON: {first['msg']}")
    if not batch and "model_type" in kinds:
        return ApiError(422, "validation_error", "body must be an event object or an array of events")
    errors = field_errors(exc, batch=batch)
    noun = "event" if len({e.index for e in errors}) == 1 else "events"
    return ApiError(
        422,
        "validation_error",
        f"{len(errors)} problem(s) in {len({e.index for e in errors})} {noun}; nothing was published",
        details=[e.model_dump() for e in errors],
    )
