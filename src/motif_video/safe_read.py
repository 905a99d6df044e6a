"""Reading files that may be hostile: bounded in size and depth, and every error names the file.

A leaf (it imports nothing of ours), so configs, recipes, manifests, prompt files and indexes are all read the same
way by every layer:

- `read_text`: at most `max_bytes` (a larger file, or an endless one such as /dev/zero, is refused after reading
  `max_bytes + 1` bytes); UTF-8 only. Errors are ValueError naming the file and, for bad bytes, their offset.
- `read_json`: `read_text`, then nesting deeper than `MAX_JSON_DEPTH` is refused before the parser recurses (a file
  nested 200,000 deep would end in RecursionError), and the top level must be an object unless told otherwise.
- `inside`: a file name from an index (a weight shard) joined to its folder, refused when it would leave the folder
  (`..`, an absolute path, a symlink pointing out).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

MAX_CONFIG_BYTES = 16 * 2**20  # a config, index or recipe; the official ones are a few kB
MAX_JSON_DEPTH = 64  # the deepest official config nests 3 levels


def read_text(path: str | os.PathLike, what: str = "file", max_bytes: int = MAX_CONFIG_BYTES) -> str:
    """The UTF-8 text of `path`, refused (ValueError naming `what` and the path) when larger than `max_bytes`."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory, not a file")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as err:
        raise ValueError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if len(data) > max_bytes:
        raise ValueError(f"{what} {path} is larger than {max_bytes:,} bytes: is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {path} is not UTF-8 text (bad byte at offset {err.start})") from None


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")


def json_depth(text: str) -> int:
    """The deepest nesting of `[` / `{` in JSON text, strings skipped (no recursion, linear time)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(text: str, where: str, max_depth: int = MAX_JSON_DEPTH, kind: type | None = dict) -> Any:
    """JSON text -> a value; ValueError naming `where` when invalid, nested deeper than `max_depth`, or not a `kind`."""
    if text.count("[") + text.count("{") > max_depth and json_depth(text) > max_depth:
        raise ValueError(f"{where} nests deeper than {max_depth} levels: it is not a config this program wrote")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where} is not valid JSON: {err}") from None
    if kind is not None and not isinstance(value, kind):
        expected = "an object ({...})" if kind is dict else kind.__name__
        raise ValueError(f"{where} must hold {expected}, got {type(value).__name__}")
    return value


def read_json(
    path: str | os.PathLike,
    what: str = "file",
    max_bytes: int = MAX_CONFIG_BYTES,
    max_depth: int = MAX_JSON_DEPTH,
    kind: type | None = dict,
) -> Any:
    """`read_text` then `parse_json`: a bounded JSON file whose top level is a `kind` (None: anything)."""
    return parse_json(read_text(path, what, max_bytes), f"{what} {path}", max_depth, kind)


def inside(folder: str | os.PathLike, name: str, what: str = "file") -> Path:
    """`folder / name` when it stays inside `folder` (after symlinks); ValueError naming both otherwise."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or "\x00" in name:
        raise ValueError(f"{what} {name!r} listed in {folder} is not a file name")
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or name.startswith(("/", "\\")):
        raise ValueError(f"{what} {name!r} listed in {folder} points outside the folder: refusing to read it")
    path = folder / relative
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        raise ValueError(f"{what} {name!r} in {folder} resolves outside the folder: refusing to read it") from None
    return path


__all__ = ["MAX_CONFIG_BYTES", "MAX_JSON_DEPTH", "inside", "json_depth", "parse_json", "read_json", "read_text"]
