"""Run records: a JSON file beside each generated video saying exactly how it was made.

Design:

* Location (`record_path_for`): the video path with its suffix replaced by `.json`, next to it: `out.mp4` ->
  `out.json`, a png frame directory `frames/` -> `frames.json` (a sibling, not a file inside, so the directory holds
  only frames and can be replaced by the next run). Two outputs sharing a stem (`out.mp4`, `out.gif`) share a record.
* Content: `{"record_version", "created_utc", "settings", "environment"}`. `settings` are the caller's resolved
  settings; anything JSON cannot hold is converted (`torch.dtype`/`torch.device`/`Path`/`Fraction` -> `str`,
  tuples/sets -> lists, numpy scalars -> numbers, arrays/tensors of <= 64 items -> lists (larger ones -> a shape and
  dtype summary), dataclasses -> dicts, NaN/inf -> strings, anything else -> `str`). `environment` records the
  versions that produced the video (motif_video, torch, diffusers, transformers, PyAV, Python, platform, CUDA device)
  so a result can be reproduced or a regression bisected.
* The file is written atomically (`motif_video.atomic`): a reader never sees half a record.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib.metadata
import json
import math
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motif_video import atomic
from motif_video.version import __version__

RECORD_VERSION = 1
_MAX_ARRAY_ITEMS = 64  # larger arrays are summarised by shape and dtype


def record_path_for(video_path: str | os.PathLike) -> Path:
    """`out.mp4` -> `out.json`; a frame directory `frames/` -> `frames.json` beside it."""
    video = Path(video_path)
    if not video.name:
        raise ValueError(f"cannot place a run record for {os.fspath(video_path)!r}: it has no file name")
    return video.with_suffix(".json") if video.suffix else video.with_name(video.name + ".json")


def write_run_record(path: str | os.PathLike, settings: dict[str, Any]) -> Path:
    """Write the run record and return its path.

    path: the video the settings produced (the record goes to `record_path_for(path)`), or an explicit `.json` path.
    settings: the resolved generation settings (prompt, seed, steps, dtype, ...).
    """
    target = Path(path) if os.fspath(path).lower().endswith(".json") else record_path_for(path)
    record = {
        "record_version": RECORD_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": to_jsonable(settings),
        "environment": environment_info(),
    }
    text = json.dumps(record, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    if not target.parent.is_dir():
        raise ValueError(f"output directory {target.parent} does not exist: create it or choose another --output")
    return atomic.write_text(target, text)


def environment_info() -> dict[str, Any]:
    """Versions of everything that shapes the output, and the CUDA device (None on CPU)."""
    cuda = torch.cuda.is_available()
    return {
        "motif_video": __version__,
        "torch": torch.__version__,
        "diffusers": _package_version("diffusers"),
        "transformers": _package_version("transformers"),
        "av": _package_version("av"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.version.cuda,
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
    }


def to_jsonable(value: Any) -> Any:
    """A JSON-serialisable copy of `value` (see the module docstring for the conversions)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((to_jsonable(v) for v in value), key=repr)
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, (np.ndarray, torch.Tensor)):
        count = value.size if isinstance(value, np.ndarray) else value.numel()
        if count <= _MAX_ARRAY_ITEMS:
            return to_jsonable(value.tolist())
        return f"{type(value).__name__}(shape={list(value.shape)}, dtype={value.dtype})"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(dataclasses.asdict(value))
    return str(value)  # Path, Fraction, torch.dtype ("torch.bfloat16"), torch.device ("cuda:0"), ...


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None
