"""The Motif-Video transformer and its building blocks."""

from motif_video.models.attention import available_backends, get_attention_backend, set_attention_backend
from motif_video.models.checkpoint_io import CheckpointError
from motif_video.models.config import PRESETS, MotifVideoConfig, get_preset
from motif_video.models.routing import TokenRoute, random_route
from motif_video.models.transformer import MotifVideoTransformer, MotifVideoTransformerOutput

__all__ = [
    "PRESETS",
    "CheckpointError",
    "MotifVideoConfig",
    "MotifVideoTransformer",
    "MotifVideoTransformerOutput",
    "TokenRoute",
    "available_backends",
    "get_attention_backend",
    "get_preset",
    "random_route",
    "set_attention_backend",
]
