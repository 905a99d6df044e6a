"""The training objective: rectified flow with joint T2V / I2V conditioning (Motif-Video report, section 4).

The time convention is `core.flow`'s: t in [0, 1], t = 1 is noise, x_t = (1 - t) x0 + t eps, target v = eps - x0.

Timesteps (the report does not say; configurable): logit-normal (SD3, arXiv 2403.03206 sec. 3.1) with a static
shift s*t / (1 + (s-1)*t) (the same map as the sampler's shift), or uniform. `uniform_share` p > 0 mixes the two:
each sample's t is uniform with probability p, else logit-normal (then the shift, for both). A logit-normal centred
at high noise almost never trains the last sampling steps (logit-normal(1, 1.2): t < 0.1 in 0.4% of draws); a
uniform share keeps every t in the training signal.

Joint T2V / I2V: a clip is trained as I2V with probability `i2v_ratio`: channels 17..32 hold the clean first-frame
latent at latent frame 0 and channel 33 the mask (as at inference); otherwise all 17 are zero. Images (one latent
frame) are always T2V: their only frame would be the answer.

Timestep-aware blur of the condition (named in the model card, formula unpublished) -- OUR CHOICE: the
first-frame latent is Gaussian-blurred in space with std = blur_max * t^blur_power latent pixels, so a noisy
sample is conditioned on a coarser first frame and a nearly clean one on the exact frame. blur_max = 0 turns it
off. Prompt dropout (0.1) replaces the text with the null (empty-prompt) encoding, for guidance at inference.
`i2v_prompt_dropout` (default: the same 0.1) drops the prompt of I2V samples at its own rate, for a model that
should learn appearance from the first frame rather than from a caption naming every colour and shape.

Frame-correlated noise (off by default; the official model uses independent noise) -- OUR CHOICE for small models:
`noise_correlation` rho > 0 draws eps as sqrt(rho) * shared + sqrt(1 - rho) * independent, one shared draw for all
latent frames (PYoCo's mixed noise prior, Ge et al. arXiv 2305.10474). A model that has not yet learned to carry
objects across frames then starts every frame from much the same layout; sampling must use the same rho (the
release stores it as a generation default).

Difference loss (off by default) -- OUR CHOICE for small models: lambda_t * mean((D_t e)^2) + lambda_s * mean((D_s e)^2)
on top of the flow loss, where e = prediction - target, D_t is the difference between neighbouring latent frames
and D_s between neighbouring latent pixels (rows and columns, averaged). Any fixed positive-definite quadratic form
of e has the same minimiser E[v | x_t, c] as the plain MSE, so, unlike a data-dependent weight, it does not bias
the model; it only re-weights WHICH errors the gradient sees: temporal differences carry motion (under
frame-correlated noise the target's own frame differences are almost noise-free), spatial differences carry edges
(shape).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from motif_video.core import latent_space
from motif_video.core.flow import shift_sigmas
from motif_video.core.latent_space import initial_noise


@dataclass(frozen=True)
class ObjectiveConfig:
    timestep_sampling: str = "logit_normal"  # or "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float = 1.0  # static shift of the sampled t; > 1 favours noisier t (higher resolutions)
    uniform_share: float = 0.0  # with logit_normal: fraction of samples whose t is uniform instead
    prompt_dropout: float = 0.1
    i2v_prompt_dropout: float | None = None  # an I2V sample's prompt dropout; None: prompt_dropout, as T2V
    i2v_ratio: float = 0.5  # fraction of VIDEO clips trained as image-to-video
    blur_max: float = 1.0  # latent pixels of blur at t = 1 (0 = off)
    blur_power: float = 1.0
    noise_correlation: float = 0.0  # between latent frames of eps (PYoCo mixed noise); 0 = independent, as official
    temporal_difference_weight: float = 0.0  # lambda_t of the difference loss (0 = off, as official)
    spatial_difference_weight: float = 0.0  # lambda_s of the difference loss (0 = off, as official)

    def __post_init__(self) -> None:
        if self.timestep_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"timestep_sampling must be 'logit_normal' or 'uniform', got {self.timestep_sampling!r}")
        for name in ("prompt_dropout", "i2v_ratio", "noise_correlation", "uniform_share", "i2v_prompt_dropout"):
            if name == "i2v_prompt_dropout" and self.i2v_prompt_dropout is None:
                continue
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if self.shift <= 0 or self.logit_std <= 0 or self.blur_max < 0:
            raise ValueError("shift and logit_std must be positive, blur_max non-negative")
        for name in ("temporal_difference_weight", "spatial_difference_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = off), got {getattr(self, name)}")


def sample_timesteps(batch: int, config: ObjectiveConfig, generator: torch.Generator) -> torch.Tensor:
    """(B,) float32 t in (0, 1), drawn on the generator's device."""
    device = generator.device
    if config.timestep_sampling == "uniform":
        t = torch.rand(batch, generator=generator, device=device)
    else:
        t = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(batch, generator=generator, device=device))
        if config.uniform_share > 0:  # extra draws only then: 0 consumes the generator as before
            uniform = torch.rand(batch, generator=generator, device=device)
            pick = torch.rand(batch, generator=generator, device=device) < config.uniform_share
            t = torch.where(pick, uniform, t)
    if config.shift != 1.0:
        t = torch.from_numpy(shift_sigmas(t.double().cpu().numpy(), config.shift)).to(device=device)
    return t.float().clamp(1e-5, 1.0 - 1e-5)


def draw_noise(shape: tuple[int, ...], config: ObjectiveConfig, generator: torch.Generator) -> torch.Tensor:
    """eps for latents of `shape` (B, C, F, H, W) on the generator's device, drawn as the sampler's starting noise
    (`latents.initial_noise`): rho = 0 (or an image) consumes the generator exactly as before."""
    correlation = config.noise_correlation if shape[2] > 1 else 0.0
    return initial_noise(shape, generator, generator.device, correlation)


