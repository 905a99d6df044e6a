"""Export trained weights as the official `transformer/` folder, optionally as a whole release folder.

`export_transformer(source, out_dir)` takes an in-memory transformer (LoRA-injected or wrapped in a
`TrainModule`: adapters are merged at their scales, the model itself is left unchanged) or a training checkpoint
written by `checkpoint.save_checkpoint` (a run folder -> its latest COMPLETE checkpoint, or one `step-N/` folder).
From a checkpoint it reads only the model and EMA tensors through `torch.distributed.checkpoint` (one process,
any number of saving ranks), and takes the EMA weights when the checkpoint has them and `use_ema` (EMA entries
overlay the model's, so an EMA of the trainable parameters alone also works). LoRA runs are merged with
`lora_alpha` / rank. The output is written by `checkpoint_io.save_transformer` after a strict key/shape check
against a model of the config, so `MotifVideoTransformer.from_pretrained` and diffusers'
`MotifVideoTransformer3DModel.from_pretrained` both read it.

A source can also be an exported transformer folder (config.json beside the safetensors) or a folder holding one as
`transformer/`, such as a training run's `final/`: that is how an export made without `base` becomes a release later.

Without `base` the weights and `config.json` go straight into `out_dir`: a transformer folder, not a release (no
`model_index.json`, nothing `generate` can load); export it again with `base` to make one. With `base` (a release
folder or hub id) `out_dir` becomes a release (`core.release_writer.copy_release`): every other component folder is
copied from `base`, the new weights go to `out_dir/transformer/`, and `model_index.json` is written last, so a folder
that has one is complete. A base whose VAE, text encoder or SigLIP tower does not fit the transformer is refused
before the weights are read or anything is written. Written files get ordinary permissions (0644 under umask 022).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from motif_video import bounds, safe_read
from motif_video.atomic import remove_stale
from motif_video.core.lora import merge_lora_state_dict, model_state_dict_merged
from motif_video.core.release import read_index, resolve_folder
from motif_video.core.release_writer import check_fits, copy_release, ordinary_modes
from motif_video.core.run_folder import check_output_folder
from motif_video.models.checkpoint_io import (
    CONFIG_NAME,
    CheckpointError,
    check_state_dict,
    reconcile_config,
    save_transformer,
)
from motif_video.models.config import PRESETS, MotifVideoConfig
from motif_video.models.transformer import MotifVideoTransformer
from motif_video.training.checkpoint import (
    COMPLETE,
    latest_checkpoint,
    read_tensors,
    read_trainer_state,
    stored_tensors,
)
from motif_video.training.parallel import world

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WRAPPER_PREFIX = "transformer."  # a TrainModule's transformer keys


@dataclass(frozen=True)
class ExportResult:
    transformer_dir: Path  # config.json + safetensors
    release_dir: Path | None  # the release folder when `base` was given
    used_ema: bool
    step: int | None  # the checkpoint's step (None for an in-memory model)


def export_transformer(
    model_or_checkpoint: nn.Module | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    use_ema: bool = True,
    model_config: MotifVideoConfig | str | os.PathLike | None = None,
    lora_alpha: float | None = None,
    base: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    max_shard_size: int | str = "5GB",
) -> ExportResult:
    """Write the official transformer folder (see the module docstring).

    Sources: a model, a training checkpoint (or run folder), or an exported transformer folder (or one holding
    `transformer/`, as a run's `final/`). Checkpoints: trainer.json's `model_config` (a config.json dict) and
    `lora` (LoRAConfig fields), which the recipe runner stores, are used when present; the arguments override them.
    model_config: a MotifVideoConfig, a preset name, a config.json, or a folder holding config.json or
    transformer/config.json. lora_alpha: the alpha of a LoRA run (LoRAConfig.alpha, or its rank when that was None).
    dtype: cast floating weights.
    base: a release folder or hub id whose other components make `out_dir` a release; they must fit the model.
    """
    out = check_output_folder(out_dir, "output")  # a file, or a folder we cannot write: refused before the long read
    if lora_alpha is not None:
        bounds.real("lora_alpha", lora_alpha, 0.0, lo_open=True)
    release = None if base is None else resolve_folder(base)
    if release is not None:
        read_index(release)  # an incomplete base fails here, before the long read

    def fits(config: MotifVideoConfig | dict) -> None:
        if release is not None:
            check_fits(release, config)

    used_ema, step = False, None
    exported = None if isinstance(model_or_checkpoint, nn.Module) else exported_folder(model_or_checkpoint)
    if isinstance(model_or_checkpoint, nn.Module):
        state, config = _from_model(model_or_checkpoint)
        fits(config)
    elif exported is not None:
        fits(safe_read.read_json(exported / CONFIG_NAME, "config"))
        state, config = _from_model(MotifVideoTransformer.from_pretrained(exported, fuse_qkv=False))
    else:
        path = resolve_checkpoint(model_or_checkpoint)
        state, config, used_ema, step = _from_checkpoint(path, use_ema, model_config, lora_alpha, fits)
    model = _plain_model(state, config, dtype)
    if world()[0] != 0:  # an FSDP2 model is gathered on every rank (full_tensor is collective); rank 0 writes
        return ExportResult(out if base is None else out / "transformer", None if base is None else out, used_ema, step)
    remove_stale(out)  # temporaries of a killed earlier export
    if release is None:
        save_transformer(model, out, max_shard_size=max_shard_size)
        ordinary_modes(out)
        return ExportResult(out, None, used_ema, step)
    copy_release(release, out, partial(save_transformer, model, max_shard_size=max_shard_size), model.config)
    return ExportResult(out / "transformer", out, used_ema, step)


# ---------------------------------------------------------------------------------------------------- sources


def _from_model(model: nn.Module) -> tuple[dict[str, torch.Tensor], MotifVideoConfig]:
    inner = getattr(model, "transformer", None)
    if not isinstance(model, MotifVideoTransformer) and isinstance(inner, MotifVideoTransformer):
        model = inner  # a TrainModule: export the transformer only
    config = getattr(model, "config", None)
    if not isinstance(config, MotifVideoConfig):
        raise ValueError(f"cannot export a {type(model).__name__}: expected a MotifVideoTransformer (or a wrapper)")
    full = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in model.state_dict().items()}
    return {k: v.detach().cpu() for k, v in model_state_dict_merged(model, full).items()}, config


def exported_folder(path: str | os.PathLike) -> Path | None:
    """An exported transformer folder (config.json beside the weights), or the `transformer/` of a folder holding one
    (a run's `final/`, a release); None for anything else, such as a training checkpoint."""
    path = Path(path)
    for folder in (path, path / "transformer"):
        if (folder / CONFIG_NAME).is_file():
            return folder
    return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A COMPLETE checkpoint folder as is; a run folder (or its checkpoints/) -> its latest complete checkpoint; a
    recipe run folder -> the latest complete checkpoint of its last stage that has one."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"checkpoint {path} is not a folder")
    if path.name.endswith(".partial"):
        raise ValueError(f"{path} is a partial checkpoint (interrupted while saving); pass a complete step-N/ folder")
    if (path / COMPLETE).is_file():
        return path
    if (path / ".metadata").is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {COMPLETE} marker): it was interrupted while saving")
    stages = sorted(path.glob("stages/*/checkpoints"), reverse=True)  # a recipe run: its latest stage first
    for folder in (path / "checkpoints", path, *stages):
        found = latest_checkpoint(folder) if folder.is_dir() else None
        if found is not None:
            return found
    raise ValueError(
        f"no complete checkpoint in {path} (looked for step-*/{COMPLETE} in it, its checkpoints/ and stages/*/)"
    )


def _from_checkpoint(
    path: Path, use_ema: bool, model_config: Any, lora_alpha: float | None, check: Callable[[Any], None]
) -> tuple[dict[str, torch.Tensor], MotifVideoConfig, bool, int | None]:

    trainer = read_trainer_state(path) if (path / "trainer.json").is_file() else {}
    stored = stored_tensors(path)
    model_md = {k[len("model.") :]: md for k, md in stored.items() if k.startswith("model.")}
    ema_md = {k[len("ema.") :]: md for k, md in stored.items() if k.startswith("ema.")}
    if not model_md:
        raise ValueError(f"{path} holds no model weights (no 'model.*' entries): is it a motif-video checkpoint?")
    wrapped = "x_embedder.proj.weight" not in model_md and f"{WRAPPER_PREFIX}x_embedder.proj.weight" in model_md
    config = _resolve_config(model_config, trainer.get("model_config"), path)  # fail before the long read
    check(config)
    scaling = _lora_scaling(lora_alpha, trainer.get("lora"))
    if scaling is None and any(".lora_" in k for k in model_md):
        raise ValueError(
            f"{path} is a LoRA run whose trainer.json does not store its LoRAConfig: pass its alpha (--lora-alpha; "
            "LoRAConfig.alpha, or the rank if alpha was None) so the adapters can be merged"
        )

    def empty(md: Any) -> torch.Tensor:
        return torch.empty(md.size, dtype=md.properties.dtype)

    def keep(key: str) -> bool:  # only the transformer's tensors (a TrainModule also has a REPA projector)
        return key.startswith(WRAPPER_PREFIX) if wrapped else True

    request: dict[str, Any] = {"model": {k: empty(md) for k, md in model_md.items() if keep(k)}}
    used_ema = use_ema and bool(ema_md)
    if used_ema:
        request["ema"] = {k: empty(md) for k, md in ema_md.items() if keep(k)}
    read_tensors(request, path)
    state = request["model"]
    for key, value in request.get("ema", {}).items():
        if key not in state:
            raise ValueError(f"{path}: EMA tensor {key!r} has no model tensor of that name")
        state[key] = value
    if wrapped:
        state = {k[len(WRAPPER_PREFIX) :]: v for k, v in state.items()}
    if any(".lora_" in k for k in state):
        state = merge_lora_state_dict(state, scaling)
    return state, config, used_ema, trainer.get("step")


def _lora_scaling(alpha: float | None, stored: dict[str, Any] | None) -> Callable[[str, str, int], float] | None:
    """scaling(module, adapter, rank) = alpha / rank; a stored LoRAConfig with alpha None means alpha = rank."""
    if alpha is None and stored is not None:
        alpha = stored.get("alpha")
        if alpha is None:
            return lambda module, adapter, rank: 1.0
    return None if alpha is None else (lambda module, adapter, rank: float(alpha) / rank)


def _resolve_config(given: Any, stored: dict[str, Any] | None, checkpoint: Path) -> MotifVideoConfig | dict:
    if isinstance(given, MotifVideoConfig):
        return given
    if given is None:
        if stored is None:
            raise ValueError(
                f"{checkpoint} does not store the model config: pass it (--model-config: a preset name such as "
                f"{sorted(PRESETS)[0]!r}, a transformer config.json, or a release or transformer/ folder)"
            )
        return stored
    if str(given) in PRESETS:
        return PRESETS[str(given)]
    path = Path(given)
    candidates = [path] if path.is_file() else [path / "config.json", path / "transformer" / "config.json"]
    for candidate in candidates:
        if candidate.is_file():
            return safe_read.read_json(candidate, "model config")
    raise ValueError(f"model config {given!r} is neither a preset ({sorted(PRESETS)}) nor a config.json / folder")


def _plain_model(
    state: dict[str, torch.Tensor], config: MotifVideoConfig | dict, dtype: torch.dtype | None
) -> MotifVideoTransformer:
    """A plain transformer holding exactly `state` (keys and shapes checked against the config)."""
    config_dict = config.to_dict() if isinstance(config, MotifVideoConfig) else config
    try:
        resolved = reconcile_config(config_dict, set(state))
        with torch.device("meta"):
            model = MotifVideoTransformer(resolved)
        check_state_dict(model.state_dict(), state)
    except CheckpointError as err:
        raise ValueError(f"the weights do not fit the model config: {err}. Pass the run's --model-config") from None
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


__all__ = [
    "ExportResult",
    "export_transformer",
    "exported_folder",
    "resolve_checkpoint",
]
