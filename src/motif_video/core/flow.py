"""The rectified-flow convention, stated once for sampling and training alike.

t (= sigma) lies in [0, 1]; t = 1 is pure noise. x_t = (1 - t) x0 + t eps, and the model predicts the velocity
v = eps - x0 (rectified flow, Liu et al. 2022). The transformer reads its timestep on the 0..1000 scale
(`to_model_timestep`). A static shift s*t / (1 + (s-1)*t) moves steps towards noise (SD3, arXiv 2403.03206
eq. 23); the reference samples with s = 15 (T2V) or 8 (I2V) on linspace(1, 1/N, N).
"""

from __future__ import annotations

import numpy as np
import torch

DEFAULT_SHIFT_T2V = 15.0
DEFAULT_SHIFT_I2V = 8.0
NUM_TRAIN_TIMESTEPS = 1000


def shift_sigmas(sigmas: np.ndarray, shift: float) -> np.ndarray:
    """Static time shift s*t / (1 + (s-1)*t); s = 1 is the identity."""
    if shift <= 0:
        raise ValueError(f"shift must be positive, got {shift}")
    sigmas = np.asarray(sigmas, dtype=np.float64)
    return shift * sigmas / (1.0 + (shift - 1.0) * sigmas)


def flow_sigmas(num_steps: int, shift: float) -> np.ndarray:
    """The reference's default schedule: linspace(1, 1/N, N) shifted; (N,) float64, descending, no final 0."""
    if num_steps < 1:
        raise ValueError(f"num_inference_steps must be at least 1, got {num_steps}")
    return shift_sigmas(np.linspace(1.0, 1.0 / num_steps, num_steps), shift)


def to_model_timestep(t: torch.Tensor | float) -> torch.Tensor | float:
    """t in [0, 1] -> the transformer's 0..1000 timestep scale."""
    return t * NUM_TRAIN_TIMESTEPS


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x0, eps: (B, C, F, H, W); t: (B,) -> (x_t, target v = eps - x0)."""
    tt = t.view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - tt) * x0 + tt * eps, eps - x0
