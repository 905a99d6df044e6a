"""Joint self-attention over [video; context] with per-head QK-norm (key prefix `attn`).

Dual-stream blocks project video and text with separate weights (`to_q/k/v` and `add_q/k/v_proj`), single-
stream blocks project the concatenated sequence with `to_q/k/v` only and have no output projection
(`pre_only`). Each q/k/v triple is a fusable group: one GEMM once `fuse()` has run.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from motif_video.models.fused_linear import FusableProjections


@dataclass
class AttentionContext:
    """What every block needs besides its streams, built once per forward (and per TREAD phase).

    rope_cos, rope_sin: (N, Dh) or (B, N, Dh) float32 tables for the N video tokens of this phase.
    joint_mask: (B, N + Lc) bool key mask over [video | context], or None when every key is valid.
    text_mask: (B, Lt) bool key mask over the text part of the context, or None.
    image_len: number of SigLIP image tokens at the start of the context (excluded from cross-attention).
    """

    rope_cos: torch.Tensor
    rope_sin: torch.Tensor
    joint_mask: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    image_len: int = 0


def qk_norm_layer(kind: str, head_dim: int) -> nn.Module:
    if kind == "rms_norm":
        return nn.RMSNorm(head_dim, eps=1e-6)
    return nn.LayerNorm(head_dim, eps=1e-6)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    # (B, L, H*Dh) -> (B, H, L, Dh)
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    # (B, H, L, Dh) -> (B, L, H*Dh)
    return x.transpose(1, 2).flatten(2)


class JointAttention(FusableProjections):
    def __init__(self, dim: int, heads: int, qk_norm: str, added_kv: bool, pre_only: bool) -> None:
        super().__init__()
        self.heads = heads
        head_dim = dim // heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.declare_group("to_qkv", ("to_q", "to_k", "to_v"))
        self.norm_q = qk_norm_layer(qk_norm, head_dim)
        self.norm_k = qk_norm_layer(qk_norm, head_dim)
        self.to_out = None if pre_only else nn.ModuleList([nn.Linear(dim, dim)])
        self.added_kv = added_kv
        if added_kv:
            self.add_q_proj = nn.Linear(dim, dim)
            self.add_k_proj = nn.Linear(dim, dim)
            self.add_v_proj = nn.Linear(dim, dim)
            self.declare_group("add_qkv_proj", ("add_q_proj", "add_k_proj", "add_v_proj"))
            # The reference always uses RMSNorm for the text stream's q/k, whatever `qk_norm` says.
            self.norm_added_q = nn.RMSNorm(head_dim, eps=1e-6)
            self.norm_added_k = nn.RMSNorm(head_dim, eps=1e-6)
            self.to_add_out = nn.Linear(dim, dim)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (B, L, D) -> q, k, v: (B, H, L, Dh), q and k normalised, no RoPE yet."""
        q, k, v = (split_heads(t, self.heads) for t in self.project("to_qkv", x))
        return self.norm_q(q), self.norm_k(k), v

    def added_qkv(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Context-stream projections of a dual block: ctx (B, L, D) -> (B, H, L, Dh) each."""
        q, k, v = (split_heads(t, self.heads) for t in self.project("add_qkv_proj", ctx))
        return self.norm_added_q(q), self.norm_added_k(k), v

    def text_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Self-attention K/V weights applied to text (the paper's shared cross-attention): (B, H, Lt, Dh)."""
        wk, bk = self.member_weight("to_qkv", 1)
        wv, bv = self.member_weight("to_qkv", 2)
        k = split_heads(nn.functional.linear(text, wk, bk), self.heads)
        v = split_heads(nn.functional.linear(text, wv, bv), self.heads)
        return self.norm_k(k), v
