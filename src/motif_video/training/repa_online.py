"""Online REPA targets: decode the clean training latents with the VAE and encode the pixels with the teacher.

Shards hold VAE latents, not pixels, so an online teacher needs the clip back: `OnlineTargets(vae, teacher)` maps
clean normalised latents (B, 16, F', h, w) to targets (B, F'*h*w, D_t) on the latent token grid (`core.teachers`).
Precomputing them once in `motif-video prepare --teacher ...` (`feature_source="shards"`) is cheaper when a
data set is seen for more than one epoch; online targets follow the exact clip the VAE reconstructs.
"""

from __future__ import annotations

from typing import Any

import torch

from motif_video.core.latent_space import denormalize_latents
from motif_video.core.teachers import TOKEN_SPATIAL_STRIDE, VAE_TEMPORAL_STRIDE, Teacher, teacher_targets


class OnlineTargets:
    """Callable: latents (B, 16, F', h, w) -> REPA targets (B, N, D_t) on the transformer's token grid."""

    def __init__(self, vae: Any, teacher: Teacher, patch_size: int = 2, patch_size_t: int = 1) -> None:
        self.vae, self.teacher = vae.eval().requires_grad_(False), teacher
        self.patch_size, self.patch_size_t = patch_size, patch_size_t

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        vae_param = next(self.vae.parameters())
        raw = denormalize_latents(self.vae, latents.to(device=vae_param.device, dtype=vae_param.dtype))
        video = self.vae.decode(raw).sample.clamp(-1, 1)  # (B, 3, F, H, W) in [-1, 1]
        f, h, w = latents.shape[2:]
        grid = (f // self.patch_size_t, h // self.patch_size, w // self.patch_size)
        expected = ((f - 1) * VAE_TEMPORAL_STRIDE + 1, h * TOKEN_SPATIAL_STRIDE // self.patch_size)
        if video.shape[2] != expected[0] or video.shape[3] != expected[1]:
            raise ValueError(f"VAE decoded {tuple(video.shape)} from latents {tuple(latents.shape)}: not a Wan VAE?")
        return teacher_targets(self.teacher, video, grid).float()


__all__ = ["OnlineTargets"]
