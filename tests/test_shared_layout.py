"""The paper's shared-K/V layout: against the formula of the reference doc, and converted to diffusers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from model_helpers import assert_close_scaled, diffusers_kwargs, make_inputs, random_ours
from motif_video import MotifVideoTransformer, get_preset
from motif_video.models.joint_attention import AttentionContext
from motif_video.models.layouts import shared_to_diffusers
from motif_video.models.rope import rope_tables

SHARED = get_preset("tiny-shared")


def _rms(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def _rope(x, cos, sin):
    # x: (B, H, L, Dh), interleaved pairs rotate by the table angles
    x0, x1 = x[..., 0::2], x[..., 1::2]
    c, s = cos[..., 0::2], sin[..., 0::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x0 * c - x1 * s
    out[..., 1::2] = x0 * s + x1 * c
    return out


def _heads(x, h):
    return x.unflatten(-1, (h, -1)).transpose(1, 2)


def _single_block_by_formula(block, x, ctx, temb, cos, sin, text_mask, image_len):
    """The single-stream block with shared cross-attention, written from the reference doc, op by op."""
    h_count = block.attn.heads
    n = x.shape[1]
    h = torch.cat([x, ctx], 1)
    shift, scale, gate = F.linear(F.silu(temb), block.norm.linear.weight, block.norm.linear.bias).chunk(3, 1)
    nh = F.layer_norm(h, h.shape[-1:], eps=1e-6) * (1 + scale[:, None]) + shift[:, None]
    mlp = F.gelu(F.linear(nh, block.proj_mlp.weight, block.proj_mlp.bias), approximate="tanh")
    a = block.attn
    q = _rms(_heads(F.linear(nh, a.to_q.weight, a.to_q.bias), h_count), a.norm_q.weight)
    k = _rms(_heads(F.linear(nh, a.to_k.weight, a.to_k.bias), h_count), a.norm_k.weight)
    v = _heads(F.linear(nh, a.to_v.weight, a.to_v.bias), h_count)
    q = torch.cat([_rope(q[:, :, :n], cos, sin), q[:, :, n:]], 2)
    k = torch.cat([_rope(k[:, :, :n], cos, sin), k[:, :, n:]], 2)
    joint_mask = torch.cat([torch.ones(x.shape[0], n + image_len, dtype=torch.bool), text_mask], 1)
    attn_out = F.scaled_dot_product_attention(q, k, v, attn_mask=joint_mask[:, None, None]).transpose(1, 2).flatten(2)
    video = attn_out[:, :n]
    # Shared Cross-Attention: q = norm_q(LN(Linear(video))) -> RoPE; k = norm_k(to_k(text)); v = to_v(text)
    text = nh[:, n + image_len :]
    cq = F.layer_norm(
        F.linear(video, block.cross_attn_query_proj.weight, block.cross_attn_query_proj.bias),
        video.shape[-1:],
        block.cross_attn_query_norm.weight,
        block.cross_attn_query_norm.bias,
        eps=1e-6,
    )
    cq = _rope(_rms(_heads(cq, h_count), a.norm_q.weight), cos, sin)
    ck = _rms(_heads(F.linear(text, a.to_k.weight, a.to_k.bias), h_count), a.norm_k.weight)
    cv = _heads(F.linear(text, a.to_v.weight, a.to_v.bias), h_count)
    cross = F.scaled_dot_product_attention(cq, ck, cv, attn_mask=text_mask[:, None, None]).transpose(1, 2).flatten(2)
    video = video + F.linear(cross, block.cross_attn_out_proj.weight, block.cross_attn_out_proj.bias)
    attn_out = torch.cat([video, attn_out[:, n:]], 1)
    h = h + gate[:, None] * F.linear(torch.cat([attn_out, mlp], 2), block.proj_out.weight, block.proj_out.bias)
    return h[:, :n], h[:, n:]


def test_shared_single_block_matches_formula():
    model = random_ours(SHARED)
    block = model.single_transformer_blocks[0]
    assert block.cross_layout == "shared"
    assert block.cross_attn_query_norm.bias.abs().max() > 0  # the bias path is exercised
    g = torch.Generator().manual_seed(3)
    b, n, image_len, text_len, d = 2, 3 * 2 * 4, 2, 5, SHARED.hidden_size
    x, ctx, temb = (
        torch.randn(b, n, d, generator=g),
        torch.randn(b, image_len + text_len, d, generator=g),
        torch.randn(b, d, generator=g),
    )
    cos, sin = rope_tables((3, 2, 4), SHARED.rope_axes_dim, SHARED.rope_theta)
    text_mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    joint = torch.cat([torch.ones(b, n + image_len, dtype=torch.bool), text_mask], 1)
    with torch.no_grad():
        expected = _single_block_by_formula(block, x, ctx, temb, cos, sin, text_mask, image_len)
        for fused in (False, True):
            if fused:
                block.attn.fuse()
            actual = block(x, ctx, temb, AttentionContext(cos, sin, joint, text_mask, image_len))
            for got, want in zip(actual, expected):
                assert_close_scaled(got, want)


def test_shared_layout_model_keys_and_zero_init():
    model = MotifVideoTransformer.from_preset("tiny-shared")
    keys = set(model.state_dict())
    enc = SHARED.num_encoder_single_layers
    for i in range(SHARED.num_single_layers):
        has = f"single_transformer_blocks.{i}.cross_attn_query_proj.weight" in keys
        assert has == (i < enc)
        assert f"single_transformer_blocks.{i}.cross_attn.to_q.weight" not in keys
    assert model.single_transformer_blocks[0].cross_attn_out_proj.weight.abs().max() == 0


def test_shared_converted_to_diffusers_layout_runs_in_diffusers():
    from diffusers import MotifVideoTransformer3DModel

    ours = random_ours(SHARED)
    with torch.no_grad():
        for block in ours.single_transformer_blocks[: SHARED.num_encoder_single_layers]:
            block.cross_attn_query_norm.bias.zero_()
    state, config = shared_to_diffusers(ours.state_dict(), SHARED)
    ref = MotifVideoTransformer3DModel(**diffusers_kwargs(config)).eval()
    ref.load_state_dict(state, strict=True)
    ours_converted = MotifVideoTransformer(config).eval()
    ours_converted.load_state_dict(state, strict=True)
    inputs = make_inputs(SHARED, batch=2, valid=(7, 3), image_len=2)
    with torch.no_grad():
        expected = ours(**inputs, return_dict=False)[0]
        assert_close_scaled(ref(**inputs, return_dict=False)[0], expected)
        assert_close_scaled(ours_converted(**inputs, return_dict=False)[0], expected)


def test_conversion_refuses_nonzero_query_norm_bias():
    import pytest

    ours = random_ours(SHARED)
    with pytest.raises(ValueError, match="cross_attn_query_norm.bias is nonzero"):
        shared_to_diffusers(ours.state_dict(), SHARED)
