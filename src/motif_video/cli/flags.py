"""Command-line flags made from settings dataclasses: an option is written once, as a field, never again in argparse."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any


# A settings dataclass field becomes a flag when its metadata has "help" (`pipeline.settings.option`): named
# --field-name (or metadata "flag"), typed and defaulted by the field; bools are switches, lists repeat, metadata
# "choices", "group" (mutually exclusive) and "const" (the flag alone means that value: nargs="?") pass to
# argparse; a nested settings dataclass adds its own flags.
# `skip`: field names that get no flag (a command that sets them itself).
def add_settings_flags(
    parser: argparse.ArgumentParser, cls: type, groups: dict[str, Any], skip: tuple[str, ...] = ()
) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(hints[f.name]):
            add_settings_flags(parser, hints[f.name], groups)
            continue
        if "help" not in f.metadata:
            continue
        meta = f.metadata
        kind = _flag_type(hints[f.name])
        kwargs: dict[str, Any] = dict(dest=f.name, help=meta["help"])
        if kind is bool:
            kwargs["action"] = "store_true"
        elif kind is list:
            kwargs["action"] = "append"
        else:
            kwargs.update(type=kind, default=f.default)
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        if kind is not bool and "choices" not in meta:
            kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        if "choices" in meta:
            kwargs["choices"] = list(meta["choices"])
        if "const" in meta:
            kwargs.update(nargs="?", const=meta["const"])
        target = parser
        if "group" in meta:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["group"]]
        target.add_argument(flag, **kwargs)


def _flag_type(hint: Any) -> type:
    """`int | None` -> int, `list[str]` -> list, `bool` -> bool."""
    if typing.get_origin(hint) is list:
        return list
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def settings_from_args(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """The dataclass `cls` from the flags `_add_settings_flags` made; `given` fields are taken as they are."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in given:
            values[f.name] = given[f.name]
        elif dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = settings_from_args(hints[f.name], args)
        elif "help" in f.metadata:
            values[f.name] = getattr(args, f.name)
    return cls(**values)
