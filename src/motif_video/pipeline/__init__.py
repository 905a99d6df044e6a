"""Inference: the text/image-to-video pipeline, its sampler schedule, guidance and memory modes."""

from motif_video.pipeline.guidance import GuidanceConfig
from motif_video.pipeline.pipeline import (
    OFFICIAL_NEGATIVE_PROMPT,
    GenerationDefaults,
    MotifVideoPipeline,
    MotifVideoPipelineOutput,
)

__all__ = [
    "GenerationDefaults",
    "GuidanceConfig",
    "MotifVideoPipeline",
    "MotifVideoPipelineOutput",
    "OFFICIAL_NEGATIVE_PROMPT",
]
