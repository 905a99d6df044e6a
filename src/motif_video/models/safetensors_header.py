"""A safetensors file's header, read and bounded before any tensor is allocated.

The format is an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}} (plus an
optional `__metadata__` of strings), then the raw bytes. Reading the header ourselves lets a loader compare names
and shapes with the model it expects before a byte of data is read, and refuse a hostile file early: a header
larger than `MAX_HEADER_BYTES`, more than `MAX_TENSORS` entries (a million empty tensors), shapes or offsets that do
not fit the file. Errors are ValueError naming the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

MAX_HEADER_BYTES = 16 * 2**20  # the official 2B transformer's header is ~150 kB
MAX_TENSORS = 65536  # the official checkpoints hold ~1,500
MAX_DIMS = 8
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")  # torch.save / pickle files: loading one can run code


def pickle_refusal(found: Path, target: str) -> str:
    """The message for a folder that holds weights only as a pickle: why it is refused and how to convert it."""
    code = (
        "import torch; from safetensors.torch import save_file; "
        f"save_file(torch.load('{found}', weights_only=True), '{found.with_name(target)}')"
    )
    return (
        f"{found} is a pickled weight file: motif-video never loads pickled weights (unpickling can run code). "
        f'Convert it to {target} once, in an environment you trust: python -c "{code}"'
    )


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
    """{name: TensorInfo} of a safetensors file, checked against the bounds and the file's size."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES or length > size - 8:
                raise ValueError(f"{path}: safetensors header of {length:,} bytes (file {size:,} bytes, limit "
                                 f"{MAX_HEADER_BYTES:,}): not a checkpoint this program reads")  # fmt: skip
            raw = handle.read(length)
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ValueError(f"{path}: the safetensors header is not valid JSON (a corrupt or truncated file?)") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the safetensors header must be an object")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise ValueError(f"{path} lists {len(header):,} tensors (limit {MAX_TENSORS:,}): not a model checkpoint")
    return {name: _entry(path, name, entry, size - 8 - length) for name, entry in header.items()}


def _entry(path: Path, name: str, entry: object, data_bytes: int) -> TensorInfo:
    bad = f"{path}: tensor {name!r} has a malformed header entry"
    if not isinstance(entry, dict):
        raise ValueError(bad)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES or not isinstance(shape, list) or len(shape) > MAX_DIMS:
        raise ValueError(bad)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ValueError(bad)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
        raise ValueError(bad)
    begin, end = offsets
    if not 0 <= begin <= end <= data_bytes or end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise ValueError(f"{path}: tensor {name!r} does not fit the file (truncated or corrupt)")
    return TensorInfo(dtype, tuple(shape))


__all__ = ["MAX_HEADER_BYTES", "MAX_TENSORS", "PICKLE_SUFFIXES", "TensorInfo", "pickle_refusal", "read_header"]
