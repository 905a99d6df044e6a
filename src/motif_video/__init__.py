"""motif-video: an open implementation of Motif-Video 2B (text/image-to-video diffusion transformer)."""

from motif_video.models import (
    PRESETS,
    CheckpointError,
    MotifVideoConfig,
    MotifVideoTransformer,
    MotifVideoTransformerOutput,
    TokenRoute,
    get_preset,
    random_route,
    set_attention_backend,
)
from motif_video.version import __version__

_PIPELINE_NAMES = ("MotifVideoPipeline", "MotifVideoPipelineOutput", "GuidanceConfig", "OFFICIAL_NEGATIVE_PROMPT")


def __getattr__(name: str):
    # The pipeline imports diffusers and transformers: load it on first use, not with the model.
    if name in _PIPELINE_NAMES:
        from motif_video import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'motif_video' has no attribute {name!r}")


__all__ = [
    "OFFICIAL_NEGATIVE_PROMPT",
    "PRESETS",
    "CheckpointError",
    "GuidanceConfig",
    "MotifVideoConfig",
    "MotifVideoPipeline",
    "MotifVideoPipelineOutput",
    "MotifVideoTransformer",
    "MotifVideoTransformerOutput",
    "TokenRoute",
    "__version__",
    "get_preset",
    "random_route",
    "set_attention_backend",
]
