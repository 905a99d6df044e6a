"""The sampler schedule and guidance as pure functions: exact formulas, and equality with diffusers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AdaptiveProjectedGuidance,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.guiders.adaptive_projected_guidance import MomentumBuffer, normalized_guidance

from motif_video.core.flow import flow_sigmas, shift_sigmas
from motif_video.pipeline.guidance import (
    GuidanceConfig,
    GuidanceState,
    adaptive_projected_guidance,
    classifier_free_guidance,
    combine,
)
from motif_video.pipeline.schedule import resolve_sigmas, set_scheduler_sigmas, unshifted_scheduler


def test_flow_sigmas_formula():
    sigmas = flow_sigmas(4, 15.0)
    base = np.array([1.0, 0.75, 0.5, 0.25])
    np.testing.assert_allclose(sigmas, 15 * base / (1 + 14 * base), rtol=0, atol=1e-15)
    assert sigmas[0] == 1.0
    np.testing.assert_array_equal(shift_sigmas(base, 1.0), base)


def test_resolve_custom_schedules():
    np.testing.assert_allclose(resolve_sigmas(None, 8.0, timesteps=[900, 500, 100]), [0.9, 0.5, 0.1])
    np.testing.assert_array_equal(resolve_sigmas(None, 8.0, sigmas=[0.9, 0.2]), [0.9, 0.2])
    for bad in ([0.5, 0.9], [1.5, 0.2], [0.5, 0.0]):
        with pytest.raises(ValueError):
            resolve_sigmas(None, 8.0, sigmas=bad)
    with pytest.raises(ValueError, match="either"):
        resolve_sigmas(None, 1.0, sigmas=[0.5], timesteps=[500])
    with pytest.raises(ValueError, match="num_inference_steps=3"):
        resolve_sigmas(3, 1.0, sigmas=[0.5, 0.2])


@pytest.mark.parametrize(
    "shipped", [dict(shift=3.0), dict(use_dynamic_shifting=True), dict(shift=7.0, invert_sigmas=False)]
)
def test_euler_runs_our_sigmas_whatever_the_shipped_shift(shipped):
    """A shipped scheduler config's own shift (or dynamic shifting) must not change our schedule, and the
    Euler update is exactly x + (sigma_next - sigma) * v."""
    scheduler = unshifted_scheduler(FlowMatchEulerDiscreteScheduler(**shipped))
    sigmas = flow_sigmas(5, 15.0)
    timesteps = set_scheduler_sigmas(scheduler, sigmas, "cpu")
    np.testing.assert_allclose(scheduler.sigmas[:-1].numpy(), sigmas.astype(np.float32), rtol=0, atol=0)
    assert scheduler.sigmas[-1] == 0
    torch.testing.assert_close(timesteps, scheduler.sigmas[:-1] * 1000, rtol=0, atol=0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, generator=g)
    for i, t in enumerate(timesteps):
        v = torch.randn(2, 3, generator=g)
        expected = x + (scheduler.sigmas[i + 1] - scheduler.sigmas[i]) * v
        x = scheduler.step(v, t, x, return_dict=False)[0]
        torch.testing.assert_close(x, expected, rtol=0, atol=0)


@pytest.mark.parametrize(
    "scheduler",
    [
        FlowMatchEulerDiscreteScheduler(shift=5.0),
        UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=5.0, prediction_type="flow_prediction"),
        UniPCMultistepScheduler(),  # not even in flow mode: switched to it
        DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction"),
    ],
    ids=["euler", "unipc-flow", "unipc-default", "dpm++"],
)
def test_every_sampler_lands_on_the_data_under_the_exact_velocity(scheduler):
    """For a single data point x0 the exact flow velocity is v = (x - x0) / sigma; every sampler must land on
    x0 from pure noise, on our shifted schedule."""
    scheduler = unshifted_scheduler(scheduler)
    sigmas = flow_sigmas(8, 8.0)
    timesteps = set_scheduler_sigmas(scheduler, sigmas, "cpu")
    np.testing.assert_allclose(scheduler.sigmas[: len(sigmas)].numpy(), sigmas, atol=2e-6)
    g = torch.Generator().manual_seed(1)
    x0, x = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    for i, t in enumerate(timesteps):
        x = scheduler.step((x - x0) / scheduler.sigmas[i], t, x, return_dict=False)[0]
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


def test_karras_sigmas_are_refused():
    with pytest.raises(ValueError, match="use_karras_sigmas"):
        unshifted_scheduler(DPMSolverMultistepScheduler(use_karras_sigmas=True))


def _pair(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(2, 4, 3, 5, 6, generator=g)
    return cond, cond - 3.0 * torch.randn(2, 4, 3, 5, 6, generator=g)  # large diff: the norm threshold bites


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("original", [True, False])
def test_apg_equals_diffusers_over_steps(eta, original):
    config = GuidanceConfig(scale=8.0, norm_threshold=12.0, momentum=0.1, eta=eta, original_formulation=original)
    state, buffer = GuidanceState(), MomentumBuffer(0.1)
    for step in range(3):
        cond, uncond = _pair(step)
        ours = adaptive_projected_guidance(cond, uncond, config, state)
        ref = normalized_guidance(cond, uncond, 8.0, buffer, eta, 12.0, original, [-1, -2, -4])
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_apg_norm_is_per_latent_frame():
    """Scaling one latent frame's guidance must not change another frame's clipped update."""
    config = GuidanceConfig(scale=1.0, norm_threshold=1.0, momentum=0.0, eta=1.0, original_formulation=False)
    cond, uncond = _pair(5)
    out = adaptive_projected_guidance(cond, uncond, config, GuidanceState())
    uncond2 = uncond.clone()
    uncond2[:, :, 1] -= 100.0
    out2 = adaptive_projected_guidance(cond, uncond2, config, GuidanceState())
    torch.testing.assert_close(out[:, :, 0] - uncond[:, :, 0], out2[:, :, 0] - uncond2[:, :, 0])


def test_cfg_and_inactive_steps():
    cond, uncond = _pair(2)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, 5.0), uncond + 5.0 * (cond - uncond))
    config = GuidanceConfig(method="cfg", scale=5.0, original_formulation=False)
    torch.testing.assert_close(combine(cond, uncond, config, GuidanceState()), uncond + 5.0 * (cond - uncond))
    original = config.replace(original_formulation=True)
    torch.testing.assert_close(combine(cond, uncond, original, GuidanceState()), cond + 5.0 * (cond - uncond))
    assert combine(cond, None, config, GuidanceState()) is cond
    windowed = GuidanceConfig(start=0.25, stop=0.75)
    assert [windowed.active(i, 4) for i in range(4)] == [False, True, True, False]
    assert not GuidanceConfig(method="none").active(0, 4)
    assert not GuidanceConfig(scale=0.0).active(0, 4)  # original formulation: scale 0 = conditional only
    assert not GuidanceConfig(method="cfg", scale=1.0).active(0, 4)


def test_guider_config_round_trip():
    guider = AdaptiveProjectedGuidance(
        guidance_scale=8.0,
        adaptive_projected_guidance_momentum=0.1,
        adaptive_projected_guidance_rescale=12.0,
        adaptive_projected_guidance_norm_dim=[-1, -2, -4],
        eta=0.0,
        use_original_formulation=True,
    )
    config = GuidanceConfig.from_diffusers_config({"_class_name": "AdaptiveProjectedGuidance", **guider.config})
    assert config == GuidanceConfig(eta=0.0)
    back = config.to_diffusers_config()
    rebuilt = AdaptiveProjectedGuidance(**{k: v for k, v in back.items() if not k.startswith("_")})
    assert (
        GuidanceConfig.from_diffusers_config({"_class_name": "AdaptiveProjectedGuidance", **rebuilt.config}) == config
    )
    with pytest.raises(ValueError, match="unsupported guider"):
        GuidanceConfig.from_diffusers_config({"_class_name": "PerturbedAttentionGuidance"})
    with pytest.raises(ValueError, match="method"):
        GuidanceConfig(method="pag")
