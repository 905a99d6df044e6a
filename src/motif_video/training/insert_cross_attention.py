"""Insert Shared Cross-Attention into a trained model mid-run, with a zero-initialised output.

Motif-Video 2B (arXiv 2604.16503, §4) adds Shared Cross-Attention in a late curriculum stage (the 360p stage after
720p). Its output projection starts at zero, so the model with the new modules computes exactly what it computed
before, and training grows the new path from there (the DiT zero-init argument).

`insert_shared_cross_attention(model)` gives every single-stream ENCODER block (not the DDT decoder; optionally the
dual-stream blocks too) the cross-attention of the model's checkpoint layout and updates `model.config`, so the
model saves, exports and reloads as one that always had it. Fresh weights follow `init_weights`: xavier-uniform
Linears from `generator`, unit norms, zero output projection.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from motif_video.models.blocks import _make_cross_attention
from motif_video.models.transformer import init_module


def has_shared_cross_attention(model: nn.Module) -> bool:
    return bool(model.config.enable_text_cross_attention_single)


@torch.no_grad()
def insert_shared_cross_attention(
    model: nn.Module, *, dual: bool = False, generator: torch.Generator | None = None
) -> list[str]:
    """Add zero-output cross-attention to the encoder single blocks (and dual blocks if `dual`).

    Returns the names of the new parameters. Call before wrapping for FSDP / building the optimizer."""
    config = model.config
    if config.enable_text_cross_attention_single and (config.enable_text_cross_attention_dual or not dual):
        raise ValueError("the model already has Shared Cross-Attention; insert it only once (check the stage config)")
    before = {name for name, _ in model.named_parameters()}
    dim, heads, layout = config.hidden_size, config.num_attention_heads, config.cross_attention_layout
    targets = (
        []
        if config.enable_text_cross_attention_single
        else list(model.single_transformer_blocks[: config.num_encoder_single_layers])
    )
    if dual and not config.enable_text_cross_attention_dual:
        targets += list(model.transformer_blocks)
    reference = next(model.parameters())
    for block in targets:
        _make_cross_attention(block, dim, heads, config.qk_norm, layout)
        new = block.cross_attn if layout == "diffusers" else block
        for name, module in new.named_modules():
            if layout == "shared" and not name.startswith("cross_attn_"):
                continue
            init_module(module, generator)
        out = block.cross_attn.to_out[0] if layout == "diffusers" else block.cross_attn_out_proj
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        block.to(device=reference.device, dtype=reference.dtype)
    model.config = dataclasses.replace(
        config,
        enable_text_cross_attention_single=True,
        enable_text_cross_attention_dual=config.enable_text_cross_attention_dual or dual,
    )
    return sorted({name for name, _ in model.named_parameters()} - before)


__all__ = ["has_shared_cross_attention", "insert_shared_cross_attention"]
