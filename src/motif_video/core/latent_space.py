"""Latent space: shapes, the Wan VAE's per-channel normalisation, initial noise and the I2V channels.

Transformer input (B, 33, F', H/8, W/8) = [noisy latent (16) | first-frame latent (16) | mask (1)]:
for I2V the normalised VAE latent of the first frame sits at latent frame 0 (zeros after) and the mask is 1
there; for T2V all 17 extra channels are zero. Latent frames F' = (F - 1) / 4 + 1.
"""

from __future__ import annotations

import math
from typing import Any

import torch

VAE_SPATIAL = 8
VAE_TEMPORAL = 4
PATCH = 2


def check_video_size(height: int, width: int, num_frames: int, patch: int = PATCH, patch_t: int = 1) -> None:
    """The model needs H, W multiples of 8 * `patch` (VAE 8x, the transformer's spatial patch: 16 for the official
    model) and F = 4k + 1 (VAE 4x in time) whose k + 1 latent frames are a multiple of `patch_t`."""
    step = VAE_SPATIAL * patch
    for name, value in (("height", height), ("width", width)):
        if not isinstance(value, int) or value < step or value % step:
            lower = max(step, value // step * step) if isinstance(value, int) else step
            hint = f"try {lower} or {lower + step}"
            raise ValueError(f"{name} must be a positive multiple of {step}, got {value} ({hint})")
    if not isinstance(num_frames, int) or num_frames < 1 or (num_frames - 1) % VAE_TEMPORAL:
        lower = max(1, (num_frames - 1) // VAE_TEMPORAL * VAE_TEMPORAL + 1) if isinstance(num_frames, int) else 1
        raise ValueError(
            f"num_frames must be of the form 4k+1 (1, 5, 9, ..., 121), got {num_frames} (try {lower} or {lower + 4})"
        )
    latent_frames = (num_frames - 1) // VAE_TEMPORAL + 1
    if latent_frames % patch_t:
        lower = max(patch_t, latent_frames // patch_t * patch_t)
        hint = f"try {(lower - 1) * VAE_TEMPORAL + 1} or {(lower + patch_t - 1) * VAE_TEMPORAL + 1}"
        raise ValueError(
            f"num_frames {num_frames} gives {latent_frames} latent frames, not a multiple of the model's temporal "
            f"patch {patch_t} ({hint})"
        )


def model_patch(transformer: Any) -> tuple[int, int]:
    """(spatial, temporal) patch of a transformer (ours or diffusers'), for `check_video_size`."""
    config = getattr(transformer, "config", None)
    return int(getattr(config, "patch_size", PATCH)), int(getattr(config, "patch_size_t", 1))


def latent_shape(batch: int, channels: int, height: int, width: int, num_frames: int) -> tuple[int, ...]:
    return (batch, channels, (num_frames - 1) // VAE_TEMPORAL + 1, height // VAE_SPATIAL, width // VAE_SPATIAL)


def _stats(vae: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(vae.config.latents_mean, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1)
    return mean, std


def normalize_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """Raw VAE latents -> the model's space: (z - mean) / std per channel."""
    mean, std = _stats(vae, latents)
    return (latents - mean) / std


def denormalize_latents(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    mean, std = _stats(vae, latents)
    return latents * std + mean


def randn(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Gaussian noise that depends only on the seed: drawn in float32 on the generator's device, then moved
    and cast, so a seed gives the same video start on any device and in any dtype.

    A list of generators draws one batch row each (len must equal shape[0]), as diffusers does.
    """
    if isinstance(generator, list):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]} videos; pass one per video")
        rows = [randn((1, *shape[1:]), g, device, dtype) for g in generator]
        return torch.cat(rows)
    draw_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(shape, generator=generator, device=draw_device, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)


def correlate_frames(noise: torch.Tensor, shared: torch.Tensor, correlation: float) -> torch.Tensor:
    """Frame-correlated Gaussian noise (the "mixed" noise prior of PYoCo, Ge et al. arXiv 2305.10474).

    noise: (B, C, F, H, W) independent; shared: (B, C, 1, H, W), one draw for every frame. Returns
    sqrt(rho) * shared + sqrt(1 - rho) * noise: still unit variance per element, with correlation rho between any
    two latent frames at the same place. rho = 0 is the independent noise the official model uses.
    """
    check_noise_correlation(correlation)
    if correlation == 0.0:
        return noise
    return math.sqrt(correlation) * shared + math.sqrt(1.0 - correlation) * noise


def initial_noise(
    shape: tuple[int, ...],
    generator: torch.Generator | list[torch.Generator] | None,
    device: torch.device,
    correlation: float = 0.0,
) -> torch.Tensor:
    """The sampler's starting latents (float32): `randn`, then, when correlation > 0, one more draw per video shared
    by its frames (`correlate_frames`). The shared draw comes second, so correlation 0 keeps a seed's noise."""
    noise = randn(shape, generator, device, torch.float32)
    if correlation == 0.0:
        return noise
    return correlate_frames(noise, randn(shared_noise_shape(shape), generator, device, torch.float32), correlation)


def check_noise_correlation(correlation: float) -> None:
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"noise_correlation must lie in [0, 1] (0 = independent frames), got {correlation}")


def shared_noise_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the one draw shared by every latent frame: (B, C, 1, H, W) for latents (B, C, F, H, W)."""
    return (*shape[:2], 1, *shape[3:])


def encode_first_frames(
    vae: Any,
    frames: torch.Tensor,
    generator: torch.Generator | list[torch.Generator] | None,
    sample: bool = True,
) -> torch.Tensor:
    """First frames (N, 3, H, W) in [-1, 1] -> normalised latents (N, 16, 1, H/8, W/8) in the VAE's dtype.

    `sample=True` draws from the VAE posterior with `generator`, as the reference does; False takes its mode.
    """
    vae_param = next(vae.parameters())
    video = frames.to(device=vae_param.device, dtype=vae_param.dtype)[:, :, None]
    with torch.no_grad():
        posterior = vae.encode(video).latent_dist
    if sample:
        eps = randn(tuple(posterior.mean.shape), generator, posterior.mean.device, posterior.mean.dtype)
        latents = posterior.mean + posterior.std * eps
    else:
        latents = posterior.mode()
    return normalize_latents(vae, latents)


def condition_channels(
    first_frame_latents: torch.Tensor | None,
    shape: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
    i2v: torch.Tensor | None = None,
) -> torch.Tensor:
    """The I2V condition channels (B, 16 + 1, F', h, w) for latents of `shape` (B, 16, F', h, w): the clean
    first-frame latents in latent frame 0 of the first 16 channels, and a mask channel that is 1 there.

    `first_frame_latents`: (B, 16, 1, h, w), None for T2V (all zeros). `i2v` (B,) 0/1 marks which samples are
    I2V (default: all); the others get zeros, as T2V samples of a mixed training batch.
    """
    batch, channels, frames, h, w = shape
    cond = torch.zeros(batch, channels + 1, frames, h, w, device=device, dtype=dtype)
    if first_frame_latents is None:
        return cond
    on = torch.ones(batch, device=device, dtype=dtype) if i2v is None else i2v.to(device=device, dtype=dtype)
    cond[:, :channels, 0] = first_frame_latents[:, :, 0].to(device=device, dtype=dtype) * on.view(batch, 1, 1, 1)
    cond[:, channels, 0] = on.view(batch, 1, 1)
    return cond
