"""Input embedders: timestep, video patches, text tokens and SigLIP image tokens.

Module and parameter names follow the official checkpoint keys.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_sinusoid(t: torch.Tensor, channels: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """t: (B,) on the 0..1000 scale -> (B, channels) float32, [cos | sin] order (flip_sin_to_cos, shift 0)."""
    half = channels // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    angles = t[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat((torch.cos(angles), torch.sin(angles)), dim=-1)


class TimestepEmbedding(nn.Module):
    """MLP(sinusoid(t)): 256 -> D -> D with SiLU (keys `timestep_embedder.linear_1/2`)."""

    def __init__(self, dim: int, channels: int = 256) -> None:
        super().__init__()
        self.channels = channels
        self.linear_1 = nn.Linear(channels, dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        # t: (B,) -> temb: (B, D). The sinusoid is float32; low-precision weights get a cast input.
        x = timestep_sinusoid(t, self.channels)
        if self.linear_1.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(x)))


class ConditionEmbedding(nn.Module):
    """temb from the timestep alone: Motif-Video has no pooled text vector (key prefix `time_text_embed`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.timestep_embedder = TimestepEmbedding(dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.timestep_embedder(t)


class PatchEmbed(nn.Module):
    """Conv3d patchify (kernel = stride = (p_t, p, p)): (B, C, F, H, W) -> (B, N, D), tokens flattened t-h-w."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, patch_size_t: int) -> None:
        super().__init__()
        kernel = (patch_size_t, patch_size, patch_size)
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=kernel, stride=kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TextProjection(nn.Module):
    """Linear(text_dim -> D), GELU(tanh), Linear(D -> D) on encoder tokens (key prefix `context_embedder`)."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_features, dim)
        self.act_1 = nn.GELU(approximate="tanh")
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class ImageProjection(nn.Module):
    """SigLIP tokens -> D: LN, Linear(E -> E), GELU, Linear(E -> D), LN (key prefix `image_embedder`)."""

    def __init__(self, in_features: int, dim: int) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(in_features)
        self.linear_1 = nn.Linear(in_features, in_features)
        self.act_fn = nn.GELU()
        self.linear_2 = nn.Linear(in_features, dim)
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm_out(self.linear_2(self.act_fn(self.linear_1(self.norm_in(x)))))
