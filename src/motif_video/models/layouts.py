"""Conversion between the two Shared Cross-Attention checkpoint layouts.

shared -> diffusers is exact (up to normalisation epsilons) when the query LayerNorm has zero bias:
    attn.norm_q(LN(W a + b)) with LN(y) = w * (y - mean(y)) / std(y) + 0
The per-token 1/std(y) is a positive scale that the per-head RMS (or Layer) QK-norm removes, and centring and
the LN weight are linear, so the query side folds into one Linear:  W' = diag(w) C W,  b' = diag(w) C b
with C = I - 11^T/D. K/V become copies of the block's self-attention `to_k`/`to_v` and its `norm_k`; the
query norm is the block's `norm_q`; the output projection is `cross_attn_out_proj`.
"""

from __future__ import annotations

import re

import torch

from motif_video.models.config import MotifVideoConfig

_SHARED_KEY = re.compile(r"^(?P<block>(?:single_)?transformer_blocks\.\d+)\.cross_attn_query_proj\.weight$")


def shared_to_diffusers(
    state: dict[str, torch.Tensor], config: MotifVideoConfig
) -> tuple[dict[str, torch.Tensor], MotifVideoConfig]:
    """Convert a shared-layout state dict (and config) to the diffusers layout; raise if a LN bias is nonzero."""
    out = dict(state)
    blocks = [m.group("block") for k in state if (m := _SHARED_KEY.match(k))]
    for block in blocks:
        proj_w = out.pop(f"{block}.cross_attn_query_proj.weight").double()
        proj_b = out.pop(f"{block}.cross_attn_query_proj.bias").double()
        ln_w = out.pop(f"{block}.cross_attn_query_norm.weight").double()
        ln_b = out.pop(f"{block}.cross_attn_query_norm.bias")
        if ln_b.abs().max() > 0:
            raise ValueError(
                f"{block}.cross_attn_query_norm.bias is nonzero: the diffusers layout has no query LayerNorm, "
                "so this model cannot be converted exactly"
            )
        dim = proj_w.shape[0]
        centre = torch.eye(dim, dtype=torch.float64) - 1.0 / dim
        fold = ln_w[:, None] * centre
        dtype = state[f"{block}.cross_attn_out_proj.weight"].dtype
        out[f"{block}.cross_attn.to_q.weight"] = (fold @ proj_w).to(dtype)
        out[f"{block}.cross_attn.to_q.bias"] = (fold @ proj_b).to(dtype)
        for name in ("to_k", "to_v"):
            for kind in ("weight", "bias"):
                out[f"{block}.cross_attn.{name}.{kind}"] = state[f"{block}.attn.{name}.{kind}"].clone()
        for key, value in state.items():  # QK-norm parameters (weight, and bias for LayerNorm QK-norm)
            for norm in ("norm_q", "norm_k"):
                if key.startswith(f"{block}.attn.{norm}."):
                    out[key.replace(".attn.", ".cross_attn.", 1)] = value.clone()
        for kind in ("weight", "bias"):
            out[f"{block}.cross_attn.to_out.0.{kind}"] = out.pop(f"{block}.cross_attn_out_proj.{kind}")
    return out, config.replace(cross_attention_layout="diffusers")
