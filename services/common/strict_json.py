"""Strict JSON: exactly the grammar of RFC 8259, read with the standard library's C scanner.

Everything the sink stores or counts is read this way, so that one grammar decides, whichever decoder
handles a message. Refused, with the reason and where:
- anything outside RFC 8259: trailing commas, comments, single quotes, ``NaN``/``Infinity``, leading
  zeros, ``+1``, ``.5``, unescaped control characters in strings, unknown escapes, whitespace other
  than space, tab, LF and CR, a byte order mark, anything after the value;
- a number with a fraction or an exponent that is beyond the range of a binary64 float (``1e999``):
  no reader can hold it (RFC 8259 section 6 leaves the range to implementations). Integers of any
  size are kept, as are numbers that round to zero;
- nesting deeper than ``MAX_DEPTH``.

Escaped lone surrogates (``"\\ud800"``) are valid JSON text and are accepted; the caller decides
whether a value may hold one. Names that repeat in one object are the caller's rule too: ``members``
refuses them at the top level, and at every level with ``unique_names``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NamedTuple, NoReturn

MAX_DEPTH = 128

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# The common cases of the object walk in one match each: a name without escapes up to its value, and
# what follows a value.
_PLAIN_NAME = re.compile(r'[ \t\n\r]*"([^"\\\x00-\x1f]*)"[ \t\n\r]*:[ \t\n\r]*')
_AFTER_VALUE = re.compile(r"[ \t\n\r]*([,}])")
# What nests (brackets outside strings) and the strings that may hold brackets, for the depth check.
_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class JsonError(ValueError):
    """Why a text is not strict JSON, and where (``where`` says what ``pos`` is); ``name`` is the
    name that appears twice, when that is why."""

    def __init__(self, message: str, text: str, pos: int, where: str = "at", *, name: str | None = None) -> None:
        line = text.count("\n", 0, pos) + 1
        column = pos - text.rfind("\n", 0, pos)
        self.reason = f"{message} {where} line {line} column {column}"
        self.name = name
        super().__init__(self.reason)


class Member(NamedTuple):
    """One name and value of an object; ``text[start:end]`` is the value as it was written. Numbers
    are given as their text (``Number``), never converted."""

    name: str
    value: Any
    start: int
    end: int


class Number(str):
    """A JSON number, as it was written."""


class _NotJson(ValueError):
    def __init__(self, message: str) -> None:
        self.message = message


def refuse_constant(name: str) -> NoReturn:
    """A ``parse_constant`` hook for ``json.JSONDecoder``: raises ``ValueError`` for NaN and Infinity."""
    raise _NotJson(f"{name} is not a JSON value (RFC 8259 has no NaN or Infinity)")


def finite_number(text: str) -> Number:
    """A ``parse_float`` hook for ``json.JSONDecoder``: the number as written, or ``ValueError`` if it
    is beyond the range of a binary64 float."""
    if math.isinf(float(text)):
        raise _NotJson(f"number {text[:40]} is beyond the range of a 64-bit float")
    return Number(text)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise _NotJson(f"name {name!r} appears twice in one object")
            seen.add(name)
    return out


def _decoder(*, unique_names: bool) -> json.JSONDecoder:
    return json.JSONDecoder(
        object_pairs_hook=_unique if unique_names else None,
        parse_float=finite_number,
        parse_int=Number,  # never int(): no digit limit, no cost
        parse_constant=refuse_constant,
        strict=True,  # no raw control characters in strings
    )


_DECODERS = {unique: _decoder(unique_names=unique) for unique in (False, True)}


def _value(text: str, pos: int, *, unique_names: bool) -> tuple[Any, int]:
    """The value that starts at ``pos`` and where it ends."""
    try:
        return _DECODERS[unique_names].raw_decode(text, pos)
    except json.JSONDecodeError as exc:
        raise JsonError(_scanner_message(text, exc), text, exc.pos) from None
    except _NotJson as exc:
        raise JsonError(exc.message, text, pos, "in the value starting at") from None


def _habit(text: str, pos: int) -> str | None:
    """Names the usual non-JSON habit found at ``pos``, if it is one."""
    if pos >= len(text):
        return "the text ends before the JSON value does"
    ahead = text[pos : pos + 2]
    if ahead[:1] in ("]", "}") and text[:pos].rstrip(" \t\n\r").endswith(","):
        return "trailing comma (not allowed in JSON)"
    if ahead in ("//", "/*"):
        return "comment (not allowed in JSON)"
    if ahead[:1] == "'":
        return "single quotes (JSON strings take double quotes)"
    if ahead[:1].isdigit() and text[pos - 1 : pos] == "0":
        return "number with a leading zero (not allowed in JSON)"
    return None


def _scanner_message(text: str, exc: json.JSONDecodeError) -> str:
    message = exc.msg.removesuffix(" at")  # "Invalid control character at": the position follows
    expected = {
        "Expecting value": "expected a value",
        "Expecting property name enclosed in double quotes": "expected a name in double quotes",
        "Expecting ',' delimiter": "expected ','",
        "Expecting ':' delimiter": "expected ':'",
    }.get(message)
    if expected is not None:
        return _habit(text, exc.pos) or expected
    return message[:1].lower() + message[1:]


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    assert match is not None  # matches the empty string
    return match.end()


def check_depth(text: str) -> None:
    """Raises ``JsonError`` if ``text`` nests deeper than ``MAX_DEPTH``. Counting brackets is cheap and
    bounds the depth: only a text with more than ``MAX_DEPTH`` of them is walked."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    for match in _NESTING.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise JsonError(f"nested deeper than {MAX_DEPTH} levels", text, match.start())
        elif token in "]}":
            depth -= 1


def _expect_end(text: str, end: int) -> None:
    end = _skip(text, end)
    if end != len(text):
        raise JsonError("unexpected text after the JSON value", text, end)


def members(text: str, *, unique_names: bool = False) -> list[Member]:
    """The members of the object that is the whole of ``text`` (whitespace around it allowed), in
    order. Raises ``JsonError`` unless the text is strict JSON and an object whose names are unique;
    names repeated inside its values are refused too with ``unique_names``, else left as they are."""
    check_depth(text)
    pos = _skip(text, 0)
    if not text.startswith("{", pos):
        raise JsonError("expected an object", text, pos)
    out: list[Member] = []
    names: set[str] = set()
    pos = _skip(text, pos + 1)
    if text.startswith("}", pos):
        _expect_end(text, pos + 1)
        return out
    while True:
        plain = _PLAIN_NAME.match(text, pos)
        name, start = (plain.group(1), plain.end()) if plain else _name(text, pos)
        if name in names:
            raise JsonError(f"name {name!r} appears twice", text, start, name=name)
        names.add(name)
        value, end = _value(text, start, unique_names=unique_names)
        out.append(Member(name, value, start, end))
        after = _AFTER_VALUE.match(text, end)
        if after is None:
            pos = _skip(text, end)
            raise JsonError(_habit(text, pos) or "expected ',' or '}'", text, pos)
        pos = after.end()
        if after.group(1) == "}":
            _expect_end(text, pos)
            return out


def _name(text: str, pos: int) -> tuple[str, int]:
    """A name written with escapes, and where its value starts; or why there is no name."""
    pos = _skip(text, pos)
    if not text.startswith('"', pos):
        raise JsonError(_habit(text, pos) or "expected a name in double quotes", text, pos)
    name, pos = _value(text, pos, unique_names=False)
    pos = _skip(text, pos)
    if not text.startswith(":", pos):
        raise JsonError("expected ':' after the name", text, pos)
    return name, _skip(text, pos + 1)
