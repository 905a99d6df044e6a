"""LoRA on a `MotifVideoPipeline`'s transformer: load, scale, fuse, unload, save (diffusers' method names).

The adapter format and the peft mechanics live in `training/lora.py`; here only what the pipeline adds: adapters
go in before any memory mode that rewrites the transformer (block offload, FP8), and several named adapters can
be loaded, each with its own scale, their updates summed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from motif_video.core import lora


def _check_plain(pipe: Any, action: str) -> None:
    if getattr(pipe, "_block_offload", None) is not None:
        raise ValueError(f"cannot {action} after enable_block_offload: {action} first, then enable block offload")
    linears = (m for block in pipe.transformer.blocks for m in block.modules() if isinstance(m, nn.Linear))
    if any(type(m.weight) is not nn.Parameter for m in linears):  # torchao float8 weights are tensor subclasses
        raise ValueError(f"cannot {action} on an FP8-quantized transformer: {action} first, then enable_fp8")


def load_lora_weights(pipe: Any, path: str | Path, adapter_name: str = "default", scale: float = 1.0) -> None:
    """Add the adapter at `path` (folder or .safetensors, see `training.lora.read_lora`) with its scale."""
    _check_plain(pipe, "load LoRA weights")
    lora.load_lora(pipe.transformer, path, adapter_name=adapter_name, scale=scale)
    pipe.transformer.eval()


def set_lora_scale(pipe: Any, scale: float, adapter_name: str = "default") -> None:
    _require(pipe, adapter_name)
    lora.set_lora_scale(pipe.transformer, scale, adapter_name)


def fuse_lora(pipe: Any) -> None:
    """Merge every loaded adapter, at its scale, into the base weights; the LoRA layers are removed."""
    _check_plain(pipe, "fuse LoRA")
    _require(pipe, None)
    lora.merge_lora(pipe.transformer)


def unload_lora_weights(pipe: Any, adapter_name: str | None = None) -> None:
    """Remove one adapter (or all) unmerged: the transformer computes exactly what it did before loading."""
    _check_plain(pipe, "unload LoRA weights")
    if lora.has_lora(pipe.transformer):
        lora.unload_lora(pipe.transformer, adapter_name)


def save_lora_weights(pipe: Any, directory: str | Path, adapter_name: str = "default") -> Path:
    _require(pipe, adapter_name)
    return lora.save_lora(pipe.transformer, directory, adapter_name)


def _require(pipe: Any, adapter_name: str | None) -> None:
    names = list(getattr(pipe.transformer, "peft_config", None) or {})
    if not names or (adapter_name is not None and adapter_name not in names):
        wanted = "" if adapter_name is None else f" named {adapter_name!r}"
        raise ValueError(f"the pipeline has no LoRA adapter{wanted} (loaded: {names}); call load_lora_weights first")
