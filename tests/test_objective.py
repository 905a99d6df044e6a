"""The rectified-flow objective: exact formulas and the conditioning invariants."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from motif_video.core.flow import interpolate
from motif_video.training.objective import (
    ObjectiveConfig,
    condition_channels,
    difference_loss,
    draw_i2v,
    draw_noise,
    draw_prompt_drop,
    drop_prompts,
    flow_loss,
    gaussian_blur_latent,
    sample_timesteps,
)


def _g(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_interpolation_and_target_are_the_flow_convention():
    x0, eps = torch.randn(3, 16, 2, 4, 4, generator=_g(0)), torch.randn(3, 16, 2, 4, 4, generator=_g(1))
    t = torch.tensor([0.0, 0.3, 1.0])
    xt, v = interpolate(x0, eps, t)
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[2], eps[2])
    torch.testing.assert_close(v, eps - x0)
    # x0 and eps are recovered from (x_t, v): the sampler's Euler step to t=0 lands on x0
    torch.testing.assert_close(xt - t.view(-1, 1, 1, 1, 1) * v, x0)
    assert flow_loss(v, v) == 0 and flow_loss(v, torch.zeros_like(v)) == pytest.approx(float((v**2).mean()))


def test_timestep_sampling():
    cfg = ObjectiveConfig()
    t = sample_timesteps(20000, cfg, _g())
    assert t.min() > 0 and t.max() < 1 and abs(float(t.median()) - 0.5) < 0.02
    torch.testing.assert_close(t, sample_timesteps(20000, cfg, _g()))  # deterministic by seed
    shifted = sample_timesteps(20000, ObjectiveConfig(shift=3.0), _g())
    assert float(shifted.median()) == pytest.approx(0.75, abs=0.02)  # 3*0.5/(1+2*0.5)
    uniform = sample_timesteps(20000, ObjectiveConfig(timestep_sampling="uniform"), _g())
    assert float(uniform.mean()) == pytest.approx(0.5, abs=0.01) and float(uniform.std()) == pytest.approx(
        0.2887, abs=0.01
    )
    with pytest.raises(ValueError):
        ObjectiveConfig(timestep_sampling="cosine")


def test_uniform_share_mixes_in_low_and_high_t():
    high = ObjectiveConfig(logit_mean=1.0, logit_std=1.2)
    plain = sample_timesteps(40000, high, _g())
    torch.testing.assert_close(plain, sample_timesteps(40000, dataclasses.replace(high, uniform_share=0.0), _g()))
    mixed = sample_timesteps(40000, dataclasses.replace(high, uniform_share=0.3), _g())
    torch.testing.assert_close(mixed, sample_timesteps(40000, dataclasses.replace(high, uniform_share=0.3), _g()))
    # P(t < 0.1) = 0.3 * 0.1 + 0.7 * P_logit-normal(t < 0.1) (0.4%): 3.3% against 0.4%
    assert float((plain < 0.1).float().mean()) == pytest.approx(0.004, abs=0.002)
    assert float((mixed < 0.1).float().mean()) == pytest.approx(0.3 * 0.1 + 0.7 * 0.004, abs=0.004)
    assert float(sample_timesteps(40000, dataclasses.replace(high, uniform_share=1.0), _g()).mean()) == pytest.approx(
        0.5, abs=0.01
    )
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="uniform_share"):
            ObjectiveConfig(uniform_share=bad)


def test_blur_is_per_sample_and_preserves_constants():
    x = torch.randn(2, 3, 2, 8, 8, generator=_g())
    out = gaussian_blur_latent(x, torch.tensor([0.0, 1.5]))
    torch.testing.assert_close(out[0], x[0])  # sigma 0: untouched
    assert out[1].std() < 0.8 * x[1].std()  # blurred
    const = torch.full((1, 2, 1, 6, 6), 3.0)
    torch.testing.assert_close(gaussian_blur_latent(const, torch.tensor([2.0])), const)
    torch.testing.assert_close(out[1].mean(), x[1].mean(), atol=0.05, rtol=0)


def test_condition_channels():
    first = torch.randn(3, 16, 1, 4, 4, generator=_g())
    cfg = ObjectiveConfig(blur_max=0.0)
    i2v = torch.tensor([True, False, True])
    out = condition_channels(first, (3, 16, 3, 4, 4), i2v, torch.tensor([0.2, 0.5, 0.9]), cfg)
    assert out.shape == (3, 17, 3, 4, 4)
    torch.testing.assert_close(out[0, :16, 0], first[0, :, 0])
    assert out[0, 16, 0].eq(1).all() and out[:, :, 1:].eq(0).all() and out[1].eq(0).all()
    # images (one latent frame) are never I2V; blur grows with t
    assert condition_channels(first, (3, 16, 1, 4, 4), i2v, torch.ones(3), cfg).eq(0).all()
    blurred = condition_channels(first, (3, 16, 3, 4, 4), i2v, torch.tensor([0.01, 0.5, 1.0]), ObjectiveConfig())
    err = [(blurred[k, :16, 0] - first[k, :, 0]).abs().mean() for k in (0, 2)]
    assert err[0] < 0.05 < err[1]


def test_i2v_draw_and_prompt_dropout():
    is_video = torch.tensor([True] * 500 + [False] * 500)
    i2v = draw_i2v(is_video, ObjectiveConfig(i2v_ratio=0.5), _g())
    assert not i2v[500:].any() and 200 < int(i2v[:500].sum()) < 300
    text, mask = torch.randn(4, 5, 8, generator=_g()), torch.ones(4, 5, dtype=torch.bool)
    null, null_mask = torch.zeros(7, 8), torch.tensor([True] + [False] * 6)
    same = drop_prompts(text, mask, null, null_mask, ObjectiveConfig(prompt_dropout=0.0), _g())
    assert same[0] is text
    dropped, dmask = drop_prompts(text, mask, null, null_mask, ObjectiveConfig(prompt_dropout=1.0), _g())
    assert dropped.shape == (4, 7, 8) and dmask.sum(dim=1).eq(1).all() and dropped.eq(0).all()


def test_i2v_samples_drop_their_prompt_at_their_own_rate():
    """i2v_prompt_dropout applies to the I2V samples only, from the same one draw per sample (None: prompt_dropout
    for all, the draws unchanged)."""
    i2v = torch.tensor([True, False] * 500)
    base = ObjectiveConfig(prompt_dropout=0.1)
    torch.testing.assert_close(draw_prompt_drop(1000, base, _g(), i2v), draw_prompt_drop(1000, base, _g()))
    drop = draw_prompt_drop(1000, ObjectiveConfig(prompt_dropout=0.1, i2v_prompt_dropout=0.6), _g(), i2v)
    assert 250 < int(drop[i2v].sum()) < 350 and 20 < int(drop[~i2v].sum()) < 80
    assert drop[~i2v].equal(draw_prompt_drop(1000, base, _g())[~i2v])  # T2V samples: as before
    text, mask = torch.randn(2, 5, 8, generator=_g()), torch.ones(2, 5, dtype=torch.bool)
    config = ObjectiveConfig(prompt_dropout=0.0, i2v_prompt_dropout=1.0)
    dropped, _ = drop_prompts(text, mask, torch.zeros(5, 8), mask[0], config, _g(), torch.tensor([True, False]))
    assert dropped[0].eq(0).all() and dropped[1].equal(text[1])
    with pytest.raises(ValueError, match="i2v_prompt_dropout"):
        ObjectiveConfig(i2v_prompt_dropout=1.5)


def test_frame_correlated_noise():
    """rho = 0 draws exactly torch.randn (old runs resume bit-identically); rho > 0 correlates the latent frames of
    a video at rho with unit variance; an image (one frame) is never changed."""
    shape = (32, 4, 5, 8, 8)
    torch.testing.assert_close(draw_noise(shape, ObjectiveConfig(), _g(1)), torch.randn(shape, generator=_g(1)))
    eps = draw_noise(shape, ObjectiveConfig(noise_correlation=0.75), _g(1))
    assert abs(float(eps.std()) - 1.0) < 0.03
    corr = torch.corrcoef(torch.stack([eps[:, :, 1].flatten(), eps[:, :, 4].flatten()]))[0, 1]
    assert abs(float(corr) - 0.75) < 0.03
    image = (8, 4, 1, 8, 8)
    config = ObjectiveConfig(noise_correlation=0.75)
    torch.testing.assert_close(draw_noise(image, config, _g(2)), torch.randn(image, generator=_g(2)))
    with pytest.raises(ValueError, match="noise_correlation"):
        ObjectiveConfig(noise_correlation=1.5)


def test_difference_loss():
    """lambda_t mean((D_t e)^2) + lambda_s (mean((D_h e)^2) + mean((D_w e)^2)) / 2 of e = prediction - target: zero for
    an error that is the same in every frame and pixel (it sees only structure), 0 over an image's single frame,
    and off (exactly 0) at weight 0; negative weights are refused."""
    target = torch.randn(2, 3, 4, 5, 6, generator=_g(3))
    prediction = torch.randn(2, 3, 4, 5, 6, generator=_g(4))
    e = prediction - target
    want_t = ((e[:, :, 1:] - e[:, :, :-1]) ** 2).mean()
    want_s = (((e[..., 1:, :] - e[..., :-1, :]) ** 2).mean() + ((e[..., 1:] - e[..., :-1]) ** 2).mean()) / 2
    torch.testing.assert_close(difference_loss(prediction, target, 2.0, 0.0), 2.0 * want_t)
    torch.testing.assert_close(difference_loss(prediction, target, 0.0, 3.0), 3.0 * want_s)
    torch.testing.assert_close(difference_loss(prediction, target, 2.0, 3.0), 2.0 * want_t + 3.0 * want_s)
    assert float(difference_loss(prediction, target, 0.0, 0.0)) == 0.0
    assert float(difference_loss(target + 0.7, target, 1.0, 1.0)) < 1e-10  # a constant offset has no differences
    image_e = e[:, :, :1]
    assert float(difference_loss(target[:, :, :1] + image_e, target[:, :, :1], 5.0, 0.0)) == 0.0
    for name in ("temporal_difference_weight", "spatial_difference_weight"):
        with pytest.raises(ValueError, match=name):
            ObjectiveConfig(**{name: -1.0})
