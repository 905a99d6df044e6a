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

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "CheckpointError",
    "MotifVideoConfig",
    "MotifVideoTransformer",
    "MotifVideoTransformerOutput",
    "TokenRoute",
    "__version__",
    "get_preset",
    "random_route",
    "set_attention_backend",
]
