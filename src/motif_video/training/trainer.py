"""The training loop: rectified flow + TREAD + joint T2V/I2V, AdamW with warmup and decay, clipping, EMA, exact resume.

`train(config, model, reader, run_dir)` runs `config.steps` optimizer steps. The model is parallelised from
outside (`parallel.parallelize`), so the same loop runs in one process or under torchrun with FSDP2.

Randomness lives in one place (style guide): a per-rank generator seeded from (seed, rank) draws the
timesteps, noise, I2V choices, prompt dropout and TREAD routes, always in the same order per step and never
inside a checkpointed region; the data order is the reader's own seed. Both generators' states and the reader
position are saved with every checkpoint, so a run killed at any point and resumed (`resume=True`, the default)
continues from its last COMPLETE checkpoint and ends bit-identical to an uninterrupted run.

A batch is a dict (or a `data.shard_reader.Batch`): latents (B, 16, F', h, w); text (B, L, D); text_mask (B, L);
captions (B strings; read instead of text when the model tunes its text encoder, `training.text_tuning`);
optional first_frame (B, 16, 1, h, w), image_tokens (B, L_img, D_img) + image_tokens_mask (B, L_img) (SigLIP
tokens of the first frame, given to the I2V samples of the batch only) and teacher (B, N, D_t) (REPA targets on the
latent token grid, `feature_source="shards"`). The reader is any iterator of batches with `state_dict()` /
`load_state_dict()`, e.g. `data.shard_reader.ShardReader` or `interleave.InterleavedBatches`.

REPA (`config.repa`): the model must be a `train_module.TrainModule` with a projector; the tap's projected features
are aligned to the teacher targets, gathered with the route's keep indices when the tap lies inside the route.
Targets come from the batch (`feature_source="shards"`) or from `teacher(latents)` (online). REPA is on while
`repa.active(step)` (the step counted within this `train` call, i.e. within the curriculum stage).
Only parameters with `requires_grad` are optimised (LoRA freezes the base); EMA follows those parameters.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from motif_video.core.flow import interpolate, to_model_timestep
from motif_video.models.routing import random_route
from motif_video.training.checkpoint import init_optimizer_state, latest_checkpoint, load_checkpoint, save_checkpoint
from motif_video.training.objective import (
    ObjectiveConfig,
    condition_channels,
    difference_loss,
    draw_i2v,
    draw_noise,
    draw_prompt_drop,
    drop_prompts,
    flow_loss,
    sample_timesteps,
)
from motif_video.training.parallel import world
from motif_video.training.repa import REPAConfig, gather_like_route, repa_loss, tap_keep

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteConfig:
    """TREAD: a random `ratio` of each sample's video tokens skips global blocks [start, end)."""

    start: int
    end: int
    ratio: float = 0.5


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float = 1e-4
    warmup_steps: int = 0
    decay_steps: int = 0  # the last `decay_steps` steps decay the lr linearly to `decay_to` x lr (0: constant)
    decay_to: float = 0.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    ema_decay: float | None = 0.9999
    seed: int = 0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 10
    route: RouteConfig | None = None
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    repa: REPAConfig | None = None
    text_lr: float | None = None  # lr of a tuned text encoder's weights (`text_tuning`); None: `lr`


class Batches(Iterator[dict]):
    """What the loop needs from a data reader."""

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def lr_multiplier(
    warmup_steps: int, steps: int = 0, decay_steps: int = 0, decay_to: float = 0.0
) -> Callable[[int], float]:
    """LR multiplier of optimizer step `step` (0-based): linear warmup over `warmup_steps`, constant, then over the
    last `decay_steps` of `steps` a linear decay that reaches `decay_to` on the last step (warmup-stable-decay)."""

    def multiplier(step: int) -> float:
        warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
        left = steps - step  # steps still to take, this one included
        if decay_steps <= 0 or left > decay_steps:
            return warm
        return min(warm, decay_to + (1.0 - decay_to) * (left - 1) / decay_steps)

    return multiplier


