"""Reading and validating a ``POST /publish`` body: the whole request is checked before anything is
published, and every problem is reported with its index and field."""

from __future__ import annotations

import asyncio
import json
import re
from decimal import Decimal
from typing import NamedTuple

import orjson
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request

from logmesh.common.http import ApiError
from logmesh.common.model import EVENT_ADAPTER, EVENT_LIST_ADAPTER, Event, FieldError, field_errors
from logmesh.common.strict_json import MAX_DEPTH, JsonError, check_depth, finite_number, members, refuse_constant

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


class Accepted(NamedTuple):
    """A body ``parse_events`` accepted: its events and the exact text of each, in order."""

    events: list[Event]
    texts: list[bytes]


def parse_events(body: bytes, max_batch: int) -> Accepted:
    """The events of a body holding one event object or an array of them, and the text of each. Raises
    400 for malformed JSON and 422, listing every error with its index and field, for invalid events,
    which include events the sink could not store as they were sent (see ``_cut``)."""
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
    return Accepted(events, _cut(body, events, batch))


def _unreadable(exc: ValidationError) -> bool:
    return any(e["type"] == "json_invalid" for e in exc.errors(include_url=False, include_input=False))


def _integer(text: str) -> int | Decimal:
    # int() refuses more digits than sys.get_int_max_str_digits(); the sink keeps an integer of any
    # size as it was written, so a payload may hold one. Decimal reads it exactly, in linear time.
    try:
        return int(text)
    except ValueError:
        return Decimal(text)


def _validated_by_the_standard_parser(body: bytes, batch: bool) -> list[Event]:
    """A second reading of a body the validating parser could not read. That parser refuses escaped
    lone surrogates ("\\ud800"), which RFC 8259's grammar allows and a payload may carry, integers of
    more than 4,300 digits and nesting past its own limit; the standard library reads them (and
    refuses what is not JSON, with its position), and the events are validated from the values it
    read. Only bodies the fast parser refused pay for it."""
    try:
        # Decoded here, strictly: given bytes, json.loads would also take UTF-16 and UTF-32 and
        # encoded surrogates, none of which the sink reads.
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise ApiError(400, "malformed_json", f"body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        value = json.loads(text, parse_constant=refuse_constant, parse_int=_integer)
    except (ValueError, RecursionError) as exc:
        reason = (
            f"nested too deeply (recursion limit; an event may nest {MAX_DEPTH} levels)"
            if isinstance(exc, RecursionError)
            else str(exc)
        )
        raise ApiError(400, "malformed_json", f"body is not valid JSON: {reason}") from None
    try:
        return EVENT_LIST_ADAPTER.validate_python(value) if batch else [EVENT_ADAPTER.validate_python(value)]
    except ValidationError as exc:
        raise _rejection(exc, batch) from None


def _cut(body: bytes, events: list[Event], batch: bool) -> list[bytes]:
    """The exact text of each event, refused (422, by index and field) where the sink's strict reader
    would refuse it although the validating parser did not: nested deeper than ``MAX_DEPTH``, a field
    named twice, or NaN, Infinity or a float beyond binary64's range hidden by a name repeated in the
    payload (that parser keeps the last value of a name). All else the strict grammar refuses, the
    validating parser refuses too: tests/test_ingest_verdict.py holds the two to one verdict.

    Publishing these texts rather than the validated events encoded again keeps every value as it
    was sent: a number's digits (0.10000000000000000001, 1e-400 would become 0.1 and 0.0), an
    escape. The stdlib decoder finds where each element ends. It reads numbers and constants with the
    strict reader's hooks, and each object as its number of members (``object_pairs_hook=len``, as
    cheap as building it): an event with more members than fields names one twice. Only then, or when
    its length and bracket counts allow nesting too deep, does the strict reader read the event.
    """
    text = body.decode()
    # One decoder per call: its scanner's key memo is not shared between threads.
    scan = json.JSONDecoder(object_pairs_hook=len, parse_float=finite_number, parse_constant=refuse_constant).raw_decode
    texts: list[bytes] = []
    problems: list[FieldError] = []
    at = _skip_space(text, 0)
    if batch:
        at = _skip_space(text, at + 1)
    while text[at] != "]":
        suspect = False
        try:
            top_members, end = scan(text, at)
        except ValueError:  # that, or an integer of more digits than int() reads, which the sink keeps
            top_members, end = json.JSONDecoder(object_pairs_hook=len, parse_int=str).raw_decode(text, at)
            suspect = True
        event = text[at:end]
        # More members than fields set is a field named twice. (__pydantic_fields_set__ is
        # model_fields_set without the property's cost, which was a third of these checks.)
        if (
            suspect
            or top_members > len(events[len(texts)].__pydantic_fields_set__)
            or (len(event) >= _SHORTEST_TOO_DEEP and event.count("{") + event.count("[") > MAX_DEPTH)
        ):
            refusal = _strict_refusal(event)
            if refusal is not None:
                problems.append(FieldError(index=len(texts) if batch else None, field=refusal[0], message=refusal[1]))
        texts.append(event.encode())
        if not batch:
            break
        # Compact JSON has no space between elements: look before calling the regular expression.
        at = _skip_space(text, end) if text[end] in _SPACES else end
        if text[at] == ",":
            at += 1
            if text[at] in _SPACES:
                at = _skip_space(text, at)
    if problems:
        raise _invalid(problems)
    return texts


# A JSON text nesting deeper than MAX_DEPTH opens and closes MAX_DEPTH + 1 brackets or more.
_SHORTEST_TOO_DEEP = 2 * (MAX_DEPTH + 1)


def _strict_refusal(event: str) -> tuple[str | None, str] | None:
    """The field and reason for which the strict reader refuses ``event``, a valid event's text, if
    it does."""
    try:
        check_depth(event)
    except JsonError as exc:
        return "payload", f"{exc.reason} of the event"  # a valid event's only field that nests
    try:
        members(event)
    except JsonError as exc:
        # A field named twice is named; a number or constant is in the payload, where names may repeat.
        return exc.name or "payload", f"{exc.reason} of the event"
    return None


_SPACE = re.compile(r"[ \t\n\r]*")
_SPACES = " \t\n\r"


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
    return _invalid(field_errors(exc, batch=batch))


def _invalid(errors: list[FieldError]) -> ApiError:
    events = len({e.index for e in errors})
    return ApiError(
        422,
        "validation_error",
        f"{len(errors)} problem(s) in {events} {'event' if events == 1 else 'events'}; nothing was published",
        details=[e.model_dump() for e in errors],
    )
