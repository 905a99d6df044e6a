"""`sampler.denoise`: the loop is the Euler formula, batching the guidance passes changes nothing, hooks steer it."""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from motif_video.core.flow import flow_sigmas, to_model_timestep
from motif_video.pipeline.guidance import GuidanceConfig
from motif_video.pipeline.sampler import Condition, denoise
from motif_video.pipeline.schedule import set_scheduler_sigmas, unshifted_scheduler

SHAPE = (2, 16, 2, 4, 4)  # (B, C, F', h, w)


def _scheduler(steps: int = 4) -> FlowMatchEulerDiscreteScheduler:
    scheduler = unshifted_scheduler(FlowMatchEulerDiscreteScheduler())
    set_scheduler_sigmas(scheduler, flow_sigmas(steps, 3.0), "cpu")
    return scheduler


def _condition(value: float, length: int = 3) -> Condition:
    text = torch.full((SHAPE[0], length, 8), value)
    mask = torch.ones(SHAPE[0], length, dtype=torch.bool)
    return Condition(text, mask, torch.zeros(SHAPE[0], 17, *SHAPE[2:]))


def _model(x: torch.Tensor, t: torch.Tensor, c: Condition) -> torch.Tensor:
    """A velocity that depends on the state, the time and the (masked) text."""
    text = (c.text * c.mask[..., None]).sum(dim=(1, 2)) / c.mask.sum(dim=1)
    return 0.5 * x + (t / 1000 + text).view(-1, 1, 1, 1, 1)


def _noise() -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))


def test_denoise_is_the_euler_formula():
    scheduler = _scheduler()
    sigmas = scheduler.sigmas.clone()  # (N + 1,), ending in 0
    got = denoise(_model, _noise(), scheduler, _condition(1.0))
    x = _noise()
    for i in range(len(sigmas) - 1):
        t = to_model_timestep(sigmas[i]).expand(SHAPE[0])
        x = x + (sigmas[i + 1] - sigmas[i]) * _model(x, t, _condition(1.0))
    assert torch.equal(got, x)


def test_batched_guidance_equals_two_forwards():
    cond, uncond = _condition(1.0), _condition(-1.0, length=5)  # different lengths: the batch pads the text
    cfg = GuidanceConfig(method="cfg", scale=2.0)
    batched = denoise(_model, _noise(), _scheduler(), cond, uncond, cfg)
    separate = denoise(_model, _noise(), _scheduler(), cond, uncond, cfg, batch_guidance=False)
    assert torch.equal(batched, separate)
    assert not torch.equal(batched, denoise(_model, _noise(), _scheduler(), cond))  # guidance did something


def test_step_end_edits_the_state_and_stop_ends_the_loop():
    seen = []

    def step_end(i, t, latents, cond, uncond):
        seen.append(i)
        return torch.zeros_like(latents), cond, uncond

    out = denoise(_model, _noise(), _scheduler(), _condition(1.0), step_end=step_end, stop=lambda: len(seen) == 2)
    assert seen == [0, 1] and torch.equal(out, torch.zeros(SHAPE))
