"""Reading `torch.distributed.checkpoint` (DCP) folders without letting a file run code.

DCP stores its `.metadata` as a pickle and decodes non-tensor entries with `torch.load(weights_only=False)`: a
planted checkpoint folder would run its payload on `export` or on a resumed `train`. Here:
- `.metadata` is unpickled by `MetadataUnpickler`, which resolves only the classes DCP's metadata is made of
  (`ALLOWED`: the dataclasses of `torch.distributed.checkpoint.metadata`, `_StorageInfo`, `torch.Size`, dtypes,
  layouts, memory formats, paths) and refuses any other global; the result must be a `Metadata`, its files plain
  names inside the folder, and the file at most `MAX_METADATA_BYTES`.
- `SafeLoadPlanner` decodes non-tensor entries with `torch.load(weights_only=True)`; tensors are already read that
  way by DCP, and the rank files (`rank-XXXXX.pt`) by `load_rank_file`.
Every refusal is a ValueError naming the file. `load` is `dcp.load` through both.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import os
import pickle
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.filesystem import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

from motif_video import safe_read

METADATA_FILE = ".metadata"
MAX_METADATA_BYTES = 2**30
_DCP = "torch.distributed.checkpoint.metadata"
ALLOWED: dict[str, set[str]] = {  # module -> names a DCP .metadata pickle refers to (torch 2.4 - 2.13)
    _DCP: {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.distributed.checkpoint.planner": {"LoadItemType", "WriteItemType"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
}  # fmt: skip


class Refused(pickle.UnpicklingError):
    """A global that DCP's metadata is not made of: the pickle is not unpickled any further."""


class MetadataUnpickler(pickle.Unpickler):
    """A pickle reader that builds only DCP's own metadata types (`ALLOWED`) and torch dtypes."""

    def find_class(self, module: str, name: str) -> Any:
        if name in ALLOWED.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise Refused(f"{module}.{name} is not part of a DCP checkpoint's metadata")


def read_metadata(path: str | os.PathLike) -> Metadata:
    """The `.metadata` of the DCP checkpoint folder `path`, unpickled through `MetadataUnpickler` and checked."""
    file = Path(path) / METADATA_FILE
    if not file.is_file():
        raise ValueError(f"{path} holds no {METADATA_FILE}: it is not a complete DCP checkpoint")
    if file.stat().st_size > MAX_METADATA_BYTES:
        raise ValueError(f"{file} is larger than {MAX_METADATA_BYTES:,} bytes: not a checkpoint this program wrote")
    try:
        metadata = MetadataUnpickler(io.BytesIO(file.read_bytes())).load()
    except Refused as err:
        raise ValueError(f"{file} is not a DCP checkpoint's metadata ({err}): refusing to unpickle it") from None
    except Exception as err:  # EOFError, struct / index errors of a truncated or corrupt pickle
        raise ValueError(f"{file} is truncated or corrupt ({type(err).__name__}): not a readable checkpoint") from None
    if not isinstance(metadata, Metadata):
        raise ValueError(f"{file} does not hold DCP metadata (found a {type(metadata).__name__})")
    for info in (metadata.storage_data or {}).values():
        name = getattr(info, "relative_path", None)
        safe_read.inside(path, name, "checkpoint file")
        if not all(isinstance(getattr(info, k, None), int) and getattr(info, k) >= 0 for k in ("offset", "length")):
            raise ValueError(f"{file}: the entry for {name} has no valid byte range")
    return metadata


class SafeReader(FileSystemReader):
    """DCP's file-system reader with `read_metadata` replaced by the allow-list one above."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        metadata = read_metadata(self.path)
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class SafeLoadPlanner(dcp.DefaultLoadPlanner):
    """DCP's default load planner, decoding non-tensor entries (optimizer hyperparameters) as weights only."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            decoded = torch.load(value, weights_only=True)
        except Exception as err:
            raise ValueError(f"checkpoint entry {fqn} is not plain data ({type(err).__name__}): refusing it") from None
        if self.flatten_state_dict:  # as DefaultLoadPlanner.load_bytes does with its own decode
            set_element(self.original_state_dict, self.mappings[fqn], decoded)
        else:
            self.state_dict[fqn] = decoded


def load(state: dict[str, Any], path: str | os.PathLike, *, partial: bool = False, single: bool = False) -> None:
    """`dcp.load(state)` from `path` through `SafeReader` and `SafeLoadPlanner`; `partial`: entries the checkpoint
    lacks may be missing from it; `single`: in this process alone (no collectives), also under torchrun."""
    options: dict[str, Any] = {}
    if single and "no_dist" in inspect.signature(dcp.load).parameters:
        options["no_dist"] = True
    read_metadata(path)  # a refusal surfaces as our own ValueError, not inside DCP's collective error
    with warnings.catch_warnings(), unwrapped():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(
            state,
            storage_reader=SafeReader(str(path)),
            planner=SafeLoadPlanner(allow_partial_load=partial),
            **options,
        )


@contextlib.contextmanager
def unwrapped() -> Iterator[None]:
    """DCP wraps what fails inside it (our refusals, a Ctrl-C) in a CheckpointException, a BaseException that no
    error handler expects: re-raise the first original exception instead."""
    try:
        yield
    except CheckpointException as err:
        for failure in err.failures.values():
            original = failure[0] if isinstance(failure, tuple) and failure else failure
            if isinstance(original, BaseException):
                raise original.with_traceback(None) from None
        raise RuntimeError(str(err)) from None


def load_rank_file(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint's per-rank state (`rank-XXXXX.pt`: tensors and plain values), read as weights only."""
    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # a planted pickle, a truncated file
        raise ValueError(f"{path} is not a rank state this program wrote ({type(err).__name__}): refusing it") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a rank state this program wrote")
    return state


__all__ = [
    "ALLOWED",
    "MetadataUnpickler",
    "Refused",
    "SafeLoadPlanner",
    "SafeReader",
    "load",
    "load_rank_file",
    "read_metadata",
    "unwrapped",
]
