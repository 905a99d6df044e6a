"""A folder a command writes into (a training run, an export, shards): checked before any work, and held by one
process at a time.

`check_output_folder(folder, flag)` refuses, writing nothing lasting, a path that is an existing file or that sits
under one, and a folder (or the nearest existing parent of a new one) that cannot be written into (probed with a
file created and removed, which also works for root on a read-only mount).

`run_lock(folder)` takes an exclusive `flock` on `folder/.lock` and writes the holder's PID into it; a second
process asking for the same folder gets a ValueError naming that PID at once, instead of interleaving metrics and
checkpoints with it. The kernel drops the lock when the holder exits (a kill included), so a stale lock never
blocks a rerun. On release the file is removed; a process that locked a file another one had just removed notices
(the path no longer names its file) and takes the new one. Where `fcntl` does not exist (Windows) it is a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


def check_output_folder(folder: str | os.PathLike, flag: str = "--output") -> Path:
    """ValueError naming `flag` when `folder` cannot be the output folder; returns it as a Path."""
    text = os.fspath(folder)
    if not text.strip():
        raise ValueError(f"{flag} is empty: give a folder")
    folder = Path(text)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag} {folder} is an existing file, not a folder: choose a folder")
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{flag} {folder}: {existing} is a file, so no folder can be made there")
    probe = existing / f".motif-video-probe.{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"{flag} {folder}: cannot write into {existing} ({err.strerror or err})") from None
    return folder


def holder(folder: str | os.PathLike) -> int | None:
    """The PID written in a folder's lock file (None when there is none or it is unreadable)."""
    try:
        return int((Path(folder) / LOCK_NAME).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike, what: str = "run folder") -> Iterator[Path]:
    """Hold `folder` (created if missing) for the duration of the block; ValueError when another process holds it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    if fcntl is None:
        yield path
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = holder(folder)
            who = f"process {pid}" if pid is not None else "another process"
            raise ValueError(
                f"{what} {folder} is in use by {who} (another run on the same folder): wait for it to finish, "
                "or choose another folder"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file was removed by its last holder between our open and our lock: take the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


__all__ = ["LOCK_NAME", "check_output_folder", "holder", "run_lock"]
