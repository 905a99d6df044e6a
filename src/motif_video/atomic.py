"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the package writes that someone may read while it is being written (videos, settings, checkpoints'
metadata, release configs, plans, indexes) goes through here: write a temporary sibling, flush it to disk, then
`os.replace` it over the target. A killed writer leaves at most a `*.tmp*` sibling, never a torn target;
`remove_stale` removes such leftovers (temporaries whose writer's PID is no longer running) when a command starts.
Files get ordinary permissions (0644 under the usual umask), not the 0600 of `tempfile`. A directory (a folder of
PNG frames) is written the same way: filled under a temporary name, then swapped in whole. A failed write names its
target, not the temporary (a full disk says which file it was writing).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
# `.{stem}.{pid}.tmp{suffix}` (files and frame folders), `.{name}.{pid}.tmp` (siblings), `.{name}.{pid}.old`
STALE = re.compile(r"^\.(?P<base>.+)\.(?P<pid>\d+)\.(?:tmp.*|old)$")


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def temporary_sibling(path: str | os.PathLike) -> Path:
    """The temporary name a write of `path` goes through (same folder, so `os.replace` stays atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write to; on success it replaces `path`, on error it is removed.

    For writers that need a file name of their own (PyAV, safetensors, PIL, tarfile): `with atomic_path(out) as tmp:
    write(tmp)`. The temporary keeps the target's suffix so format sniffing by extension still works; a file is
    fsynced before the rename. `directory=True` yields an empty directory instead, and an existing target directory
    is replaced (moved aside, then deleted once the new one is in place).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}{TMP_SUFFIX}{path.suffix}")
    if directory:
        _remove(tmp)  # a leftover of a killed process that had our pid
        tmp.mkdir()  # honours the umask, unlike tempfile.mkdtemp (0700)
    try:
        yield tmp
        if directory:
            _replace_dir(tmp, path)
        else:
            if tmp.exists():
                os.chmod(tmp, _umask_mode())
                _fsync(tmp)
            os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        if err.filename is None or Path(err.filename).name.startswith("."):  # the temporary's name: say the target's
            raise OSError(err.errno, err.strerror or str(err), str(path)) from None
        raise
    except BaseException:
        _remove(tmp)
        raise


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as err:  # EPERM: alive, another user's
        return err.errno == errno.EPERM
    return True


def remove_stale(
    folder: str | os.PathLike, recursive: bool = False, bases: tuple[str, ...] | None = None
) -> list[Path]:
    """Remove the temporaries of killed writes in `folder` (of the targets named `bases`, or all): files and folders
    named like ours whose writer's PID is not running. Returns what was removed."""
    folder = Path(folder)
    removed = []
    try:
        entries = list(folder.rglob(".*") if recursive else folder.glob(".*"))
    except OSError:
        return removed
    for entry in entries:
        match = STALE.match(entry.name)
        if match is None or (bases is not None and match["base"] not in bases) or _alive(int(match["pid"])):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def _fsync(file: Path) -> None:
    """Flush the file to disk before it is renamed, so a power cut cannot leave an empty file at the target."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    aside = target.with_name(f".{target.name}.{os.getpid()}.old")
    _remove(aside)
    os.replace(target, aside)
    os.replace(tmp, target)
    shutil.rmtree(aside, ignore_errors=True)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (fsynced before the rename)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 1, sort_keys: bool = False) -> Path:
    """Write `payload` as JSON to `path` atomically (a trailing newline when indented)."""
    text = json.dumps(payload, indent=indent, sort_keys=sort_keys)
    return write_text(path, text + ("\n" if indent is not None else ""))
