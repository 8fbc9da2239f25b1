"""What a setting takes, said once for ``--help`` and for the one-line error a bad value gets.

The allowed values come from the settings field itself: the choices of a ``Literal``, the bounds of
``Field(ge=..., lt=...)``. A pydantic ``ValidationError`` becomes a :class:`SettingsError` whose
message names the flag or the environment variable that held the value.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import SecretStr, ValidationError
from pydantic.fields import FieldInfo

_SHOWN_INPUT = 60  # characters of a rejected value quoted back


class SettingsError(ValueError):
    """A flag or environment variable holds a value its setting does not take. The message is one
    line: where the value came from, what is allowed, what was given."""


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _unwrapped(info: FieldInfo) -> tuple[Any, list[Any]]:
    """The setting's type without ``| None`` and ``Annotated``, and every constraint on it."""
    annotation, metadata = info.annotation, list(info.metadata)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            annotation = rest[0]
    if typing.get_origin(annotation) is Annotated:
        annotation, *extras = typing.get_args(annotation)
        for extra in extras:
            metadata += extra.metadata if isinstance(extra, FieldInfo) else [extra]
    return annotation, metadata


def choices(info: FieldInfo) -> list[str] | None:
    """The values of a ``Literal`` setting, as given on the command line."""
    annotation, _ = _unwrapped(info)
    if typing.get_origin(annotation) is Literal:
        return [str(value) for value in typing.get_args(annotation)]
    return None


def readable(value: Any) -> str:
    """A default or a bound as one would type it: ``data``, ``8080``, ``0.05``, ``none``, ``off``."""
    if value is None or value == "":
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, Path | str):
        return str(value)
    return repr(value)


def _bounds(metadata: list[Any]) -> str:
    limits: dict[str, Any] = {}
    for item in metadata:
        for name in ("ge", "gt", "le", "lt"):
            if isinstance(item, getattr(annotated_types, name.capitalize())):
                limits[name] = getattr(item, name)
    if "ge" in limits and "le" in limits:
        return f" from {readable(limits['ge'])} to {readable(limits['le'])}"
    said = [f"{sign} {readable(limits[name])}" for name, sign in _SIGNS.items() if name in limits]
    return (" " + " and ".join(said)) if said else ""


_SIGNS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


def allowed(info: FieldInfo) -> str | None:
    """What the setting takes, in words (``an integer from 0 to 65535``), or None for free text."""
    values = choices(info)
    if values is not None:
        return "one of " + ", ".join(values)
    annotation, metadata = _unwrapped(info)
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer" + _bounds(metadata)
    if annotation is float:
        return "a number" + _bounds(metadata)
    return None


def _quoted(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_INPUT else text[: _SHOWN_INPUT - 4] + "...'"


def explain(exc: ValidationError, fields: dict[str, FieldInfo], from_flags: Collection[str], env_prefix: str) -> str:
    """One line for every rejected setting: ``--http-port: must be an integer from 0 to 65535, not
    'abc'``. A value not given as a flag came from the environment variable, which is named instead."""
    said: dict[str, str] = {}
    for error in exc.errors(include_url=False):
        loc = error["loc"]
        name = str(loc[0]) if loc else ""
        if name in said:
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        if name not in fields:  # a rule about several settings together
            said[name] = message
            continue
        where = flag_name(name) if name in from_flags else env_prefix + name.upper()
        rule = allowed(fields[name])
        if _unwrapped(fields[name])[0] is SecretStr:  # a secret is never quoted back, not even a wrong one
            said[name] = f"{where}: {message}"
        elif rule is not None:
            said[name] = f"{where}: must be {rule}, not {_quoted(error['input'])}"
        else:
            said[name] = f"{where}: {message}, not {_quoted(error['input'])}"
    return "; ".join(said.values())
