"""Typed configuration of the Motif-Video transformer, with named presets.

Field names are the official `config.json` names (diffusers' `MotifVideoTransformer3DModel`), so an
official `transformer/config.json` loads as it is. `cross_attention_layout` is ours: it says which of the
two Shared Cross-Attention checkpoint layouts the model holds (see `shared_cross_attention.py`); it is
written to `config.json` only when it is not the diffusers layout, and detected from the weights on load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from motif_video import bounds

CrossAttentionLayout = Literal["diffusers", "shared"]

# Keys that diffusers writes into config.json and that carry no architecture information.
_BOOKKEEPING_KEYS = ("_class_name", "_diffusers_version", "_name_or_path", "_use_default_values")
# Fields of Motif's original-code config that are harmless when unset (no pooled text vector, no RoPE
# extrapolation); set to anything else they describe a model this implementation does not run.
_ACCEPTED_WHEN_NULL = ("pooled_projection_dim", "base_latent_size")
# Bounds far above any real model and far below what would exhaust memory when built: a hostile config.json
# (num_layers = 1000000) is refused before a single module is made.
LIMITS: dict[str, tuple[int, int]] = {
    "in_channels": (1, 4096),
    "out_channels": (1, 4096),
    "num_attention_heads": (1, 1024),
    "attention_head_dim": (2, 1024),
    "num_layers": (0, 512),
    "num_single_layers": (0, 512),
    "num_decoder_layers": (0, 512),
    "patch_size": (1, 64),
    "patch_size_t": (1, 64),
    "text_embed_dim": (1, 65536),
    "image_embed_dim": (1, 65536),
}
MAX_HIDDEN_SIZE = 65536


@dataclass(frozen=True)
class MotifVideoConfig:
    """Architecture of a Motif-Video transformer. Defaults are the official 2B release."""

    in_channels: int = 33  # 16 noisy latent + 16 first-frame latent + 1 mask
    out_channels: int = 16
    num_attention_heads: int = 12
    attention_head_dim: int = 128
    num_layers: int = 12  # dual-stream blocks
    num_single_layers: int = 24  # single-stream blocks; the last `num_decoder_layers` are the DDT decoder
    num_decoder_layers: int = 8
    mlp_ratio: float = 4.0
    patch_size: int = 2
    patch_size_t: int = 1
    qk_norm: str = "rms_norm"
    norm_type: str = "layer_norm"
    text_embed_dim: int = 2560  # T5Gemma2 encoder hidden size
    image_embed_dim: int | None = 1152  # SigLIP so400m hidden size; None disables image tokens
    rope_theta: float = 10000.0
    rope_axes_dim: tuple[int, ...] = (16, 56, 56)  # (T, H, W); sums to attention_head_dim
    enable_text_cross_attention_dual: bool = False
    enable_text_cross_attention_single: bool = True
    cross_attention_layout: CrossAttentionLayout = "diffusers"

    def __post_init__(self) -> None:
        bounds.check_types(self, "config")
        for name, (lo, hi) in LIMITS.items():
            if getattr(self, name) is not None:
                bounds.integer(f"config.{name}", getattr(self, name), lo, hi)
        bounds.real("config.mlp_ratio", self.mlp_ratio, 0.0, 64.0, lo_open=True)
        bounds.real("config.rope_theta", self.rope_theta, 0.0, 1e12, lo_open=True)
        if self.hidden_size > MAX_HIDDEN_SIZE:
            raise ValueError(f"config: num_attention_heads x attention_head_dim = {self.hidden_size} exceeds "
                             f"{MAX_HIDDEN_SIZE}")  # fmt: skip
        object.__setattr__(self, "rope_axes_dim", tuple(int(d) for d in self.rope_axes_dim))
        problems = []
        if sum(self.rope_axes_dim) != self.attention_head_dim:
            problems.append(
                f"rope_axes_dim {self.rope_axes_dim} sums to {sum(self.rope_axes_dim)}, "
                f"but attention_head_dim is {self.attention_head_dim}"
            )
        if len(self.rope_axes_dim) != 3 or any(d % 2 for d in self.rope_axes_dim):
            problems.append(f"rope_axes_dim must be three even numbers (T, H, W), got {self.rope_axes_dim}")
        if not 0 <= self.num_decoder_layers <= self.num_single_layers:
            problems.append(
                f"num_decoder_layers={self.num_decoder_layers} must be between 0 and "
                f"num_single_layers={self.num_single_layers}"
            )
        if self.qk_norm not in ("rms_norm", "layer_norm"):
            problems.append(f"qk_norm must be 'rms_norm' or 'layer_norm', got {self.qk_norm!r}")
        if self.norm_type != "layer_norm":
            problems.append(f"norm_type must be 'layer_norm' (the only one Motif-Video uses), got {self.norm_type!r}")
        if self.cross_attention_layout not in ("diffusers", "shared"):
            problems.append(
                f"cross_attention_layout must be 'diffusers' or 'shared', got {self.cross_attention_layout!r}"
            )
        if problems:
            raise ValueError("Invalid MotifVideoConfig: " + "; ".join(problems))

    # Derived sizes ---------------------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def num_encoder_single_layers(self) -> int:
        return self.num_single_layers - self.num_decoder_layers

    @property
    def num_encoder_blocks(self) -> int:
        """Blocks that see text: dual-stream plus encoder single-stream (global indices 0..this-1)."""
        return self.num_layers + self.num_encoder_single_layers

    @property
    def num_blocks(self) -> int:
        """All blocks, in global index order: dual, encoder single, decoder."""
        return self.num_layers + self.num_single_layers

    # Serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The `config.json` dict (official names; our layout field only when it is not diffusers')."""
        d = dataclasses.asdict(self)
        d["rope_axes_dim"] = list(self.rope_axes_dim)
        if self.cross_attention_layout == "diffusers":
            del d["cross_attention_layout"]
        return {"_class_name": "MotifVideoTransformer3DModel", **d}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MotifVideoConfig:
        """Build from a `config.json` dict. Unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k not in _BOOKKEEPING_KEYS}
        for key in _ACCEPTED_WHEN_NULL:
            if fields.get(key, None) is not None:
                raise ValueError(f"config.json sets {key}={fields[key]!r}, which Motif-Video 2B does not use")
            fields.pop(key, None)
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(
                f"config.json has fields that MotifVideoConfig does not know: {unknown}. Known fields: {sorted(known)}"
            )
        return cls(**fields)

    def replace(self, **changes: Any) -> MotifVideoConfig:
        return dataclasses.replace(self, **changes)


PRESETS: dict[str, MotifVideoConfig] = {
    # The official Motif-Video 2B release (diffusers layout of Shared Cross-Attention).
    "motif-video-2b": MotifVideoConfig(),
    # The same model in the paper's shared-K/V layout.
    "motif-video-2b-shared": MotifVideoConfig(cross_attention_layout="shared"),
    # Every path of the real architecture at toy size, for tests and the CPU smoke run.
    "tiny": MotifVideoConfig(
        in_channels=33,
        out_channels=16,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        num_single_layers=4,
        num_decoder_layers=2,
        text_embed_dim=32,
        image_embed_dim=24,
        rope_axes_dim=(4, 6, 6),
    ),
}


PRESETS["tiny-shared"] = PRESETS["tiny"].replace(cross_attention_layout="shared")
# The shipped small model: the real architecture at width 128, reading a small frozen T5Gemma2 encoder (text width
# 64) and its SigLIP tower (width 32).
PRESETS["motif-video-small"] = MotifVideoConfig(
    num_attention_heads=4,
    attention_head_dim=32,
    num_layers=2,  # dual-stream blocks 0-1
    num_single_layers=6,  # single-stream: encoder 2-5 (Shared Cross-Attention), DDT decoder 6-7
    num_decoder_layers=2,
    text_embed_dim=64,
    image_embed_dim=32,
    rope_axes_dim=(8, 12, 12),
)


def get_preset(name: str) -> MotifVideoConfig:
    """Look up a named preset; an unknown name is an error listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


__all__ = ["CrossAttentionLayout", "MotifVideoConfig", "PRESETS", "get_preset"]
