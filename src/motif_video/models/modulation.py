"""AdaLN-Zero modulation from the timestep embedding (LayerNorm without affine, eps 1e-6).

Each module is SiLU -> Linear(D -> k*D) on temb; `init_weights` zeroes that Linear, so every gate starts at
zero and every block starts as the identity (DiT's adaLN-Zero).
"""

from __future__ import annotations

import torch
from torch import nn


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x: (B, L, D); shift, scale: (B, D)
    return x * (1 + scale[:, None]) + shift[:, None]


class AdaLNZero(nn.Module):
    """Six vectors (shift, scale, gate for attention and for the MLP); returns the modulated input too."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> (modulated x, gate_msa, shift_mlp, scale_mlp, gate_mlp); x: (B, L, D), temb: (B, D)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.linear(self.silu(temb)).chunk(6, dim=1)
        return modulate(self.norm(x), shift_msa, scale_msa), gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaLNZeroSingle(nn.Module):
    """Three vectors (shift, scale, gate) for the parallel single-stream block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, 3 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate = self.linear(self.silu(temb)).chunk(3, dim=1)
        return modulate(self.norm(x), shift, scale), gate


class AdaLNContinuous(nn.Module):
    """Final norm: (scale, shift) from temb — note the order, scale first (key `norm_out.linear`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.silu = nn.SiLU()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(self.silu(temb).to(x.dtype)).chunk(2, dim=1)
        return modulate(self.norm(x), shift, scale)
