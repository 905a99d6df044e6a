"""The inputs of one pipeline call: checked, resolved against the model's defaults, and mapped onto a batch.

`plan_call` turns the call's arguments into a `CallPlan` (every default filled in, every check that needs no
tensor work done) before anything is encoded. Videos are ordered prompt-major: prompt 0's
`num_videos_per_prompt` videos, then prompt 1's, ... (as diffusers). Images: one for every prompt, or one per
prompt; each distinct image is encoded once and mapped by index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from motif_video import bounds
from motif_video.core import latent_space as latent_ops
from motif_video.core.release import GenerationDefaults
from motif_video.pipeline.guidance import GuidanceConfig, resolve_guidance
from motif_video.pipeline.schedule import resolve_sigmas
from motif_video.pipeline.settings import MAX_STEPS

MAX_SEQUENCE_LENGTH = 8192  # text tokens per prompt (the official encoder reads 512)

OUTPUT_TYPES = ("np", "pil", "pt", "latent")
CALLBACK_TENSORS = ("latents", "prompt_embeds", "negative_prompt_embeds")
# `negative_prompt` left at this default means "the model's default negative prompt" (`GenerationDefaults`).
MODEL_DEFAULT_NEGATIVE = "<model default negative prompt>"


@dataclass(frozen=True)
class CallPlan:
    """One call with every default filled in and every input checked."""

    prompts: list[str] | None  # None when prompt embeddings are given instead
    n_prompts: int
    num_videos_per_prompt: int
    negative_prompt: str | list[str] | None  # None or "": the empty prompt
    negative_embeds_given: bool
    height: int
    width: int
    num_frames: int
    shift: float
    noise_correlation: float
    sigmas: np.ndarray  # (N,) the schedule, from 1 towards 0 (the final 0 is the scheduler's)
    custom_schedule: bool
    guide: GuidanceConfig
    i2v: bool
    first_frame_latent: str  # "sample" | "mode"
    callback_tensors: tuple[str, ...]
    batch_guidance: bool
    max_sequence_length: int

    @property
    def batch(self) -> int:
        return self.n_prompts * self.num_videos_per_prompt

    @property
    def needs_uncond(self) -> bool:
        """Whether any step runs guidance (and so needs the unconditional text)."""
        return any(self.guide.active(i, len(self.sigmas)) for i in range(len(self.sigmas)))

    def record(self, **runtime: Any) -> dict[str, Any]:
        """The resolved settings as the run record stores them; `runtime`: scheduler, dtypes, device."""
        return dict(
            task="i2v" if self.i2v else "t2v",
            height=self.height,
            width=self.width,
            num_frames=self.num_frames,
            num_inference_steps=len(self.sigmas),
            shift=self.shift,
            noise_correlation=float(self.noise_correlation),
            sigmas=[float(x) for x in self.sigmas],
            custom_schedule=self.custom_schedule,
            scheduler=runtime.pop("scheduler"),
            guidance=self.guide.to_dict(),
            negative_prompt="<embeddings>" if self.negative_embeds_given else self.negative_prompt,
            num_videos_per_prompt=self.num_videos_per_prompt,
            first_frame_latent=self.first_frame_latent if self.i2v else None,
            batch_guidance=self.batch_guidance,
            max_sequence_length=self.max_sequence_length,
            **runtime,
        )


def plan_call(
    defaults: GenerationDefaults,
    guidance_config: GuidanceConfig,
    patch: tuple[int, int],
    *,
    prompt: str | list[str] | None,
    prompt_embeds: torch.Tensor | None,
    negative_prompt: str | list[str] | None,
    negative_prompt_embeds: torch.Tensor | None,
    image: Any,
    height: int | None,
    width: int | None,
    num_frames: int | None,
    num_inference_steps: int | None,
    sigmas: list[float] | None,
    timesteps: list[float] | None,
    shift: float | None,
    noise_correlation: float | None,
    guidance: GuidanceConfig | str | None,
    guidance_scale: float | None,
    apg_eta: float | None,
    apg_norm_threshold: float | None,
    apg_momentum: float | None,
    num_videos_per_prompt: int,
    first_frame_latent: str,
    output_type: str,
    callback: Callable[..., Any] | None,
    callback_tensors: list[str] | tuple[str, ...],
    attention_kwargs: dict[str, Any] | None,
    batch_guidance: bool,
    max_sequence_length: int,
) -> CallPlan:
    """Check a call's arguments and fill in the model's defaults (`defaults`, the pipeline's guidance config, the
    transformer's (spatial, temporal) `patch`); raises ValueError (TypeError for a wrong type) naming what to change."""
    check_types_of_call(
        height=height, width=width, num_frames=num_frames, num_inference_steps=num_inference_steps, shift=shift,
        guidance_scale=guidance_scale, apg_eta=apg_eta, num_videos_per_prompt=num_videos_per_prompt,
        max_sequence_length=max_sequence_length, negative_prompt=negative_prompt,
    )  # fmt: skip
    height = height or defaults.height
    width = width or defaults.width
    num_frames = num_frames or defaults.num_frames
    if num_inference_steps is None and sigmas is None and timesteps is None:
        num_inference_steps = defaults.num_inference_steps
    latent_ops.check_video_size(height, width, num_frames, *patch)
    if noise_correlation is None:
        noise_correlation = defaults.noise_correlation
    latent_ops.check_noise_correlation(noise_correlation)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    if num_videos_per_prompt < 1:
        raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
    if first_frame_latent not in ("sample", "mode"):
        raise ValueError(f"first_frame_latent must be 'sample' or 'mode', got {first_frame_latent!r}")
    if hasattr(callback, "tensor_inputs"):  # diffusers' PipelineCallback objects
        callback_tensors = callback.tensor_inputs
    unknown = set(callback_tensors) - set(CALLBACK_TENSORS)
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs may name {CALLBACK_TENSORS}, got {sorted(unknown)}")
    if attention_kwargs and attention_kwargs.get("scale", 1.0) != 1.0:
        raise ValueError("attention_kwargs['scale'] (LoRA scale) is not supported yet")

    i2v = image is not None
    guide = resolve_guidance(guidance_config, guidance, guidance_scale, apg_eta, apg_norm_threshold, apg_momentum)
    if shift is None:
        shift = defaults.shift_i2v if i2v else defaults.shift_t2v
    if isinstance(negative_prompt, str) and negative_prompt == MODEL_DEFAULT_NEGATIVE:
        negative_prompt = defaults.negative_prompt
    schedule = resolve_sigmas(num_inference_steps, float(shift), sigmas, timesteps)
    prompts = prompt_list(prompt, prompt_embeds)
    if i2v and latent_ops.latent_shape(1, 1, height, width, num_frames)[2] < 2:
        raise ValueError("image-to-video needs at least 5 frames (2 latent frames): raise num_frames")
    return CallPlan(
        prompts=prompts,
        n_prompts=len(prompts) if prompts is not None else prompt_embeds.shape[0],
        num_videos_per_prompt=num_videos_per_prompt,
        negative_prompt=negative_prompt,
        negative_embeds_given=negative_prompt_embeds is not None,
        height=height,
        width=width,
        num_frames=num_frames,
        shift=float(shift),
        noise_correlation=noise_correlation,
        sigmas=schedule,
        custom_schedule=sigmas is not None or timesteps is not None,
        guide=guide,
        i2v=i2v,
        first_frame_latent=first_frame_latent,
        callback_tensors=tuple(callback_tensors),
        batch_guidance=batch_guidance,
        max_sequence_length=max_sequence_length,
    )


def check_types_of_call(**values: Any) -> None:
    """Types and bounds of a call's scalar arguments (None: the default applies)."""
    for name in ("height", "width", "num_frames", "num_videos_per_prompt", "max_sequence_length"):
        if values[name] is not None:
            bounds.integer(name, values[name])
    if values["num_inference_steps"] is not None:
        bounds.integer("num_inference_steps", values["num_inference_steps"], 1, MAX_STEPS)
    bounds.integer("max_sequence_length", values["max_sequence_length"], 1, MAX_SEQUENCE_LENGTH)
    if values["shift"] is not None:
        bounds.real("shift", values["shift"], 0.0, lo_open=True)
    if values["guidance_scale"] is not None:
        bounds.real("guidance_scale", values["guidance_scale"], 0.0)
    if values["apg_eta"] is not None:
        bounds.real("apg_eta", values["apg_eta"])
    negative = values["negative_prompt"]
    for text in negative if isinstance(negative, (list, tuple)) else [] if negative is None else [negative]:
        bounds.utf8("negative_prompt", text)


def check_generator(generator: Any, batch: int) -> None:
    """None, a torch.Generator, or a list of one per video (TypeError / ValueError otherwise)."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if isinstance(generator, (list, tuple)) and all(isinstance(g, torch.Generator) for g in generator):
        if len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} videos: pass one, or one per video")
        return
    raise TypeError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")


def prompt_list(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> list[str] | None:
    """The prompts as a non-empty list of non-empty strings, or None when embeddings are given instead."""
    if prompt is None:
        if prompt_embeds is None:
            raise ValueError("pass a prompt (or prompt_embeds)")
        return None
    if prompt_embeds is not None:
        raise ValueError("pass either prompt or prompt_embeds, not both")
    if not isinstance(prompt, (str, list, tuple)):
        raise TypeError(f"prompt must be a string or a list of strings, got {type(prompt).__name__}")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("the prompt list is empty")
    for p in prompts:
        if not isinstance(p, str):
            raise TypeError(f"prompts must be strings, got {type(p).__name__}")
        if not p.strip():
            raise ValueError("prompts must be non-empty strings")
        bounds.utf8("prompt", p)
    return prompts


def negative_list(negative_prompt: str | list[str] | None, n_prompts: int) -> list[str]:
    """One negative prompt per prompt (None means the empty prompt)."""
    negatives = list(negative_prompt) if isinstance(negative_prompt, list) else [negative_prompt or ""] * n_prompts
    if len(negatives) != n_prompts:
        raise ValueError(f"got {len(negatives)} negative prompts for {n_prompts} prompts")
    return negatives


def image_list(image: Any, n_prompts: int) -> tuple[list[Any], torch.Tensor]:
    """-> (distinct images, (n_prompts,) index of each prompt's image)."""
    if isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 4 and image.shape[0] > 1:
        image = list(image)
    if isinstance(image, (list, tuple)):
        images = list(image)
        if len(images) == 1:
            return images, torch.zeros(n_prompts, dtype=torch.long)
        if len(images) != n_prompts:
            raise ValueError(f"got {len(images)} images for {n_prompts} prompts: pass one, or one per prompt")
        return images, torch.arange(n_prompts)
    return [image], torch.zeros(n_prompts, dtype=torch.long)


def mask_or_ones(mask: torch.Tensor | None, embeds: torch.Tensor) -> torch.Tensor:
    """A (B, L) bool mask for (B, L, D) embeddings; None means every token is valid."""
    if mask is None:
        return torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
    if tuple(mask.shape) != tuple(embeds.shape[:2]):
        shapes = f"{tuple(mask.shape)} vs embeddings {tuple(embeds.shape[:2])}"
        raise ValueError(f"attention mask shape does not match its embeddings: {shapes}")
    return mask.to(device=embeds.device, dtype=torch.bool)
