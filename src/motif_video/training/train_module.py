"""What the optimizer trains: the transformer plus the training-only heads that live with it (REPA's projector).

REPA (sihyun-yu/REPA) keeps the projector with the model and RETURNS the tapped features from `forward`: here
`TrainModule.forward` runs the transformer with `repa_block` and returns the projected features next to the
velocity, in the transformer's own output type (the trainer reads one result type either way). Under FSDP2 the
projector is one more parameter of the root module (sharded, reduced and checkpointed with everything else), and
no hook fires twice under activation recomputation.

With a tuned text encoder (`training.text_tuning`) the module also holds the T5Gemma2 encoder and its tokenizer:
`forward(prompt_ids=..., prompt_mask=...)` encodes the captions inside the step, so the encoder is trained,
sharded and checkpointed with the transformer.

State-dict keys: `transformer.*`, `repa_projector.*` and `text_encoder.*`. `export.py` writes only the transformer;
`text_tuning.export_text_encoder` the text encoder.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from motif_video.models.config import MotifVideoConfig
from motif_video.models.transformer import MotifVideoTransformerOutput


class TrainModule(nn.Module):
    """transformer + optional REPA projector; `blocks` and `config` delegate."""

    def __init__(
        self,
        transformer: nn.Module,
        repa_projector: nn.Module | None = None,
        text_encoder: nn.Module | None = None,
        tokenizer: Any = None,
        max_sequence_length: int = 512,
    ) -> None:
        super().__init__()
        if (text_encoder is None) != (tokenizer is None):
            raise ValueError("a TrainModule's text encoder needs its tokenizer (and the reverse)")
        self.transformer = transformer
        self.repa_projector = repa_projector
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.max_sequence_length = max_sequence_length

    def tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (input_ids (B, L), mask (B, L) bool), as the pipeline tokenizes them."""
        from motif_video.core.encoders import tokenize_prompts

        if self.tokenizer is None:
            raise ValueError("this TrainModule has no text encoder: its batches carry encoded text")
        return tokenize_prompts(self.tokenizer, prompts, self.max_sequence_length)

    @property
    def config(self) -> MotifVideoConfig:
        return self.transformer.config

    @property
    def blocks(self) -> list[nn.Module]:
        return self.transformer.blocks

    def forward(
        self,
        *,
        repa_block: int | None = None,
        prompt_ids: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MotifVideoTransformerOutput:
        """-> sample: velocity (B, C, F, H, W); repa_features: projected (B, N or K, D_teacher) or None.

        prompt_ids / prompt_mask (B, L): tokenized captions, encoded here by the text encoder (instead of
        `encoder_hidden_states` / `encoder_attention_mask`)."""
        if repa_block is not None and self.repa_projector is None:
            raise ValueError("REPA is on but this TrainModule has no repa_projector")
        if prompt_ids is not None:
            if self.text_encoder is None:
                raise ValueError("prompt_ids given but this TrainModule has no text encoder")
            states = self.text_encoder(input_ids=prompt_ids, attention_mask=prompt_mask.long()).last_hidden_state
            kwargs.update(encoder_hidden_states=states, encoder_attention_mask=prompt_mask.bool())
        out = self.transformer(repa_block=repa_block, **kwargs)
        features = out.repa_features
        if features is not None:
            features = self.repa_projector(features)
        return MotifVideoTransformerOutput(out.sample, features)


def unwrap(model: nn.Module) -> nn.Module:
    """The transformer inside a TrainModule (or the model itself)."""
    return model.transformer if isinstance(model, TrainModule) else model


__all__ = ["TrainModule", "unwrap"]
