"""The sampler's model function for one pipeline call: latents (B, 16, F', h, w) fp32, t (B,) on 0..1000 and a
`Condition` -> velocity (B, 16, F', h, w).

Two kinds, chosen per call by `model_function`:
- `velocity`: the plain forward (embed -> encoder -> DDT decoder -> head), the reference's graph.
- `step_cache.EncoderReuse`: the same phases called one by one, when a step-reuse rule is set (`cache=`) or the
  encoder of a guidance batch is split (`split_encoder`).

**Split encoder, and why it is the default on CUDA.** Under guidance the [cond; uncond] batch pads both texts to
the longer one, so the encoder's joint attention needs a key mask, and on CUDA a masked SDPA call cannot use the
flash kernel (PyTorch falls back to the memory-efficient one, or the math path). Split, the encoder runs once per
group of videos with the same text length, each with its padding trimmed, so no attention anywhere needs a mask; the
decoder (no text) stays batched. Same numbers up to rounding (PSNR 120 dB against the batched path on the small
model). The first H200 measurements (docs/performance.md) are why: one mask-free B=1 forward of the 2B model took
468 ms at 832x480x49 while the batched, masked guided step took 1,096 ms (against 2 x 468 = 936 ms of transformer
work, and diffusers' two-pass step 1,056 ms). On CPU, where a masked attention costs what an unmasked one does and
two B=1 passes are slower than one B=2 pass, splitting costs 8% (`benchmarks/bench_speed.py`), so "auto" keeps the
batched encoder there. `split_encoder`: None or "auto" (on for a CUDA device), True / "on", False / "off".
The GPU suite (`benchmarks/gpu_suite.py`) times both ("exact" and "batched") at every size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from motif_video.pipeline.sampler import Condition
from motif_video.pipeline.step_cache import EncoderReuse, StepCache

SPLIT_CHOICES = ("auto", "on", "off")

ModelFunction = Callable[[torch.Tensor, torch.Tensor, Condition], torch.Tensor]


def split_choice(value: bool | str | None) -> bool | None:
    """`split_encoder` as given -> True, False or None ("auto"); anything else is a ValueError."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in SPLIT_CHOICES:
        return {"auto": None, "on": True, "off": False}[value.strip().lower()]
    raise ValueError(f"split_encoder must be True, False, or one of {', '.join(SPLIT_CHOICES)}; got {value!r}")


def resolve_split(value: bool | str | None, device: torch.device) -> bool:
    """Whether this call splits the encoder of its guidance batch: as asked, or under "auto" on a CUDA device."""
    choice = split_choice(value)
    return torch.device(device).type == "cuda" if choice is None else choice


def check_options(
    cache: str | StepCache | None, split_encoder: bool | str | None, attention_kwargs: dict[str, Any] | None
) -> None:
    """The call's model options, checked before any heavy work (ValueError saying what to change)."""
    StepCache.parse(cache)
    split_choice(split_encoder)
    if attention_kwargs and float(attention_kwargs.get("scale", 1.0)) != 1.0:
        raise ValueError("attention_kwargs['scale'] (LoRA scale) is not supported by this model")


def velocity(
    transformer: Any,
    latents: torch.Tensor,
    t: torch.Tensor,
    condition: Condition,
    dtype: torch.dtype,
    attention_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """The plain forward: latents (B, 16, F', h, w) fp32, t (B,) on 0..1000 -> velocity (B, 16, F', h, w)."""
    x = torch.cat([latents.to(dtype), condition.channels], dim=1)  # (B, 33, F', h, w)
    return transformer(
        hidden_states=x,
        timestep=t,
        encoder_hidden_states=condition.text,
        encoder_attention_mask=condition.mask,
        image_embeds=condition.image,
        attention_kwargs=attention_kwargs,
        return_dict=False,
    )[0]


def model_function(
    transformer: Any,
    dtype: torch.dtype,
    device: torch.device,
    cache: str | StepCache | None = None,
    split_encoder: bool | str | None = None,
    curve: dict[str, list[float]] | None = None,
    guided: bool = True,
    attention_kwargs: dict[str, Any] | None = None,
) -> tuple[ModelFunction, EncoderReuse | None]:
    """(the model function, its `EncoderReuse` or None) for one call. `cache`: a step-reuse rule; `curve`: the
    model's calibration (`GenerationDefaults.step_cache`); `guided`: the call batches an unconditional branch with
    the conditional one (without that there is no guidance batch to split)."""
    check_options(cache, split_encoder, attention_kwargs)
    rule = StepCache.parse(cache)
    split = resolve_split(split_encoder, device) and guided
    if rule is None and not split:

        def plain(latents: torch.Tensor, t: torch.Tensor, condition: Condition) -> torch.Tensor:
            return velocity(transformer, latents, t, condition, dtype, attention_kwargs)

        return plain, None
    reuse = EncoderReuse(transformer, rule or StepCache("ddt"), dtype, split, curve)
    return reuse, reuse
