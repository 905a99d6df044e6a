"""Values checked against their declared types and bounds, with one error style for every layer.

A leaf (it imports nothing of ours): configs, recipes, generation settings and pipeline arguments call it before
any work. A wrong type is a TypeError, a value out of range (NaN and infinities included) a ValueError; both name
the field and what it must be, so a user knows what to change (`num_attention_heads must be an integer, got 'four'`).
Booleans are not integers here, and an integer is a valid float.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from typing import Any, Literal, Union

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.Generator.manual_seed accepts


def _range_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"{'<' if hi_open else '<='} {hi}"


def integer(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """`value` as an int in [lo, hi]; TypeError when it is not an integer, ValueError when out of range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {_range_text(lo, hi, False, False)}, got {value}")
    return value


def real(
    name: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """`value` as a finite float within the bounds (open ends when asked); TypeError / ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be a finite number, got {value}")
    low = lo is not None and (value <= lo if lo_open else value < lo)
    high = hi is not None and (value >= hi if hi_open else value > hi)
    if low or high:
        raise ValueError(f"{name} must be {_range_text(lo, hi, lo_open, hi_open)}, got {value}")
    return value


def seed(name: str, value: Any) -> int:
    """A seed torch accepts: an integer in [-2**63, 2**64 - 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if not SEED_MIN <= value <= SEED_MAX:
        raise ValueError(f"{name} must fit in 64 bits ([-2**63, 2**64 - 1]), got {value}")
    return int(value)


def utf8(name: str, text: Any) -> str:
    """A string that can be written as UTF-8 (command-line bytes that are not UTF-8 arrive as lone surrogates)."""
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a string, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"{name} is not valid UTF-8 text (bad byte at character {err.start})") from None
    return text


# ---------------------------------------------------------------------------------------------------- types


def matches(value: Any, hint: Any) -> bool:
    """Whether `value` fits the type hint (shallow generics: tuple/list/dict items are checked one level deep)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None) or hint is None:
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin is Literal:
        return value in typing.get_args(hint)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        args = typing.get_args(hint)
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if origin is dict:
        args = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(matches(k, args[0]) and matches(v, args[1]) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a typing construct not checked here


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if hint in names:
        return names[hint]
    origin = typing.get_origin(hint)
    if origin is Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (tuple, list):
        return "a list"
    if origin is dict:
        return "a table/object"
    return getattr(hint, "__name__", str(hint))


def check_fields(cls: type, values: dict[str, Any], where: str) -> None:
    """TypeError naming the first of `values` (field name -> value) that does not fit its field's type in `cls`."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in values and not matches(values[f.name], hints[f.name]):
            value = values[f.name]
            shown = repr(value) if len(repr(value)) <= 60 else type(value).__name__
            raise TypeError(f"{where}.{f.name} must be {_describe(hints[f.name])}, got {shown}")


def check_types(instance: Any, where: str | None = None) -> None:
    """`check_fields` for every field of a dataclass instance."""
    cls = type(instance)
    values = {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}
    check_fields(cls, values, where or cls.__name__)


__all__ = ["SEED_MAX", "SEED_MIN", "check_fields", "check_types", "integer", "matches", "real", "seed", "utf8"]
