"""EMA of the trainable parameters: a name -> tensor dict laid out like the parameters (sharded under FSDP2).

The trainer updates it after every optimizer step (`update_ema`) and checkpoints it beside the model; a curriculum
stage starts from the previous stage's EMA where the shapes match (`make_ema(model, init)`).
"""

from __future__ import annotations

import torch


def make_ema(model: torch.nn.Module, init: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """EMA of the trainable parameters; `init` (e.g. the previous curriculum stage's EMA) wins where it has a
    tensor of the same shape, the current weights elsewhere (e.g. a newly inserted cross-attention)."""
    init = init or {}
    ema = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            given = init.get(name)
            same = given is not None and tuple(given.shape) == tuple(p.shape)
            ema[name] = _like(given, p) if same else p.detach().clone()
    return ema


def _like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out like `param`: sharded the same way when `param` is an FSDP2 DTensor."""
    full = full.detach().to(device=param.device, dtype=param.dtype)
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, param.device_mesh, param.placements)
    return full.clone()


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * parameter, for every parameter `ema` holds."""
    for name, p in model.named_parameters():
        if name in ema:
            ema[name].lerp_(p.detach(), 1.0 - decay)


__all__ = ["make_ema", "update_ema"]
