"""Training checkpoints through `torch.distributed.checkpoint` (DCP), written so a kill never leaves a
checkpoint that looks complete.

Layout of `<run>/checkpoints/`:
    step-00001000/            a complete checkpoint: DCP files + per-rank state + COMPLETE (written last)
    step-00001000.partial/    being written (or killed while writing): never read, removed on the next save
    latest                    text file naming the newest complete checkpoint (atomic replace)

What is saved: model and EMA weights and the optimizer state through DCP (sharded; every rank writes its
shards, and a checkpoint saved by N ranks loads on M); the LR-scheduler state, the step and the run config
(rank 0, JSON); per rank, its RNG states and data-reader position (`rank-XXXXX.pt`, tensors and plain values
only, loaded with `weights_only=True`). Order: DCP save -> per-rank files -> barrier -> rank 0 writes
COMPLETE, renames `.partial` to the final name and updates `latest`. A `.partial` left by a kill is never read;
the next save of that step, or the interrupted command on its way out (`remove_partial`), removes it.
Reading never runs a pickle from the folder (`dcp_reader`: an allow-list unpickler for DCP's metadata, weights-only
decoding of everything else).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from motif_video import atomic, safe_read
from motif_video.training import dcp_reader
from motif_video.training.parallel import world

# DCP warns "torch.distributed is disabled ... assuming the intent is to save/load in a single process": it is.
warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)

COMPLETE = "COMPLETE"
LATEST = "latest"


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest COMPLETE checkpoint under `directory`, or None (partial ones are ignored)."""
    directory = Path(directory)
    pointer = directory / LATEST
    if pointer.is_file():
        try:
            candidate = safe_read.inside(directory, safe_read.read_text(pointer, "checkpoint pointer", 4096).strip())
        except ValueError:
            candidate = None  # a damaged pointer: fall back to the folders themselves
        if candidate is not None and (candidate / COMPLETE).is_file():
            return candidate
    complete = sorted(p.parent for p in directory.glob(f"step-*/{COMPLETE}"))
    return complete[-1] if complete else None


def init_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Create optimizer state for EVERY parameter now (a zero-lr step), so parameters that never get a gradient
    (e.g. the image embedder in T2V-only stages) have state keys too and every checkpoint has the same keys."""
    get_optimizer_state_dict(model, optimizer)


def save_checkpoint(
    directory: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor] | None,
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Save everything needed to resume exactly; returns the final checkpoint folder."""
    rank, _ = world()
    directory = Path(directory)
    final = directory / checkpoint_name(step)
    partial = final.with_name(final.name + ".partial")
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            shutil.rmtree(partial)
    _barrier()
    state: dict[str, Any] = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    if ema is not None:
        state["ema"] = ema  # name -> tensor (DTensor shards under FSDP2)
    with dcp_reader.unwrapped():  # a Ctrl-C inside DCP arrives as itself
        dcp.save(state, checkpoint_id=str(partial))
    torch.save(rank_state, partial / f"rank-{rank:05d}.pt")
    if rank == 0:
        (partial / "trainer.json").write_text(json.dumps(trainer_state, indent=2, sort_keys=True))
    _barrier()
    if rank == 0:
        (partial / COMPLETE).write_text(f"{step}\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(partial, final)
        atomic.write_text(directory / LATEST, final.name + "\n")
        _prune(directory, keep)
    _barrier()
    return final


def remove_partial(run_dir: str | Path) -> list[Path]:
    """Remove the `.partial` checkpoint folders under a run folder (saves a kill interrupted); they are never read,
    and the command that was interrupted removes them on its way out."""
    found = sorted(Path(run_dir).glob("**/checkpoints/step-*.partial"))
    for folder in found:
        shutil.rmtree(folder, ignore_errors=True)
    return found


def _prune(directory: Path, keep: int) -> None:
    complete = sorted(p.parent for p in directory.glob(f"step-*/{COMPLETE}"))
    for old in complete[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a COMPLETE checkpoint in place; returns (trainer_state, this rank's rank_state)."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {COMPLETE} marker): it was interrupted while saving")
    rank, _ = world()
    state: dict[str, Any] = {
        "model": get_model_state_dict(model),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    if ema is not None:
        state["ema"] = ema  # loaded in place
    trainer_state = read_trainer_state(path)  # the small files first: a damaged one fails before the long read
    rank_file = path / f"rank-{rank:05d}.pt"
    if not rank_file.is_file():
        raise ValueError(f"{path} was saved with fewer ranks (no {rank_file.name}); resume with the same world size")
    rank_state = dcp_reader.load_rank_file(rank_file)
    dcp_reader.load(state, path)
    set_model_state_dict(model, state["model"], options=StateDictOptions(strict=True))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    return trainer_state, rank_state


def read_trainer_state(path: str | Path) -> dict[str, Any]:
    """A checkpoint's `trainer.json` (step, scheduler, config, ...), bounded and checked to hold an integer step."""
    state = safe_read.read_json(Path(path) / "trainer.json", "checkpoint state")
    if isinstance(state.get("step"), bool) or not isinstance(state.get("step"), int) or state["step"] < 0:
        raise ValueError(f"{Path(path) / 'trainer.json'} has no valid step")
    return state


def stored_tensors(path: str | Path) -> dict[str, Any]:
    """A DCP checkpoint's entries, read from its metadata alone: "model.<name>" / "ema.<name>" -> tensor metadata
    (`.size`, `.properties.dtype`)."""
    return dcp_reader.read_metadata(path).state_dict_metadata


def read_tensors(request: dict[str, Any], path: str | Path) -> None:
    """Fill `request` ({"model": {name: tensor}, "ema": {...}}) in place from a checkpoint, in ONE process: also
    when called on one rank of a torchrun job, there are no collectives (so no hang)."""
    dcp_reader.load(request, path, single=True)


def load_weights(
    path: str | Path, model: torch.nn.Module, *, ema: bool = False
) -> tuple[dict[str, torch.Tensor] | None, list[str]]:
    """Load the model weights of a COMPLETE checkpoint into an UNSHARDED `model`, by name, where shapes match.

    For the start of a curriculum stage: parameters the checkpoint lacks or holds in another shape (a newly
    inserted cross-attention, a projector for another teacher) keep their current values and are returned by
    name. With `ema=True` the checkpoint's EMA is returned too (name -> tensor, the same names), else None.
    """
    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {COMPLETE} marker): it was interrupted while saving")
    saved = stored_tensors(path)
    current = model.state_dict()
    wanted: dict[str, Any] = {"model": {}, "ema": {}}
    fresh = []
    for name, tensor in current.items():
        meta = saved.get(f"model.{name}")
        if meta is None or tuple(getattr(meta, "size", ())) != tuple(tensor.shape):
            fresh.append(name)
            continue
        wanted["model"][name] = tensor
        if ema and f"ema.{name}" in saved:
            wanted["ema"][name] = torch.empty_like(tensor)
    request = {k: v for k, v in wanted.items() if v}
    dcp_reader.load(request, path, partial=True)
    model.load_state_dict({**current, **wanted["model"]})
    return (wanted["ema"] if ema else None), fresh
