"""The denoising loop: one function of tensors, in the shape of flux's `sampling.denoise`.

`denoise` walks a configured diffusers flow scheduler from noise (t = 1) to data (t = 0) along the model's
velocity v = eps - x0 (`core.flow`); with FlowMatchEuler each step is x <- x + (sigma_next - sigma) v. On the
steps where guidance is active the conditional and unconditional predictions are combined by
`guidance.combine`, either from ONE batched forward over [cond; uncond] or from two forwards. It owns no I/O,
no validation and no logging: the pipeline resolves the inputs, calls it, and decodes the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from motif_video.core.encoders import pad_text
from motif_video.core.flow import to_model_timestep
from motif_video.pipeline.guidance import GuidanceConfig, GuidanceState, combine


@dataclass(frozen=True)
class Condition:
    """What the transformer sees besides the noisy latents and the time, for B videos."""

    text: torch.Tensor  # (B, L, D) text embeddings
    mask: torch.Tensor  # (B, L) bool, True on valid text tokens
    channels: torch.Tensor  # (B, 17, F', h, w) I2V condition channels (zeros for T2V), in the model's dtype
    image: torch.Tensor | None = None  # (B, N, D) SigLIP tokens of the first frame (I2V), or None
    branch: str = "cond"  # "cond", "uncond", or "joint" ([cond; uncond] halves): what step reuse keys on
    peers: Any = None  # guidance parallelism: the process group holding the other half of this joint call

    def with_text(self, text: torch.Tensor) -> Condition:
        return replace(self, text=text)


def stack_for_guidance(cond: Condition, uncond: Condition) -> Condition:
    """[cond; uncond] for one batched forward (2B videos), text padded to the longer of the two."""
    length = max(cond.text.shape[1], uncond.text.shape[1])
    c, cm = pad_text(cond.text, cond.mask, length)
    u, um = pad_text(uncond.text, uncond.mask, length)
    image = None if cond.image is None else torch.cat([cond.image, uncond.image])
    channels = torch.cat([cond.channels, uncond.channels])
    return Condition(torch.cat([c, u]), torch.cat([cm, um]), channels, image, branch="joint")


# (latents (B, 16, F', h, w) fp32, t (B,) on the 0..1000 scale, condition) -> velocity (B, 16, F', h, w)
ModelFn = Callable[[torch.Tensor, torch.Tensor, Condition], torch.Tensor]
# (step, scheduler timestep, latents, cond, uncond) -> (latents, cond, uncond), possibly edited
StepEnd = Callable[
    [int, torch.Tensor, torch.Tensor, Condition, Condition | None], tuple[torch.Tensor, Condition, Condition | None]
]


def denoise(
    model: ModelFn,
    latents: torch.Tensor,
    scheduler: Any,
    cond: Condition,
    uncond: Condition | None = None,
    guide: GuidanceConfig | None = None,
    *,
    batch_guidance: bool = True,
    step_end: StepEnd | None = None,
    stop: Callable[[], bool] | None = None,
) -> torch.Tensor:
    """Noise `latents` (B, 16, F', h, w) fp32 -> denoised latents, through `scheduler`'s steps.

    `scheduler` is already set to the schedule (`schedule.set_scheduler_sigmas`). `uncond` is needed only when
    `guide` is active on some step. `step_end` runs after every step and may return edited latents or
    conditions (a diffusers step-end callback); `stop()` is asked before every step and ends the loop early.
    """
    guide = guide or GuidanceConfig(method="none")
    timesteps = scheduler.timesteps
    sigmas = scheduler.sigmas.to(device=latents.device, dtype=torch.float32)
    num_steps = len(timesteps)
    state = GuidanceState()  # APG's momentum: fresh for every run
    joint = stack_for_guidance(cond, uncond) if batch_guidance and uncond is not None else None
    for i, t in enumerate(timesteps):
        if stop is not None and stop():
            break
        model_t = to_model_timestep(sigmas[i]).expand(latents.shape[0])
        if not guide.active(i, num_steps):
            v_cond, v_uncond = model(latents, model_t, cond), None
        elif joint is not None:
            v_cond, v_uncond = model(torch.cat([latents, latents]), torch.cat([model_t, model_t]), joint).chunk(2)
        else:
            v_cond, v_uncond = model(latents, model_t, cond), model(latents, model_t, uncond)
        velocity = combine(v_cond.float(), None if v_uncond is None else v_uncond.float(), guide, state)
        latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
        if step_end is not None:
            latents, new_cond, new_uncond = step_end(i, t, latents, cond, uncond)
            if joint is not None and (new_cond is not cond or new_uncond is not uncond):
                joint = stack_for_guidance(new_cond, new_uncond)
            cond, uncond = new_cond, new_uncond
    return latents
