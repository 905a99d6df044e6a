"""The analytic FLOP count against torch's own counter, TREAD savings, and the 2B model's cost table."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from motif_video import MotifVideoTransformer, get_preset
from motif_video.models.routing import random_route
from motif_video.training.flops import (
    FlopCount,
    forward_flops,
    kept_tokens,
    mfu,
    peak_flops_for,
    step_flops_fn,
    training_step_flops,
)

GRID = (3, 8, 8)  # latent F', H', W' -> 3 * 4 * 4 = 48 video tokens
N = 48
LATENT_480P_49 = dict(latent_frames=13, latent_height=60, latent_width=104)  # 832x480x49: 20,280 tokens
SUGGESTED_ROUTE = (2, 24, 0.5)  # encoder blocks 2..23, half the video tokens


def _inputs(config, masked: bool):
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :5], mask[1, :3] = True, True  # trimmed to 5 text tokens inside the model
    return dict(
        hidden_states=torch.randn(2, config.in_channels, *GRID, generator=g),
        timestep=torch.rand(2, generator=g) * 1000,
        encoder_hidden_states=torch.randn(2, 8, config.text_embed_dim, generator=g),
        encoder_attention_mask=mask if masked else None,
        image_embeds=torch.randn(2, 4, config.image_embed_dim, generator=g),
    )


def _torch_count(model, inputs, route, backward=False) -> dict[str, int]:
    # The default CPU SDPA kernel (`_scaled_dot_product_flash_attention_for_cpu`) has no FlopCounterMode formula
    # in torch 2.13, so attention would be invisible; the math backend decomposes it into counted bmm's.
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter, torch.set_grad_enabled(backward):
        out = model(**inputs, route=route).sample
        if backward:
            out.square().mean().backward()
    counts = {str(op).removeprefix("aten."): n for op, n in counter.get_flop_counts()["Global"].items()}
    return counts | {"total": counter.get_total_flops()}


@pytest.mark.parametrize(
    "preset, masked, span",
    [
        ("tiny", False, None),
        ("tiny", True, None),
        ("tiny", False, (1, 5, 0.5)),  # dual + encoder single + into the decoder
        ("tiny", True, (3, 6, 0.3)),  # encoder single + the whole decoder
        ("tiny", True, (0, 6, 0.6)),  # every block
        ("tiny-shared", False, None),
        ("tiny-shared", True, (1, 5, 0.5)),
        ("tiny-shared", True, (4, 6, 0.5)),  # decoder only
    ],
)
def test_forward_matches_torch_flop_counter(preset, masked, span):
    model = MotifVideoTransformer.from_preset(preset).eval()
    inputs = _inputs(model.config, masked)
    route = None if span is None else random_route(2, N, span[2], span[0], span[1])
    counted = _torch_count(model, inputs, route)
    ours = forward_flops(
        model.config,
        batch=2,
        latent_frames=GRID[0],
        latent_height=GRID[1],
        latent_width=GRID[2],
        text_len=5 if masked else 8,
        image_len=4,
        route=span,
    )
    # Linears run as addmm (mm where the input is a strided view), patchify as a convolution, attention as bmm.
    linear = counted["addmm"] + counted.get("mm", 0) + counted["convolution"]
    assert ours.linear == linear  # exact: same shapes, same 2*M*N*K rule
    assert ours.attention == counted["bmm"]
    assert ours.elementwise == 0 and ours.total == ours.matmul == sum(p.total for p in ours.by_kind.values())


def test_training_step_is_three_forwards():
    model = MotifVideoTransformer.from_preset("tiny")
    inputs = _inputs(model.config, masked=True)
    counted = _torch_count(model, inputs, random_route(2, N, 0.5, 1, 5), backward=True)["total"]
    kw = dict(batch=2, latent_frames=3, latent_height=8, latent_width=8, text_len=5, image_len=4, route=(1, 5, 0.5))
    ours = training_step_flops(model.config, **kw)
    # 3x forward is the convention; torch skips the input gradients of the first layers (latents, sinusoid and
    # text need none), about 1% of this tiny model and far less at scale.
    assert counted <= ours.total <= 1.02 * counted
    fwd = forward_flops(model.config, **kw)
    recompute = training_step_flops(model.config, **kw, checkpointing=True)
    blocks = sum(fwd.by_kind[k].total for k in ("dual", "single", "decoder"))
    assert recompute.total == 3 * fwd.total + blocks


@pytest.mark.parametrize("num_tokens", [1, 7, 48, 20_280])
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.999])
def test_kept_tokens_matches_random_route(num_tokens, ratio):
    assert kept_tokens(num_tokens, ratio) == random_route(1, num_tokens, ratio, 0, 1).keep.shape[1]


def test_route_invariants():
    config = get_preset("motif-video-2b")
    kw = dict(batch=1, text_len=512, **LATENT_480P_49)
    dense = forward_flops(config, **kw)
    assert forward_flops(config, **kw, route=(0, config.num_blocks, 0.0)).total == dense.total  # keeps all
    # Routing the decoder alone at ratio 0.5 (N even) quarters its attention (2K x 2K with K = N/2), halves its
    # token-proportional linears, and leaves everything else alone.
    decoder_only = forward_flops(config, **kw, route=(config.num_encoder_blocks, config.num_blocks, 0.5))
    assert decoder_only.by_kind["decoder"].attention * 4 == dense.by_kind["decoder"].attention
    assert decoder_only.by_kind["decoder"].linear < 0.51 * dense.by_kind["decoder"].linear
    for kind in ("embed", "dual", "single", "final"):
        assert decoder_only.by_kind[kind] == dense.by_kind[kind]
    with pytest.raises(ValueError, match="route span"):
        forward_flops(config, **kw, route=(5, 40, 0.5))


def test_official_2b_at_832x480x49():
    config = get_preset("motif-video-2b")
    fwd = forward_flops(config, batch=1, text_len=512, **LATENT_480P_49)
    attention_share = fwd.attention / fwd.total
    decoder_attention = fwd.by_kind["decoder"].attention / fwd.total
    print(
        f"\n2B 832x480x49, text 512: forward {fwd.total:.3e} FLOPs (linear {fwd.linear:.3e}, attention "
        f"{fwd.attention:.3e} = {attention_share:.1%}); decoder {fwd.by_kind['decoder'].total / fwd.total:.1%} of "
        f"the total, its attention {decoder_attention:.1%}"
    )
    # The reference cost table: 2.0e14 per forward, 75% attention, decoder attention 38% of the total.
    assert 1.9e14 < fwd.total < 2.2e14
    assert 0.72 < attention_share < 0.78
    assert 0.36 < decoder_attention < 0.40
    big = forward_flops(config, batch=1, text_len=512, latent_frames=31, latent_height=92, latent_width=160)
    assert big.total == pytest.approx(5.1e15, rel=0.03) and big.attention / big.total == pytest.approx(0.94, abs=0.01)
    # Elementwise work is small next to the matmuls.
    with_ew = forward_flops(config, batch=1, text_len=512, elementwise=True, **LATENT_480P_49)
    assert with_ew.matmul == fwd.total and 0 < with_ew.elementwise < 0.02 * fwd.total
    assert forward_flops(config, batch=2, text_len=512, **LATENT_480P_49).total == 2 * fwd.total


def test_suggested_route_saves_about_27_percent():
    config = get_preset("motif-video-2b")
    for checkpointing in (False, True):
        kw = dict(batch=1, text_len=512, checkpointing=checkpointing, **LATENT_480P_49)
        dense = training_step_flops(config, **kw).total
        routed = training_step_flops(config, **kw, route=SUGGESTED_ROUTE).total
        saving = 1 - routed / dense
        print(f"\nTREAD {SUGGESTED_ROUTE}, checkpointing={checkpointing}: {dense:.3e} -> {routed:.3e} (-{saving:.1%})")
        assert saving == pytest.approx(0.27, abs=0.01)  # the report: about 27% fewer FLOPs per step


def test_trainer_hook():
    @dataclass(frozen=True)
    class Route:  # as trainer.RouteConfig
        start: int
        end: int
        ratio: float = 0.5

    config = get_preset("motif-video-2b")
    hook = step_flops_fn(config, checkpointing=True)
    kw = dict(batch=2, text_len=77, route=(2, 24, 0.5), checkpointing=True)
    expected = training_step_flops(config, **kw, **LATENT_480P_49)
    assert hook((2, 16, 13, 60, 104), 77, 0, Route(2, 24)) == expected.matmul
    assert hook(torch.Size([2, 16, 13, 60, 104]), 77, 0, (2, 24, 0.5)) == expected.matmul


def test_flop_count_arithmetic():
    a = FlopCount(1, 2, 3, {"dual": FlopCount(1, 2, 3)})
    b = FlopCount(10, 20, 0, {"decoder": FlopCount(10, 20, 0)})
    s = a + b
    assert (s.linear, s.attention, s.elementwise, s.total, s.matmul) == (11, 22, 3, 36, 33)
    assert list(s.by_kind) == ["dual", "decoder"] and s.scaled(3).by_kind["decoder"].total == 90
    assert s.only(("decoder",)).total == 30


def test_mfu_and_peaks():
    assert mfu(989e12 * 0.4, 1.0, 989e12) == pytest.approx(0.4)
    assert mfu(1e12, 1.0, None) is None
    assert peak_flops_for("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops_for("NVIDIA H100 PCIe") == 756e12
    assert peak_flops_for("NVIDIA H200") == 989e12
    assert peak_flops_for("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for("Some Other GPU") is None
    assert peak_flops_for("cpu") is None and peak_flops_for(torch.device("cpu")) is None
