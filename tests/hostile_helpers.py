"""Helpers for the hostile-input tests: snapshots of a folder, the CLI's one error line, and pickles whose
unpickling would create a marker file (so a test proves that no file's code ran)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any


class Payload:
    """Unpickled, this opens (creates) `marker`: proof that a file ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.marker, "w"))


def snapshot(root: Path) -> dict[str, tuple[bool, int, int]]:
    """Every path under `root` with (is_dir, size, mtime) (folders: existence only, as a write probe created and
    removed inside them changes their mtime): equal snapshots mean nothing was written or left behind."""
    found = {}
    for path in sorted(Path(root).rglob("*")):
        stat = path.lstat()
        found[str(path.relative_to(root))] = (True, 0, 0) if path.is_dir() else (False, stat.st_size, stat.st_mtime_ns)
    return found


def error_line(stderr: str) -> str:
    """The CLI's one error line; asserts there is exactly one and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("motif-video ")]
    assert len(lines) == 1, stderr
    return lines[0]


def copy_release(release: Path, to: Path) -> Path:
    return Path(shutil.copytree(release, to))


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def replace_weights_with_pickle(folder: Path, pickle_name: str, marker: Path) -> None:
    """Remove a component's safetensors and leave only a pickled weight file that would create `marker`."""
    import torch

    for file in folder.glob("*.safetensors"):
        file.unlink()
    torch.save({"weight": Payload(marker)}, folder / pickle_name)
