"""Field types of the params dataclasses (ModelParams, TrainParams) checked against the values JSON gives:
a bool is not an int, the string "false" is not a bool, NaN is not a number. Errors name `<section>.<field>`."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields
from typing import Any


def _describe(hint: Any) -> str:
    """A type hint in words, for error messages."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin is tuple:
        return f"a list, each {_describe(args[0])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    return {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
            type(None): "null"}[hint]


def _matches(value: Any, hint: Any) -> bool:
    """Whether `value` (as JSON gives it) has type `hint`; a bool is not a number, an int is a float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in args)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is float:
        return type(value) in (int, float) and math.isfinite(value)
    if hint is type(None):
        return value is None
    return type(value) is hint


def check_field_types(params: Any, section: str) -> None:
    """Raise ValueError naming `<section>.<field>` when a field of dataclass `params` has the wrong type."""
    hints = typing.get_type_hints(type(params))
    for f in fields(params):
        value = getattr(params, f.name)
        if not _matches(value, hints[f.name]):
            raise ValueError(f"{section}.{f.name}: expected {_describe(hints[f.name])}, got {value!r}")
