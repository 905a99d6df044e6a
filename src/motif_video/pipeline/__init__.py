"""Inference: the text/image-to-video pipeline, its sampler schedule, guidance and memory modes."""

from motif_video.pipeline.guidance import GuidanceConfig
from motif_video.pipeline.pipeline import (
    OFFICIAL_NEGATIVE_PROMPT,
    GenerationDefaults,
    MotifVideoPipeline,
    MotifVideoPipelineOutput,
)
from motif_video.pipeline.settings import GenerationSettings

__all__ = [
    "GenerationDefaults",
    "GenerationSettings",
    "GuidanceConfig",
    "MotifVideoPipeline",
    "MotifVideoPipelineOutput",
    "OFFICIAL_NEGATIVE_PROMPT",
]
