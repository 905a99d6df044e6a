"""The two transformer blocks: dual-stream (MMDiT) and single-stream (Flux parallel), AdaLN-Zero.

Streams are (x, ctx): x are the N video tokens; ctx are [image; text] tokens in encoder blocks, and the
encoder's final video tokens in DDT decoder blocks (which reuse the single-stream block with no mask and no
cross-attention). RoPE rotates x only.
"""

from __future__ import annotations

import torch
from torch import nn

from motif_video.models.attention import attention
from motif_video.models.cross_attention import CrossAttention, add_shared_cross_attention, shared_cross_attention
from motif_video.models.joint_attention import AttentionContext, JointAttention, merge_heads
from motif_video.models.modulation import AdaLNZero, AdaLNZeroSingle, modulate
from motif_video.models.rope import apply_rope, apply_rope_prefix


class FeedForward(nn.Module):
    """Linear(D -> r*D), GELU(tanh), Linear(r*D -> D) (keys `net.0.proj`, `net.2`)."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.net = nn.ModuleList([_GeluProj(dim, hidden), nn.Identity(), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class _GeluProj(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.proj(x), approximate="tanh")


def _make_cross_attention(block: nn.Module, dim: int, heads: int, qk_norm: str, layout: str | None) -> None:
    """Attach Shared Cross-Attention in the given checkpoint layout (None: the block has none)."""
    block.cross_layout = layout
    block.cross_attn = None
    if layout == "diffusers":
        block.cross_attn = CrossAttention(dim, heads, qk_norm)
    elif layout == "shared":
        add_shared_cross_attention(block, dim)


class DualStreamBlock(nn.Module):
    """Separate AdaLN, projections and FFNs per stream; one joint attention (key prefix `transformer_blocks`)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: str, cross_layout: str | None) -> None:
        super().__init__()
        self.norm1 = AdaLNZero(dim)
        self.norm1_context = AdaLNZero(dim)
        self.attn = JointAttention(dim, heads, qk_norm, added_kv=True, pre_only=False)
        _make_cross_attention(self, dim, heads, qk_norm, cross_layout)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, mlp_ratio)
        self.ff_context = FeedForward(dim, mlp_ratio)

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor, temb: torch.Tensor, actx: AttentionContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D), ctx: (B, Lc, D), temb: (B, D) -> updated (x, ctx)."""
        n = x.shape[1]
        nx, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(x, temb)
        nc, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(ctx, temb)

        q, k, v = self.attn.qkv(nx)
        q, k = apply_rope(q, actx.rope_cos, actx.rope_sin), apply_rope(k, actx.rope_cos, actx.rope_sin)
        cq, ck, cv = self.attn.added_qkv(nc)
        out = merge_heads(
            attention(torch.cat((q, cq), 2), torch.cat((k, ck), 2), torch.cat((v, cv), 2), actx.joint_mask)
        )
        a = self.attn.to_out[0](out[:, :n])
        a_ctx = self.attn.to_add_out(out[:, n:])

        x = x + a * gate_msa[:, None]
        if self.cross_layout is not None:
            text = nc[:, actx.image_len :]
            if self.cross_layout == "diffusers":
                x = x + self.cross_attn(a, text, actx)
            else:
                tk, tv = self.attn.text_kv(text)
                x = x + shared_cross_attention(self, self.attn, a, tk, tv, actx)
        ctx = ctx + a_ctx * c_gate_msa[:, None]

        x = x + gate_mlp[:, None] * self.ff(modulate(self.norm2(x), shift_mlp, scale_mlp))
        ctx = ctx + c_gate_mlp[:, None] * self.ff_context(modulate(self.norm2_context(ctx), c_shift_mlp, c_scale_mlp))
        return x, ctx


class SingleStreamBlock(nn.Module):
    """Parallel attention + MLP over [x; ctx] (key prefix `single_transformer_blocks`)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, qk_norm: str, cross_layout: str | None) -> None:
        super().__init__()
        mlp_dim = int(dim * mlp_ratio)
        self.attn = JointAttention(dim, heads, qk_norm, added_kv=False, pre_only=True)
        _make_cross_attention(self, dim, heads, qk_norm, cross_layout)
        self.norm = AdaLNZeroSingle(dim)
        self.proj_mlp = nn.Linear(dim, mlp_dim)
        self.proj_out = nn.Linear(dim + mlp_dim, dim)

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor, temb: torch.Tensor, actx: AttentionContext
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D), ctx: (B, Lc, D), temb: (B, D) -> updated (x, ctx)."""
        n = x.shape[1]
        h = torch.cat((x, ctx), dim=1)
        nh, gate = self.norm(h, temb)
        mlp = nn.functional.gelu(self.proj_mlp(nh), approximate="tanh")

        q, k, v = self.attn.qkv(nh)
        q = apply_rope_prefix(q, actx.rope_cos, actx.rope_sin)
        k = apply_rope_prefix(k, actx.rope_cos, actx.rope_sin)
        a = merge_heads(attention(q, k, v, actx.joint_mask))

        if self.cross_layout is not None:
            a_video = a[:, :n]
            if self.cross_layout == "diffusers":
                cross = self.cross_attn(a_video, nh[:, n + actx.image_len :], actx)
            else:
                # The text K/V of the shared layout are this attention's own text K/V: reuse them.
                text_start = n + actx.image_len
                cross = shared_cross_attention(
                    self, self.attn, a_video, k[:, :, text_start:], v[:, :, text_start:], actx
                )
            a = torch.cat((a_video + cross, a[:, n:]), dim=1)

        h = h + gate[:, None] * self.proj_out(torch.cat((a, mlp), dim=2))
        return h[:, :n], h[:, n:]
