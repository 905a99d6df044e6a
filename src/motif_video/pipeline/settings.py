"""`GenerationSettings`: the options of one generation, written once.

The command line builds its `generate` flags from these fields (flag: the field name with dashes; help text
and choices: the field's metadata), `cli.generate` keeps one inside its run settings, and the pipeline runs
one with `pipe.generate(prompt, settings)`. `None` means the model's default (`GenerationDefaults`: size,
frames, steps, shift, negative prompt, noise correlation) or its guider's (scale, method, APG eta). The
diffusers-style keyword arguments of `MotifVideoPipeline.__call__` remain the lower-level door, and
`call_kwargs()` says how each field maps onto them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import torch

from motif_video import bounds
from motif_video.core.latent_space import check_noise_correlation, check_video_size
from motif_video.pipeline.guidance import GUIDANCE_METHODS
from motif_video.pipeline.model_function import SPLIT_CHOICES, split_choice
from motif_video.pipeline.step_cache import StepCache

MAX_STEPS = 1000  # the flow schedules have 1000 training timesteps: more steps than that only repeat them
MAX_VIDEOS_PER_PROMPT = 256


def option(default: Any, help: str, **cli: Any) -> Any:
    """A dataclass field whose metadata carries its command-line help and argparse extras (`choices`, `flag`,
    `group`), and `kwarg` when the pipeline calls it by another name."""
    return field(default=default, metadata={"help": help, **cli})


@dataclass(frozen=True)
class GenerationSettings:
    """What one generation may set; `None`: the model's (or its guider's) default."""

    negative_prompt: str | None = option(
        None, "what to steer away from (default: the model's; official: the Motif-Video one)"
    )
    height: int | None = option(None, "pixels, multiple of 16 (default: the model's, official 736)")
    width: int | None = option(None, "pixels, multiple of 16 (default: the model's, official 1280)")
    num_frames: int | None = option(None, "frames, of the form 4k+1 (default: the model's, official 121)")
    steps: int | None = option(None, "denoising steps (default: the model's, official 50)", kwarg="num_inference_steps")
    seed: int = option(0, "random seed; the same seed gives the same video (default 0)")
    num_videos_per_prompt: int = option(1, "videos per prompt (default 1)")
    guidance_scale: float | None = option(None, "guidance strength (default: the model's guider, official 8)")
    guidance: str | None = option(None, "guidance method (default: the model's, apg)", choices=GUIDANCE_METHODS)
    apg_eta: float | None = option(None, "APG parallel-component weight (default: the model's guider, 1)")
    shift: float | None = option(None, "static sigma shift (default: the model's; official 15, or 8 with --image)")
    noise_correlation: float | None = option(
        None,
        "correlation in [0, 1] between latent frames of the starting noise (default: the model's; official 0)",
    )
    cache: str | None = option(
        None,
        "step reuse (a fast mode, off by default): ddt:N runs the encoder every N steps; adaptive:T or calibrated:T "
        "when its input, or its output as calibrated on the model, has moved by T; ',uncond=K' reuses the "
        "unconditional branch K times longer; ',skip=S' runs the whole model on one step in S (',order=1' "
        "extrapolates the velocity between) (quality cost per mode: docs/performance.md)",
    )
    split_encoder: str | None = option(
        None,
        "run the encoder of the guidance batch per text length, without a text key mask (same numbers up to "
        "rounding): auto (the default: on a CUDA device, where it lets fused attention run), on (the flag alone), off",
        choices=SPLIT_CHOICES,
        const="on",
    )

    def validate(self, patch: tuple[int, int] = (2, 1)) -> None:
        """Every check that needs no model; `patch`: the model's (spatial, temporal) patch. Raises ValueError (or
        TypeError for a value of the wrong type), naming the field."""
        for name in ("height", "width", "num_frames", "steps"):
            value = getattr(self, name)
            if value is not None and bounds.integer(name, value) < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        if self.steps is not None:
            bounds.integer("steps", self.steps, 1, MAX_STEPS)
        bounds.seed("seed", self.seed)
        if self.negative_prompt is not None:
            bounds.utf8("negative_prompt", self.negative_prompt)
        if self.guidance_scale is not None:
            bounds.real("guidance_scale", self.guidance_scale, 0.0)
        if self.apg_eta is not None:
            bounds.real("apg_eta", self.apg_eta)
        if self.shift is not None:
            bounds.real("shift", self.shift, 0.0, lo_open=True)
        step = 8 * patch[0]  # the VAE's 8x times the transformer's patch
        check_video_size(self.height or step, self.width or step, self.num_frames or 1, *patch)
        if self.noise_correlation is not None:
            check_noise_correlation(bounds.real("noise_correlation", self.noise_correlation))
        if self.guidance is not None and self.guidance not in GUIDANCE_METHODS:
            raise ValueError(f"unknown guidance {self.guidance!r}: choose one of {', '.join(GUIDANCE_METHODS)}")
        if self.cache is not None:
            StepCache.parse(self.cache)
        split_choice(self.split_encoder)
        if bounds.integer("num_videos_per_prompt", self.num_videos_per_prompt) < 1:
            raise ValueError(f"num_videos_per_prompt must be at least 1, got {self.num_videos_per_prompt}")
        bounds.integer("num_videos_per_prompt", self.num_videos_per_prompt, 1, MAX_VIDEOS_PER_PROMPT)

    def call_kwargs(self) -> dict[str, Any]:
        """The same request as keyword arguments of `MotifVideoPipeline.__call__`; unset (None) fields are left
        out, so the pipeline's defaults apply, and the seed becomes a CPU generator."""
        kwargs = {f.metadata.get("kwarg", f.name): getattr(self, f.name) for f in fields(self) if f.name != "seed"}
        kwargs = {name: value for name, value in kwargs.items() if value is not None}
        kwargs["generator"] = torch.Generator("cpu").manual_seed(self.seed)
        return kwargs
