"""One training step, flat over one batch type: read the batch, draw, call the model once, sum weighted losses.

`training_step(model, batch, config, generator, ...)`:
1. reads the named fields of a `TrainBatch` (a dict of its fields or a `core.shard_reader.Batch` is converted);
2. draws every random choice of the step from the per-rank generator in one fixed order (`draw_step`: t, eps, I2V,
   prompt dropout, TREAD route), never inside a checkpointed region, so a resumed run draws what it would have;
3. builds the model input (x_t and the 17 condition channels, `objective.py`), the text (encoded prompts with the
   dropped ones replaced by the empty prompt's encoding, or caption ids for a model that tunes its text encoder)
   and the SigLIP tokens of the I2V samples, and calls the model once with explicit keywords;
4. gets one output type back (`sample`: the velocity, `repa_features`: the projected tap or None) and sums the
   weighted losses: flow MSE, the difference loss when on, REPA (weight `repa.weight`) while `repa.active(step)`.

REPA targets come from the batch (`feature_source="shards"`) or from `teacher(latents)` (online), gathered with the
route's keep indices when the tap lies inside the routed span (`repa.tap_keep`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from motif_video.core.flow import interpolate, to_model_timestep
from motif_video.core.teachers import gather_like_route
from motif_video.models.routing import TokenRoute, random_route
from motif_video.training.objective import (
    apply_prompt_drop,
    condition_channels,
    difference_loss,
    draw_i2v,
    draw_noise,
    draw_prompt_drop,
    flow_loss,
    sample_timesteps,
)
from motif_video.training.repa import REPAConfig, repa_loss, tap_keep

if TYPE_CHECKING:
    from motif_video.training.trainer import TrainConfig


@dataclass
class TrainBatch:
    """The one batch type of a step (B samples)."""

    latents: torch.Tensor  # (B, 16, F', h, w) clean normalised VAE latents
    text: torch.Tensor | None = None  # (B, L, D) encoded prompts
    text_mask: torch.Tensor | None = None  # (B, L) bool
    captions: list[str] | None = None  # read instead of text when the model tunes its text encoder (text_tuning)
    first_frame: torch.Tensor | None = None  # (B, 16, 1, h, w)
    image_tokens: torch.Tensor | None = None  # (B, L_img, D_img) SigLIP tokens of the first frame (I2V samples only)
    image_tokens_mask: torch.Tensor | None = None  # (B, L_img) bool
    teacher: torch.Tensor | None = None  # (B, N, D_t) REPA targets on the latent token grid (feature_source="shards")

    @classmethod
    def of(cls, batch: TrainBatch | dict[str, Any] | Any) -> TrainBatch:
        """From a dict of these fields or a `core.shard_reader.Batch` (its captions from the samples' meta)."""
        if isinstance(batch, cls):
            return batch
        if isinstance(batch, dict):
            return cls(**{f.name: batch.get(f.name) for f in fields(cls)})
        meta = getattr(batch, "meta", None)
        tensors = {f.name: getattr(batch, f.name, None) for f in fields(cls) if f.name != "captions"}
        return cls(**tensors, captions=meta and [m.caption for m in meta])


@dataclass
class Draws:
    """Every random choice of one step."""

    t: torch.Tensor  # (B,) in (0, 1), t = 1 is noise
    noise: torch.Tensor  # (B, 16, F', h, w) eps
    i2v: torch.Tensor  # (B,) bool: trained as image-to-video
    drop_prompt: torch.Tensor  # (B,) bool: the prompt is replaced by the empty one
    route: TokenRoute | None  # TREAD route (B, K kept tokens), None without `config.route`


def draw_step(
    shape: tuple[int, ...], num_tokens: int, config: TrainConfig, generator: torch.Generator, device: torch.device
) -> Draws:
    """Draw a step's randomness from `generator` in the fixed order t, eps, I2V, prompt dropout, route (the order
    resume relies on). shape: the latents' (B, 16, F', h, w); num_tokens: video tokens per sample."""
    b, frames, obj, r = shape[0], shape[2], config.objective, config.route
    t = sample_timesteps(b, obj, generator)
    noise = draw_noise(shape, obj, generator)
    i2v = draw_i2v(torch.full((b,), frames > 1, dtype=torch.bool), obj, generator)  # images are always T2V
    drop_prompt = draw_prompt_drop(b, obj, generator, i2v)
    route = None if r is None else random_route(b, num_tokens, r.ratio, r.start, r.end, generator, device)
    return Draws(t, noise, i2v, drop_prompt, route)


class StepOutput(NamedTuple):
    """`training_step`'s result: the loss to backpropagate, its parts (detached) and plain counts for the metrics."""

    loss: torch.Tensor
    parts: dict[str, torch.Tensor]  # flow_loss, and difference_loss / repa_loss when on
    counts: dict[str, Any]  # samples, tokens, shape, text_len, image_len, i2v (fraction), tread_keep (routed)


def training_step(
    model: torch.nn.Module,
    batch: TrainBatch | dict[str, Any] | Any,
    config: TrainConfig,
    generator: torch.Generator,
    null_text: tuple[torch.Tensor, torch.Tensor] | None,
    device: torch.device | str,
    step: int = 0,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> StepOutput:
    """One forward of one batch, with the draws of `draw_step`; null_text: ((L0, D), (L0,)) for dropped prompts."""
    batch, cfg, obj = TrainBatch.of(batch), model.config, config.objective
    x0 = batch.latents.to(device=device, dtype=torch.float32)  # (B, 16, F', h, w)
    b, _, frames, h, w = x0.shape
    num_tokens = (frames // cfg.patch_size_t) * (h // cfg.patch_size) * (w // cfg.patch_size)
    tuned_text = getattr(model, "text_encoder", None) is not None  # it encodes the captions itself
    if tuned_text and batch.captions is None:
        raise ValueError("the model tunes its text encoder, so batches need 'captions' (shards' SampleMeta)")
    draws = draw_step(tuple(x0.shape), num_tokens, config, generator, device)
    t = draws.t.to(device)
    xt, target = interpolate(x0, draws.noise.to(device), t)
    cond = condition_channels(batch.first_frame, tuple(x0.shape), draws.i2v.to(device), t, obj)  # (B, 17, F', h, w)
    text, text_mask = _text_inputs(model, batch, draws.drop_prompt, null_text, tuned_text)
    image, image_mask = _image_inputs(batch, draws.i2v, cfg.image_embed_dim is not None)
    repa = config.repa if config.repa is not None and config.repa.active(step) else None
    out = model(
        hidden_states=torch.cat([xt, cond], dim=1),
        timestep=to_model_timestep(t),
        route=draws.route,
        repa_block=None if repa is None else repa.tap_block,
        image_embeds=None if image is None else image.to(device=device, dtype=torch.float32),
        image_embeds_mask=None if image_mask is None else image_mask.to(device),
        **{name: value.to(device) for name, value in text.items()},
    )

    losses = {"flow_loss": (1.0, flow_loss(out.sample, target))}  # name -> (weight, value)
    if obj.temporal_difference_weight or obj.spatial_difference_weight:  # weight 1: its lambdas are inside
        tw, sw = obj.temporal_difference_weight, obj.spatial_difference_weight
        losses["difference_loss"] = (1.0, difference_loss(out.sample, target, tw, sw))
    if repa is not None:
        targets = _repa_targets(batch, repa, teacher, x0, draws.route)  # (B, N or K, D_t)
        losses["repa_loss"] = (repa.weight, repa_loss(out.repa_features, targets))
    loss = sum(weight * value for weight, value in losses.values())

    valid = text_mask.any(dim=0).nonzero()
    counts = dict(
        samples=b,
        tokens=b * num_tokens,
        shape=tuple(x0.shape),
        text_len=int(valid.max()) + 1 if valid.numel() else 0,  # the model trims trailing padding
        image_len=0 if image is None else image.shape[1],
        i2v=float(draws.i2v.float().mean()),
    )
    if draws.route is not None:
        counts["tread_keep"] = draws.route.keep.shape[1] / num_tokens
    return StepOutput(loss, {name: value.detach() for name, (_, value) in losses.items()}, counts)


def _text_inputs(
    model: torch.nn.Module,
    batch: TrainBatch,
    drop: torch.Tensor,
    null_text: tuple[torch.Tensor, torch.Tensor] | None,
    tuned_text: bool,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The model's text keywords and the text mask (B, L): caption ids for a tuned text encoder (a dropped prompt
    is ""), else the encoded prompts with the dropped ones replaced by `null_text`."""
    if tuned_text:
        ids, mask = model.tokenize(["" if d else c for c, d in zip(batch.captions, drop.tolist())])
        return {"prompt_ids": ids, "prompt_mask": mask}, mask
    text, mask = apply_prompt_drop(batch.text.float(), batch.text_mask.bool(), null_text[0], null_text[1], drop)
    return {"encoder_hidden_states": text, "encoder_attention_mask": mask}, mask


def _image_inputs(
    batch: TrainBatch, i2v: torch.Tensor, takes_images: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """SigLIP tokens (B, L_img, D_img) and their mask: they condition the I2V samples only (T2V ones: masked out)."""
    if batch.image_tokens is None or not takes_images or not bool(i2v.any()):
        return None, None
    mask = batch.image_tokens_mask
    mask = torch.ones(batch.image_tokens.shape[:2], dtype=torch.bool) if mask is None else mask.bool()
    return batch.image_tokens, mask & i2v[:, None]


def _repa_targets(
    batch: TrainBatch,
    repa: REPAConfig,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None,
    x0: torch.Tensor,
    route: TokenRoute | None,
) -> torch.Tensor:
    """REPA targets (B, N or K, D_t) in float32: stored in the batch or computed online, gathered like the tap."""
    targets = batch.teacher if repa.feature_source == "shards" else teacher(x0)
    if targets is None:
        raise ValueError("REPA feature_source='shards' but the batch has no 'teacher' tensor: prepare with --teacher")
    return gather_like_route(targets.to(device=x0.device, dtype=torch.float32), tap_keep(route, repa.tap_block))


__all__ = ["Draws", "StepOutput", "TrainBatch", "draw_step", "training_step"]
