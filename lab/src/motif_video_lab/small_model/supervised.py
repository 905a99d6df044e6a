"""Two loops the small model's supervised side-models share (the caption-pretrained text encoder, the REPA scene
teacher): the warmup + cosine learning-rate factor, and fitting fresh linear probe heads on frozen features."""

from __future__ import annotations

import math
from typing import Any

import torch


def warmup_cosine(step: int, steps: int, warmup: int) -> float:
    """The lr factor at 0-based `step`: linear warmup over `warmup` steps, times a cosine decay to 0 over `steps`."""
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps))


def fit_probe(heads: torch.nn.Module, features: torch.Tensor, targets: Any, steps: int, lr: float = 1e-2) -> None:
    """Fit `heads` (returning `(loss, accuracy)` from `heads(features, targets)`) on frozen features with Adam, in
    place; gradients are enabled inside, so it can be called under `torch.no_grad`."""
    with torch.enable_grad():
        optimizer = torch.optim.Adam(heads.parameters(), lr=lr)
        for _ in range(steps):
            loss, _ = heads(features, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


__all__ = ["fit_probe", "warmup_cosine"]
