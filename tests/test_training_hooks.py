"""Training-side contracts: TREAD routing, REPA taps, activation checkpointing, zero-velocity init."""

from __future__ import annotations

import pytest
import torch

from model_helpers import make_inputs, random_ours
from motif_video import MotifVideoTransformer, TokenRoute, get_preset, random_route
from motif_video.models.routing import gather_tokens, scatter_tokens
from motif_video.training.parallel import ParallelConfig, Recomputed, apply_activation_checkpointing, parallelize

TINY = get_preset("tiny")
NUM_TOKENS = 5 * 3 * 5  # grid (5, 6, 10) patchified by (1, 2, 2)


def test_gather_then_scatter_is_identity():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 8, generator=g)
    route = random_route(3, 20, ratio=0.6, start=0, end=1, generator=g)
    assert route.keep.shape == (3, 8)
    assert torch.equal(route.keep, route.keep.sort(dim=1).values)
    assert torch.equal(scatter_tokens(x, route.keep, gather_tokens(x, route.keep)), x)
    # and scatter writes exactly the kept positions
    marked = scatter_tokens(torch.zeros_like(x), route.keep, torch.ones(3, 8, 8))
    assert torch.equal(marked[..., 0].sum(1), torch.full((3,), 8.0))


@pytest.mark.parametrize("span", [(0, 2), (1, 5), (3, 6), (4, 6), (2, 4), (0, 6)], ids=str)
def test_route_keeping_every_token_equals_dense(span):
    model = random_ours(TINY)
    inputs = make_inputs(TINY, batch=2, image_len=2)
    keep_all = torch.arange(NUM_TOKENS).expand(2, -1)
    with torch.no_grad():
        dense = model(**inputs).sample
        routed = model(**inputs, route=TokenRoute(*span, keep_all)).sample
    torch.testing.assert_close(routed, dense, rtol=0, atol=1e-5)


@pytest.mark.parametrize("span", [(0, 2), (1, 5), (4, 6), (3, 6)], ids=str)
def test_routed_forward_and_backward(span):
    model = random_ours(TINY)
    inputs = make_inputs(TINY, batch=2, image_len=2)
    route = random_route(
        2, NUM_TOKENS, ratio=0.5, start=span[0], end=span[1], generator=torch.Generator().manual_seed(1)
    )
    out = model(**inputs, route=route, repa_block=span[0])
    assert out.sample.shape == (2, 16, 5, 6, 10)
    assert out.repa_features.shape == (2, route.keep.shape[1], TINY.hidden_size)
    out.sample.square().mean().backward()
    assert all(p.grad is not None for p in model.transformer_blocks.parameters())


def test_dropped_tokens_skip_the_span_unchanged():
    """With a route over all encoder blocks, a dropped token's encoder output is its patch embedding."""
    model = random_ours(TINY)
    inputs = make_inputs(TINY, batch=1, valid=(5,))
    route = random_route(1, NUM_TOKENS, 0.5, 0, TINY.num_encoder_blocks, generator=torch.Generator().manual_seed(2))
    last_encoder = TINY.num_encoder_blocks - 1
    with torch.no_grad():
        feats = model(**inputs, route=route, repa_block=last_encoder - 1).repa_features  # inside the span
        after = model(**inputs, route=route, repa_block=last_encoder).repa_features  # scattered back
        patches = model.x_embedder(inputs["hidden_states"])
    dropped = torch.ones(NUM_TOKENS, dtype=torch.bool)
    dropped[route.keep[0]] = False
    assert feats.shape[1] == route.keep.shape[1] and after.shape[1] == NUM_TOKENS
    torch.testing.assert_close(after[0, dropped], patches[0, dropped], rtol=0, atol=0)
    assert (after[0, ~dropped] - patches[0, ~dropped]).abs().amax(dim=-1).min() > 0  # kept tokens were processed


def test_repa_tap_without_route_is_the_dense_block_output():
    model = random_ours(TINY)
    inputs = make_inputs(TINY, batch=2)
    with torch.no_grad():
        dense = model(**inputs, repa_block=3)
        plain = model(**inputs)
    assert dense.repa_features.shape == (2, NUM_TOKENS, TINY.hidden_size)
    torch.testing.assert_close(dense.sample, plain.sample, rtol=0, atol=0)
    assert len(model(**inputs, repa_block=3, return_dict=False)) == 2