def flow_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error in float32 (rectified flow, Liu et al. arXiv 2209.03003)."""
    return F.mse_loss(prediction.float(), target.float())


def difference_loss(prediction: torch.Tensor, target: torch.Tensor, temporal: float, spatial: float) -> torch.Tensor:
    """lambda_t * mean((D_t e)^2) + lambda_s * (mean((D_h e)^2) + mean((D_w e)^2)) / 2 in float32, e = prediction -
    target on (B, C, F, H, W) latents. An axis of length 1 (an image's frames) contributes 0."""
    e = prediction.float() - target.float()
    loss = e.new_zeros(())
    if temporal and e.shape[2] > 1:
        loss = loss + temporal * e.diff(dim=2).square().mean()
    if spatial:
        rows = e.diff(dim=3).square().mean() if e.shape[3] > 1 else loss.new_zeros(())
        cols = e.diff(dim=4).square().mean() if e.shape[4] > 1 else loss.new_zeros(())
        loss = loss + spatial * (rows + cols) / 2
    return loss


def gaussian_blur_latent(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur (B, C, F, H, W) in H and W with a per-sample std `sigma` (B,) in latent pixels (0 = unchanged)."""
    sigma = sigma.to(torch.float32)
    max_sigma = float(sigma.max())
    if max_sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * max_sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    s = sigma.clamp_min(1e-6).to(x.device)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K)
    kernel = torch.where(sigma.to(x.device)[:, None] > 0, kernel, (offsets[None] == 0).float())
    b, c, f, h, w = x.shape
    y = x.float().permute(0, 2, 1, 3, 4).reshape(1, b * f * c, h, w)
    k = kernel.repeat_interleave(f * c, dim=0)  # (B*F*C, K): one kernel per (sample, frame, channel)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="replicate"), k[:, None, None, :], groups=b * f * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="replicate"), k[:, None, :, None], groups=b * f * c)
    return y.reshape(b, f, c, h, w).permute(0, 2, 1, 3, 4).to(x.dtype)


def condition_channels(
    first_frame: torch.Tensor | None,
    latents_shape: tuple[int, ...],
    i2v: torch.Tensor,
    t: torch.Tensor,
    config: ObjectiveConfig,
) -> torch.Tensor:
    """The 17 conditioning channels (B, 17, F', h, w) for a training batch.

    first_frame: (B, 16, 1, h, w) clean normalised first-frame latents (None: all T2V); i2v: (B,) bool.
    """
    device = t.device
    if first_frame is None or latents_shape[2] < 2 or not bool(i2v.any()):
        return latent_space.condition_channels(None, latents_shape, device, torch.float32)
    cond = first_frame.to(device=device, dtype=torch.float32)
    if config.blur_max > 0:  # a blurred first frame at high noise (the report's I2V robustness)
        cond = gaussian_blur_latent(cond, config.blur_max * t.float() ** config.blur_power)
    return latent_space.condition_channels(cond, latents_shape, device, torch.float32, i2v=i2v)


def draw_i2v(is_video: torch.Tensor, config: ObjectiveConfig, generator: torch.Generator) -> torch.Tensor:
    """(B,) bool: which clips train as I2V (videos only, with probability i2v_ratio)."""
    draw = torch.rand(is_video.shape[0], generator=generator, device=generator.device) < config.i2v_ratio
    return draw.to(is_video.device) & is_video.bool()


def draw_prompt_drop(
    batch: int, config: ObjectiveConfig, generator: torch.Generator, i2v: torch.Tensor | None = None
) -> torch.Tensor:
    """(B,) bool: which samples lose their prompt: probability prompt_dropout, i2v_prompt_dropout for the samples
    `i2v` (B,) marks; one draw per sample either way."""
    draw = torch.rand(batch, generator=generator, device=generator.device)
    if i2v is None or config.i2v_prompt_dropout is None:
        return draw < config.prompt_dropout
    on = i2v.to(draw.device).bool()
    return draw < torch.where(on, config.i2v_prompt_dropout, config.prompt_dropout)


def drop_prompts(
    text: torch.Tensor,
    mask: torch.Tensor,
    null_text: torch.Tensor,
    null_mask: torch.Tensor,
    config: ObjectiveConfig,
    generator: torch.Generator,
    i2v: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each sample's text by the null encoding with probability prompt_dropout (`draw_prompt_drop`).

    text: (B, L, D), mask: (B, L); null_text: (L0, D), null_mask: (L0,) -> padded to max(L, L0).
    """
    drop = draw_prompt_drop(text.shape[0], config, generator, i2v)
    return apply_prompt_drop(text, mask, null_text, null_mask, drop)


def apply_prompt_drop(
    text: torch.Tensor, mask: torch.Tensor, null_text: torch.Tensor, null_mask: torch.Tensor, drop: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples `drop` (B,) bool marks get the null encoding; shapes as `drop_prompts`."""
    length = text.shape[1]
    drop = drop.to(text.device)
    if not bool(drop.any()):
        return text, mask
    total = max(length, null_text.shape[0])
    text = F.pad(text, (0, 0, 0, total - length))
    mask = F.pad(mask.bool(), (0, total - length), value=False)
    null = F.pad(null_text.to(text), (0, 0, 0, total - null_text.shape[0]))
    nmask = F.pad(null_mask.bool().to(mask.device), (0, total - null_mask.shape[0]), value=False)
    text = torch.where(drop[:, None, None], null[None], text)
    mask = torch.where(drop[:, None], nmask[None], mask)
    return text, mask
