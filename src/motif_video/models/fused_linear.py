"""Fusable projection groups: q/k/v as one matmul while checkpoints keep the official unfused keys.

A module lists groups of sibling `nn.Linear`s (e.g. `to_q, to_k, to_v`) that read the same input. Unfused,
they are ordinary submodules with the official state-dict keys (what training and FSDP shard). `fuse()`
replaces each group by one Linear whose weight is the row-wise concatenation, so a forward does one GEMM
instead of three. State-dict hooks keep the checkpoint format unchanged either way: a fused module still
saves and loads the separate official keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FusableProjections(nn.Module):
    """Base for modules with groups of Linears that may be fused. Subclasses call `declare_group`."""

    def __init__(self) -> None:
        super().__init__()
        self._groups: dict[str, tuple[str, ...]] = {}
        self._fused: dict[str, tuple[int, ...]] = {}  # fused name -> output size of each member
        self.register_state_dict_post_hook(_split_fused_keys)
        self.register_load_state_dict_pre_hook(_fuse_loaded_keys)

    def declare_group(self, fused_name: str, members: tuple[str, ...]) -> None:
        self._groups[fused_name] = members

    @property
    def is_fused(self) -> bool:
        return bool(self._fused)

    def fuse(self) -> None:
        """Concatenate each declared group into one Linear (idempotent)."""
        for fused_name, members in self._groups.items():
            if fused_name in self._fused:
                continue
            linears = [getattr(self, m) for m in members]
            has_bias = linears[0].bias is not None
            weight = torch.cat([lin.weight.detach() for lin in linears], dim=0)
            fused = nn.Linear(weight.shape[1], weight.shape[0], bias=has_bias, device="meta")
            fused.weight = nn.Parameter(weight, requires_grad=linears[0].weight.requires_grad)
            if has_bias:
                fused.bias = nn.Parameter(torch.cat([lin.bias.detach() for lin in linears]))
            self._fused[fused_name] = tuple(lin.out_features for lin in linears)
            for m in members:
                delattr(self, m)
            setattr(self, fused_name, fused)

    def unfuse(self) -> None:
        """Split fused Linears back into their official members (for training or sharding)."""
        for fused_name, sizes in list(self._fused.items()):
            fused = getattr(self, fused_name)
            weights = fused.weight.detach().split(sizes, dim=0)
            biases = fused.bias.detach().split(sizes) if fused.bias is not None else [None] * len(sizes)
            delattr(self, fused_name)
            for name, w, b in zip(self._groups[fused_name], weights, biases):
                lin = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
                lin.weight = nn.Parameter(w.clone(), requires_grad=fused.weight.requires_grad)
                if b is not None:
                    lin.bias = nn.Parameter(b.clone())
                setattr(self, name, lin)
            del self._fused[fused_name]

    def project(self, fused_name: str, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Apply a group to x: (B, L, Din) -> one (B, L, Dout_i) per member, fused or not."""
        if fused_name in self._fused:
            fused = getattr(self, fused_name)
            return F.linear(x, fused.weight, fused.bias).split(self._fused[fused_name], dim=-1)
        return tuple(getattr(self, m)(x) for m in self._groups[fused_name])

    def member_weight(self, fused_name: str, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight and bias of one member (a view into the fused weight when fused)."""
        if fused_name not in self._fused:
            lin = getattr(self, self._groups[fused_name][index])
            return lin.weight, lin.bias
        sizes = self._fused[fused_name]
        start = sum(sizes[:index])
        fused = getattr(self, fused_name)
        bias = None if fused.bias is None else fused.bias[start : start + sizes[index]]
        return fused.weight[start : start + sizes[index]], bias


def _split_fused_keys(module: FusableProjections, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for fused_name, sizes in module._fused.items():
        members = module._groups[fused_name]
        for kind in ("weight", "bias"):
            key = f"{prefix}{fused_name}.{kind}"
            if key not in state_dict:
                continue
            for name, part in zip(members, state_dict.pop(key).split(sizes, dim=0)):
                state_dict[f"{prefix}{name}.{kind}"] = part


def _fuse_loaded_keys(module: FusableProjections, state_dict: dict, prefix: str, *args) -> None:
    for fused_name in module._fused:
        members = module._groups[fused_name]
        for kind in ("weight", "bias"):
            keys = [f"{prefix}{name}.{kind}" for name in members]
            if all(k in state_dict for k in keys):
                state_dict[f"{prefix}{fused_name}.{kind}"] = torch.cat([state_dict.pop(k) for k in keys], dim=0)