def make_ema(model: torch.nn.Module, init: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """EMA of the trainable parameters; `init` (e.g. the previous curriculum stage's EMA) wins where it has a
    tensor of the same shape, the current weights elsewhere (e.g. a newly inserted cross-attention)."""
    init = init or {}
    ema = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            given = init.get(name)
            same = given is not None and tuple(given.shape) == tuple(p.shape)
            ema[name] = _like(given, p) if same else p.detach().clone()
    return ema


def _like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A full tensor laid out like `param`: sharded the same way when `param` is an FSDP2 DTensor."""
    full = full.detach().to(device=param.device, dtype=param.dtype)
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full, param.device_mesh, param.placements)
    return full.clone()


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    for name, p in model.named_parameters():
        if name in ema:
            ema[name].lerp_(p.detach(), 1.0 - decay)


StepFlops = Callable[[tuple[int, ...], int, int, "RouteConfig | None"], float]
"""(latents shape, text length, image-token length, route) -> FLOPs of one training step on that batch."""


def train(
    config: TrainConfig,
    model: torch.nn.Module,
    reader: Batches,
    run_dir: str | Path,
    *,
    null_text: tuple[torch.Tensor, torch.Tensor] | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ema_init: dict[str, torch.Tensor] | None = None,
    step_flops: StepFlops | None = None,
    peak_flops: float | None = None,
    on_step: Callable[[int], None] | None = None,
    extra_state: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train to `config.steps`; returns the log rows. `stop_after` ends the process's run early (testing).

    teacher: online REPA targets, clean latents (B, 16, F', h, w) -> (B, N, D_t); ema_init: starting EMA (a
    previous stage's); step_flops / peak_flops: FLOPs per step and the device peak, for the tflops and MFU fields;
    on_step: called with the step number after every optimizer step; extra_state: JSON data stored in every
    checkpoint's trainer.json (the runner stores `model_config` and `lora` there, for `export.py`).
    """
    rank, world_size = world()
    device = next(model.parameters()).device
    _check_repa(config.repa, model, teacher)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("the model has no trainable parameters (requires_grad is False everywhere)")
    optimizer = torch.optim.AdamW(
        _param_groups(model, config), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, fused=False
    )
    init_optimizer_state(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(config.warmup_steps, config.steps, config.decay_steps, config.decay_to)
    )
    ema = make_ema(model, ema_init) if config.ema_decay is not None else None
    generator = torch.Generator(device="cpu").manual_seed(config.seed * 100_003 + rank)
    checkpoints = Path(run_dir) / "checkpoints"
    step = 0
    if resume and (found := latest_checkpoint(checkpoints)) is not None:
        trainer_state, rank_state = load_checkpoint(found, model, optimizer, ema)
        step = int(trainer_state["step"])
        scheduler.load_state_dict(trainer_state["scheduler"])
        generator.set_state(rank_state["generator"])
        reader.load_state_dict(rank_state["reader"])
        logger.info("resumed from %s at step %d", found, step)
    if null_text is None:
        dim = model.config.text_embed_dim
        null_text = (torch.zeros(1, dim), torch.ones(1, dtype=torch.bool))

    logs: list[dict[str, Any]] = []
    model.train()
    ran = 0
    window = _Window()
    while step < config.steps and (stop_after is None or ran < stop_after):
        started = time.perf_counter()
        batch = next(reader)
        loss, parts, extras = training_step(model, batch, config, generator, null_text, device, step, teacher)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        step_lr = scheduler.get_last_lr()[0]  # the lr this step took (logged), before the schedule moves on
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            update_ema(ema, model, config.ema_decay)
        step += 1
        ran += 1
        if on_step is not None:
            on_step(step)
        window.add(extras, step_flops, config.route)
        log_now = step % config.log_every == 0 or step == config.steps
        save_now = step % config.checkpoint_every == 0 or step == config.steps
        if (log_now or save_now) and not math.isfinite(float(loss.detach())):  # a host sync only on these steps
            raise FloatingPointError(f"non-finite loss at step {step}: lower the learning rate or check the data")
        if log_now:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            row = dict(step=step, loss=float(loss.detach()), grad_norm=float(norm), lr=step_lr)
            row.update({name: float(value.detach()) for name, value in parts.items()})
            row.update(window.rates(time.perf_counter(), world_size, peak_flops))
            row["step_s"] = time.perf_counter() - started
            logs.append(row)
            window = _Window()
            if on_log is not None and rank == 0:
                on_log(row)
        if save_now:  # never after a non-finite loss (checked above)
            trainer_state = dict(
                step=step, scheduler=scheduler.state_dict(), world_size=world_size, config=_jsonable(asdict(config))
            )
            trainer_state.update(extra_state or {})
            rank_state = dict(generator=generator.get_state(), reader=reader.state_dict())
            save_checkpoint(
                checkpoints, step, model, optimizer, ema, trainer_state, rank_state, keep=config.keep_checkpoints
            )
    return logs


def _param_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """One AdamW group, or two when `text_lr` gives the tuned text encoder (`text_encoder.*`) its own lr."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if config.text_lr is None:
        return [{"params": [p for _, p in named]}]
    text = [p for n, p in named if n.startswith("text_encoder.")]
    if not text:
        raise ValueError("text_lr is set but the model trains no text encoder (no trainable text_encoder.* weights)")
    rest = [p for n, p in named if not n.startswith("text_encoder.")]
    return [{"params": rest}, {"params": text, "lr": config.text_lr}]


class _Window:
    """Counts between two log rows: samples, video tokens, FLOPs, TREAD keep ratio, wall time."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.steps = self.samples = self.tokens = 0
        self.flops = 0.0
        self.keep: list[float] = []
        self.i2v: list[float] = []

    def add(self, extras: dict[str, Any], step_flops: StepFlops | None, route: RouteConfig | None) -> None:
        self.steps += 1
        self.samples += extras["samples"]
        self.tokens += extras["tokens"]
        self.i2v.append(extras["i2v"])
        if "tread_keep" in extras:
            self.keep.append(extras["tread_keep"])
        if step_flops is not None:
            self.flops += step_flops(extras["shape"], extras["text_len"], extras["image_len"], route)

    def rates(self, now: float, world_size: int, peak: float | None) -> dict[str, float]:
        seconds = max(now - self.started, 1e-9)
        out = {
            "samples_per_s": world_size * self.samples / seconds,
            "tokens_per_s": world_size * self.tokens / seconds,
            "i2v_fraction": sum(self.i2v) / max(len(self.i2v), 1),
        }
        if self.keep:
            out["tread_keep"] = sum(self.keep) / len(self.keep)
        if self.flops:
            out["tflops_per_device"] = self.flops / seconds / 1e12
            if peak:
                out["mfu"] = self.flops / seconds / peak
        return out


def _check_repa(repa: REPAConfig | None, model: torch.nn.Module, teacher: Callable | None) -> None:
    if repa is None or not repa.enabled:
        return
    if getattr(model, "repa_projector", None) is None:
        raise ValueError("REPA is enabled: wrap the transformer in training.train_module.TrainModule with a projector")
    if repa.feature_source == "online" and teacher is None:
        raise ValueError("REPA feature_source='online' needs a teacher (see training.repa_online.OnlineTargets)")


def training_step(
    model: torch.nn.Module,
    batch: dict[str, Any] | Any,
    config: TrainConfig,
    generator: torch.Generator,
    null_text: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    step: int = 0,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]:
    """One forward: draws (t, eps, I2V, dropout, route) from `generator` in a fixed order.

    Returns (total loss, its parts as tensors {flow_loss, difference_loss, repa_loss}, plain counts for the metrics)."""
    obj = config.objective
    if not isinstance(batch, dict):  # a data.shard_reader.Batch
        names = ("latents", "text", "text_mask", "first_frame", "image_tokens", "image_tokens_mask", "teacher")
        meta = getattr(batch, "meta", None)
        batch = {k: getattr(batch, k, None) for k in names} | {"captions": meta and [m.caption for m in meta]}
    x0 = batch["latents"].to(device=device, dtype=torch.float32)
    b, _, frames, h, w = x0.shape
    t = sample_timesteps(b, obj, generator)
    eps = draw_noise(tuple(x0.shape), obj, generator).to(device)
    xt, target = interpolate(x0, eps, t.to(device))
    is_video = torch.full((b,), frames > 1, dtype=torch.bool)
    i2v = draw_i2v(is_video, obj, generator)
    first = batch.get("first_frame")
    cond = condition_channels(first, tuple(x0.shape), i2v.to(device), t.to(device), obj)
    tuned_text = getattr(model, "text_encoder", None) is not None
    if tuned_text:  # the model encodes the captions itself (training.text_tuning); a dropped prompt is ""
        if batch.get("captions") is None:
            raise ValueError("the model tunes its text encoder, so batches need 'captions' (shards' SampleMeta)")
        drop = draw_prompt_drop(b, obj, generator, i2v).tolist()
        ids, mask = model.tokenize(["" if d else c for c, d in zip(batch["captions"], drop)])
    else:
        text, mask = drop_prompts(
            batch["text"].float(), batch["text_mask"].bool(), null_text[0], null_text[1], obj, generator, i2v
        )
    cfg = model.config
    num_tokens = (frames // cfg.patch_size_t) * (h // cfg.patch_size) * (w // cfg.patch_size)
    route = None
    extras: dict[str, Any] = {"samples": b, "tokens": b * num_tokens, "shape": tuple(x0.shape), "image_len": 0}
    if config.route is not None:
        r = config.route
        route = random_route(b, num_tokens, r.ratio, r.start, r.end, generator, device)
        extras["tread_keep"] = route.keep.shape[1] / num_tokens
    kwargs: dict[str, Any] = dict(
        hidden_states=torch.cat([xt, cond], dim=1),
        timestep=to_model_timestep(t.to(device)),
        route=route,
    )
    if tuned_text:
        kwargs.update(prompt_ids=ids.to(device), prompt_mask=mask.to(device))
    else:
        kwargs.update(encoder_hidden_states=text.to(device), encoder_attention_mask=mask.to(device))
    image_tokens = batch.get("image_tokens")
    if image_tokens is not None and cfg.image_embed_dim is not None and bool(i2v.any()):
        # SigLIP tokens of the first frame condition the I2V samples only; T2V samples see none (masked out).
        image_mask = batch.get("image_tokens_mask")
        image_mask = torch.ones(image_tokens.shape[:2], dtype=torch.bool) if image_mask is None else image_mask.bool()
        kwargs["image_embeds"] = image_tokens.to(device=device, dtype=torch.float32)
        kwargs["image_embeds_mask"] = (image_mask & i2v[:, None]).to(device)
        extras["image_len"] = image_tokens.shape[1]
    valid = mask.any(dim=0).nonzero()
    extras["text_len"] = int(valid.max()) + 1 if valid.numel() else 0  # the model trims trailing padding
    repa = config.repa
    repa_on = repa is not None and repa.active(step)
    if repa_on:
        kwargs["repa_block"] = repa.tap_block
    result = model(**kwargs)
    sample, features = result if isinstance(result, tuple) else (result.sample, None)
    loss = flow_loss(sample, target)
    parts = {"flow_loss": loss.detach()}
    if obj.temporal_difference_weight or obj.spatial_difference_weight:
        aux = difference_loss(sample, target, obj.temporal_difference_weight, obj.spatial_difference_weight)
        parts["difference_loss"] = aux.detach()
        loss = loss + aux
    if repa_on:
        targets = batch.get("teacher") if repa.feature_source == "shards" else teacher(x0)
        if targets is None:
            raise ValueError(
                "REPA feature_source='shards' but the batch has no 'teacher' tensor: prepare with --teacher"
            )
        targets = gather_like_route(targets.to(device=device, dtype=torch.float32), tap_keep(route, repa.tap_block))
        aux = repa_loss(features, targets)
        parts["repa_loss"] = aux.detach()
        loss = loss + repa.weight * aux
    extras["i2v"] = float(i2v.float().mean())
    return loss, parts, extras


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