def test_activation_checkpointing_from_outside_gives_the_same_gradients_and_keeps_the_names():
    """`parallelize` checkpoints each block from outside the model: same gradients, bit for bit; same module and
    parameter names and state-dict keys; applying it twice is a no-op; without grad the blocks run plainly."""
    inputs = make_inputs(TINY, batch=2, image_len=2)
    route = random_route(2, NUM_TOKENS, 0.5, 1, 6, generator=torch.Generator().manual_seed(0))
    plain, checkpointed = random_ours(TINY), random_ours(TINY)
    parallelize(checkpointed, ParallelConfig(param_dtype="float32", activation_checkpointing=True), "cpu")
    apply_activation_checkpointing(checkpointed)
    assert all(isinstance(block, Recomputed) for block in checkpointed.blocks)
    assert [type(b).__mro__[2] for b in checkpointed.blocks] == [type(b) for b in plain.blocks]
    assert [n for n, _ in checkpointed.named_modules()] == [n for n, _ in plain.named_modules()]
    assert [n for n, _ in checkpointed.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert list(checkpointed.state_dict()) == list(plain.state_dict())
    for model in (plain, checkpointed):
        out = model(**inputs, route=route, repa_block=2)
        (out.sample.square().mean() + out.repa_features.square().mean()).backward()
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        assert torch.equal(p.grad, q.grad), name
    with torch.no_grad():
        assert torch.equal(checkpointed(**inputs).sample, plain(**inputs).sample)


def test_fresh_model_outputs_zero_velocity():
    model = MotifVideoTransformer.from_preset("tiny")
    shared = MotifVideoTransformer.from_preset("tiny-shared")
    inputs = make_inputs(TINY, batch=2, image_len=2)
    with torch.no_grad():
        for m in (model, shared):
            out = m(**inputs).sample
            assert out.abs().max() == 0
    for block in model.blocks:
        for name in ("norm1", "norm1_context", "norm"):
            if hasattr(block, name):
                assert getattr(block, name).linear.weight.abs().max() == 0
    # ...but it is not a dead model: the first block's attention is initialised
    assert model.transformer_blocks[0].attn.to_q.weight.abs().max() > 0


def test_fresh_model_trains():
    model = MotifVideoTransformer.from_preset("tiny")
    inputs = make_inputs(TINY, batch=2)
    model(**inputs).sample.sub(1.0).square().mean().backward()
    assert model.proj_out.weight.grad.abs().max() > 0


@pytest.mark.parametrize(
    "route, message",
    [
        (TokenRoute(3, 3, torch.zeros(2, 4, dtype=torch.long)), "start < end"),
        (TokenRoute(0, 99, torch.zeros(2, 4, dtype=torch.long)), "start < end"),
        (TokenRoute(0, 2, torch.zeros(3, 4, dtype=torch.long)), "batch=2"),
    ],
)
def test_bad_route_is_a_clear_error(route, message):
    model = random_ours(TINY)
    with pytest.raises(ValueError, match=message):
        model(**make_inputs(TINY, batch=2), route=route)
    with pytest.raises(ValueError, match="ratio"):
        random_route(2, 10, ratio=1.0, start=0, end=1)


def test_fuse_then_unfuse_restores_the_official_modules():
    model = random_ours(get_preset("tiny-shared"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = make_inputs(TINY, batch=2, image_len=2)
    with torch.no_grad():
        dense = model(**inputs).sample
        model.fuse_qkv_projections()
        assert not hasattr(model.transformer_blocks[0].attn, "to_q")
        fused = model(**inputs).sample
        model.unfuse_qkv_projections()
        unfused = model(**inputs).sample
    assert hasattr(model.transformer_blocks[0].attn, "to_q")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    torch.testing.assert_close(fused, dense, rtol=0, atol=1e-5)
    torch.testing.assert_close(unfused, dense, rtol=0, atol=0)
