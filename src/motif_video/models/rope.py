"""3-D rotary position embedding for video tokens (the one RoPE implementation).

Positions are integer latent-grid indices (t, h, w) from 0, flattened t-h-w like the patch tokens. Each axis
gets a 1-D rotary table over its share of the head dim (`rope_axes_dim`, e.g. 16/56/56 of 128), in the
interleaved real form: channel pairs (2i, 2i+1) rotate by angle pos * theta^(-2i/dim). Frequencies and angles
are computed in float64 and stored as float32 tables, as the reference does, so tables match bit for bit.
Only video tokens are rotated; text, image and DDT-context tokens never are.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def _axis_table(positions: torch.Tensor, dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    # positions: (L,) float64 -> cos, sin: (L, dim) float32, each frequency repeated for its channel pair.
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim))
    angles = torch.outer(positions, freqs)
    return angles.cos().repeat_interleave(2, dim=1).float(), angles.sin().repeat_interleave(2, dim=1).float()


def rope_tables(
    grid: tuple[int, int, int], axes_dim: tuple[int, ...], theta: float, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables for a (F', H', W') token grid: each (F'*H'*W', sum(axes_dim)) float32."""
    dtype = torch.float64 if torch.device(device or "cpu").type not in ("mps", "npu") else torch.float32
    axes = [torch.arange(n, dtype=dtype, device=device) for n in grid]
    mesh = torch.meshgrid(*axes, indexing="ij")
    cos_parts, sin_parts = [], []
    for positions, dim in zip(mesh, axes_dim):
        cos, sin = _axis_table(positions.reshape(-1), dim, theta)
        cos_parts.append(cos)
        sin_parts.append(sin)
    return torch.cat(cos_parts, dim=1), torch.cat(sin_parts, dim=1)


class RotaryEmbedding3D(nn.Module):
    """Builds RoPE tables per latent grid and keeps the last few, so steps of a sampler reuse them."""

    def __init__(self, axes_dim: tuple[int, ...], theta: float, cache_size: int = 8) -> None:
        super().__init__()
        self.axes_dim = tuple(axes_dim)
        self.theta = float(theta)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def forward(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin: each (N, Dh) float32 for N = F'*H'*W' tokens."""
        key = (tuple(grid), str(device))
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        tables = rope_tables(grid, self.axes_dim, self.theta, device)
        if device.type != "meta":
            self._cache[key] = tables
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return tables


def _rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    # (x0, x1) -> (-x1, x0) for each interleaved channel pair.
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)
    return torch.stack((-x1, x0), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x: (B, H, L, Dh) by tables cos, sin: (L, Dh) shared, or (B, L, Dh) per sample (routed tokens).

    Computed in float32 and cast back, as the reference does.
    """
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    return (x.float() * cos + _rotate_pairs(x).float() * sin).to(x.dtype)


def apply_rope_prefix(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate the first L tokens of x: (B, H, L + M, Dh) and leave the other M untouched."""
    n = cos.shape[-2]
    if n == x.shape[2]:
        return apply_rope(x, cos, sin)
    return torch.cat((apply_rope(x[:, :, :n], cos, sin), x[:, :, n:]), dim=2)
