"""What the optimizer trains: the transformer plus the training-only heads that live with it (REPA's projector).

REPA (sihyun-yu/REPA) keeps the projector with the model and RETURNS the tapped features from `forward`: here
`TrainModule.forward` runs the transformer with `repa_block` and returns the projected features next to the
velocity, so under FSDP2 the projector is one more parameter of the root module (sharded, reduced and
checkpointed with everything else) and no hook fires twice under activation recomputation.

State-dict keys: `transformer.*` and `repa_projector.*`. `export.py` writes only the transformer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from motif_video.models.config import MotifVideoConfig


class TrainModule(nn.Module):
    """transformer + optional REPA projector; `blocks`, `config` and checkpointing switches delegate."""

    def __init__(self, transformer: nn.Module, repa_projector: nn.Module | None = None) -> None:
        super().__init__()
        self.transformer = transformer
        self.repa_projector = repa_projector

    @property
    def config(self) -> MotifVideoConfig:
        return self.transformer.config

    @property
    def blocks(self) -> list[nn.Module]:
        return self.transformer.blocks

    def enable_gradient_checkpointing(self) -> None:
        self.transformer.enable_gradient_checkpointing()

    def disable_gradient_checkpointing(self) -> None:
        self.transformer.disable_gradient_checkpointing()

    def forward(self, *, repa_block: int | None = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> (velocity (B, C, F, H, W), projected REPA features (B, N or K, D_teacher) or None)."""
        if repa_block is not None and self.repa_projector is None:
            raise ValueError("REPA is on but this TrainModule has no repa_projector")
        out = self.transformer(repa_block=repa_block, **kwargs)
        features = out.repa_features
        if features is not None:
            features = self.repa_projector(features)
        return out.sample, features


def unwrap(model: nn.Module) -> nn.Module:
    """The transformer inside a TrainModule (or the model itself)."""
    return model.transformer if isinstance(model, TrainModule) else model


__all__ = ["TrainModule", "unwrap"]
