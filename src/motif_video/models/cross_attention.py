"""Shared Cross-Attention: video queries attend to the text tokens only (image tokens excluded).

Two checkpoint layouts exist, and each runs exactly as its original does:

- `shared` (paper / original code; keys `cross_attn_query_proj`, `cross_attn_query_norm`,
  `cross_attn_out_proj` on the block):
      q = attn.norm_q(LayerNorm(Linear(a)))  -> RoPE          a: the block's video attention output
      k = attn.norm_k(attn.to_k(text)),  v = attn.to_v(text)  (the block's own self-attention K/V weights)
      out = Linear(SDPA(q, k, v, text_mask)), the Linear zero-initialised
  In single-stream blocks these K/V are exactly the text part of the block's self-attention K/V, so they are
  reused, not recomputed.
- `diffusers` (keys `cross_attn.{to_q,to_k,to_v,norm_q,norm_k,to_out.0}`): a separate attention module
  with its own q/k/v/out weights and QK-norms, query from the same `a`, RoPE on q only, no query LayerNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from motif_video.models.attention import attention
from motif_video.models.fused_linear import FusableProjections
from motif_video.models.joint_attention import AttentionContext, merge_heads, qk_norm_layer, split_heads
from motif_video.models.rope import apply_rope


class CrossAttention(FusableProjections):
    """diffusers layout: its own projections (key prefix `cross_attn`)."""

    def __init__(self, dim: int, heads: int, qk_norm: str) -> None:
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.declare_group("to_kv", ("to_k", "to_v"))
        self.norm_q = qk_norm_layer(qk_norm, dim // heads)
        self.norm_k = qk_norm_layer(qk_norm, dim // heads)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, a: torch.Tensor, text: torch.Tensor, actx: AttentionContext) -> torch.Tensor:
        """a: (B, N, D) video attention output; text: (B, Lt, D) normalised text tokens -> (B, N, D)."""
        q = apply_rope(self.norm_q(split_heads(self.to_q(a), self.heads)), actx.rope_cos, actx.rope_sin)
        k, v = (split_heads(t, self.heads) for t in self.project("to_kv", text))
        out = attention(q, self.norm_k(k), v, actx.text_mask)
        return self.to_out[0](merge_heads(out))


def add_shared_cross_attention(block: nn.Module, dim: int) -> None:
    """Give a block the paper layout's query side; its keys sit on the block itself."""
    block.cross_attn_query_proj = nn.Linear(dim, dim)
    block.cross_attn_query_norm = nn.LayerNorm(dim, eps=1e-6)
    block.cross_attn_out_proj = nn.Linear(dim, dim)


def shared_cross_attention(
    block: nn.Module,
    attn: nn.Module,
    a: torch.Tensor,
    text_k: torch.Tensor,
    text_v: torch.Tensor,
    actx: AttentionContext,
) -> torch.Tensor:
    """Paper layout. a: (B, N, D); text_k, text_v: (B, H, Lt, Dh), already through attn.to_k/norm_k, to_v."""
    q = block.cross_attn_query_norm(block.cross_attn_query_proj(a))
    q = apply_rope(attn.norm_q(split_heads(q, attn.heads)), actx.rope_cos, actx.rope_sin)
    out = attention(q, text_k, text_v, actx.text_mask)
    return block.cross_attn_out_proj(merge_heads(out))
