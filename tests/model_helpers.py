"""Shared test helpers: build our model and diffusers' reference with the same random weights.

A module of its own, not conftest.py: the lab's tests have a conftest too, and `from conftest import` would
reach whichever pytest loaded first."""

from __future__ import annotations

import socket

import pytest
import torch

from motif_video import MotifVideoConfig, MotifVideoTransformer, get_preset


def diffusers_kwargs(config: MotifVideoConfig) -> dict:
    return {k: v for k, v in config.to_dict().items() if not k.startswith("_")}


def random_reference(config: MotifVideoConfig, seed: int = 0, noise: float = 0.15):
    """diffusers' MotifVideoTransformer3DModel with every parameter randomised (nothing trivially zero)."""
    from diffusers import MotifVideoTransformer3DModel

    torch.manual_seed(seed)
    ref = MotifVideoTransformer3DModel(**diffusers_kwargs(config)).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * noise)
    return ref


def random_ours(config: MotifVideoConfig, seed: int = 0) -> MotifVideoTransformer:
    """Our model with every parameter random (shared layout included, which diffusers cannot build)."""
    torch.manual_seed(seed)
    model = MotifVideoTransformer(config).eval()
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.15)
    return model


def make_inputs(config: MotifVideoConfig, batch=2, grid=(5, 6, 10), text_len=7, valid=(7, 4), image_len=0, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, *grid, generator=g)
    t = torch.rand(batch, generator=g) * 1000
    text = torch.randn(batch, text_len, config.text_embed_dim, generator=g)
    mask = None
    if valid is not None:
        mask = torch.zeros(batch, text_len, dtype=torch.long)
        for i, n in enumerate(valid):
            mask[i, :n] = 1
    image = torch.randn(batch, image_len, config.image_embed_dim, generator=g) if image_len else None
    return dict(
        hidden_states=x, timestep=t, encoder_hidden_states=text, encoder_attention_mask=mask, image_embeds=image
    )


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-5) -> float:
    """max |a - e| <= rel * output scale (max |e|, at least 1)."""
    scale = max(expected.abs().max().item(), 1.0)
    err = (actual - expected).abs().max().item()
    assert err <= rel * scale, f"max abs error {err:.3e} > {rel:.0e} x scale {scale:.3f}"
    return err


@pytest.fixture(scope="session")
def tiny_config() -> MotifVideoConfig:
    return get_preset("tiny")


def free_port() -> int:
    """A free localhost TCP port for a torch.distributed rendezvous in multi-process tests."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
