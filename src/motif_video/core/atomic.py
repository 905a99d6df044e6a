"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the package writes that someone may read while it is being written (videos, settings, checkpoints'
metadata, release configs, plans, indexes) goes through here: write a temporary sibling, flush it to disk, then
`os.replace` it over the target. A killed writer leaves at most a `*.tmp` sibling, never a torn target. Files get
ordinary permissions (0644 under the usual umask), not the 0600 of `tempfile`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_sibling(path: str | os.PathLike) -> Path:
    """The temporary name a write of `path` goes through (same folder, so `os.replace` stays atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces `path`, on error it is removed.

    For writers that need a file name of their own (PyAV, safetensors, PIL): `with atomic_path(out) as tmp:
    write(tmp)`. The temporary keeps the target's suffix so format sniffing by extension still works.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{TMP_SUFFIX}{path.suffix}")
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (fsynced before the rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """Write `payload` as JSON to `path` atomically (a trailing newline when indented)."""
    text = json.dumps(payload, indent=indent, sort_keys=sort_keys)
    return write_text(path, text + ("\n" if indent is not None else ""))
