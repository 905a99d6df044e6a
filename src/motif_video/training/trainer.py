"""The training loop: rectified flow + TREAD + joint T2V/I2V, AdamW with warmup, clipping, EMA, exact resume.

`train(config, model, reader, run_dir)` runs `config.steps` optimizer steps. The model is parallelised from
outside (`parallel.parallelize`), so the same loop runs in one process or under torchrun with FSDP2.

Randomness lives in one place (style guide): a per-rank generator seeded from (seed, rank) draws the
timesteps, noise, I2V choices, prompt dropout and TREAD routes, always in the same order per step and never
inside a checkpointed region; the data order is the reader's own seed. Both generators' states and the reader
position are saved with every checkpoint, so a run killed at any point and resumed (`resume=True`, the default)
continues from its last COMPLETE checkpoint and ends bit-identical to an uninterrupted run.

A batch is a dict (or a `data.shard_reader.Batch`): latents (B, 16, F', h, w); text (B, L, D); text_mask (B, L);
optional first_frame (B, 16, 1, h, w). The reader is any iterator of batches with `state_dict()` /
`load_state_dict()`, e.g. `data.shard_reader.ShardReader`.
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

from motif_video.models.routing import random_route
from motif_video.pipeline.schedule import to_model_timestep
from motif_video.training.checkpoint import init_optimizer_state, latest_checkpoint, load_checkpoint, save_checkpoint
from motif_video.training.objective import (
    ObjectiveConfig,
    condition_channels,
    draw_i2v,
    drop_prompts,
    flow_loss,
    interpolate,
    sample_timesteps,
)
from motif_video.training.parallel import world

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


class Batches(Iterator[dict]):
    """What the loop needs from a data reader."""

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def warmup_constant(warmup_steps: int) -> Callable[[int], float]:
    """LR multiplier: linear warmup over `warmup_steps`, then constant."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def make_ema(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@torch.no_grad()
def update_ema(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    for name, p in model.named_parameters():
        ema[name].lerp_(p.detach(), 1.0 - decay)


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
) -> list[dict[str, Any]]:
    """Train to `config.steps`; returns the log rows. `stop_after` ends the process's run early (testing)."""
    rank, world_size = world()
    device = next(model.parameters()).device
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, fused=False
    )
    init_optimizer_state(model, optimizer)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_constant(config.warmup_steps))
    ema = make_ema(model) if config.ema_decay is not None else None
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
    while step < config.steps and (stop_after is None or ran < stop_after):
        started = time.perf_counter()
        batch = next(reader)
        loss, extras = training_step(model, batch, config, generator, null_text, device)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            update_ema(ema, model, config.ema_decay)
        step += 1
        ran += 1
        log_now = step % config.log_every == 0 or step == config.steps
        save_now = step % config.checkpoint_every == 0 or step == config.steps
        if (log_now or save_now) and not math.isfinite(float(loss.detach())):  # a host sync only on these steps
            raise FloatingPointError(f"non-finite loss at step {step}: lower the learning rate or check the data")
        if log_now:
            norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
            lr = scheduler.get_last_lr()[0]
            row = dict(step=step, loss=float(loss.detach()), grad_norm=float(norm), lr=lr, **extras)
            row["step_s"] = time.perf_counter() - started
            logs.append(row)
            if on_log is not None and rank == 0:
                on_log(row)
        if save_now:  # never after a non-finite loss (checked above)
            trainer_state = dict(
                step=step, scheduler=scheduler.state_dict(), world_size=world_size, config=_jsonable(asdict(config))
            )
            rank_state = dict(generator=generator.get_state(), reader=reader.state_dict())
            save_checkpoint(
                checkpoints, step, model, optimizer, ema, trainer_state, rank_state, keep=config.keep_checkpoints
            )
    return logs


def training_step(
    model: torch.nn.Module,
    batch: dict[str, Any] | Any,
    config: TrainConfig,
    generator: torch.Generator,
    null_text: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One forward: draws (t, eps, I2V, dropout, route) from `generator` in a fixed order; returns the loss."""
    obj = config.objective
    if not isinstance(batch, dict):  # a data.shard_reader.Batch
        batch = {k: getattr(batch, k) for k in ("latents", "text", "text_mask", "first_frame")}
    x0 = batch["latents"].to(device=device, dtype=torch.float32)
    b, _, frames, h, w = x0.shape
    t = sample_timesteps(b, obj, generator)
    eps = torch.randn(x0.shape, generator=generator).to(device)
    xt, target = interpolate(x0, eps, t.to(device))
    is_video = torch.full((b,), frames > 1, dtype=torch.bool)
    i2v = draw_i2v(is_video, obj, generator)
    first = batch.get("first_frame")
    cond = condition_channels(first, tuple(x0.shape), i2v.to(device), t.to(device), obj)
    text, mask = drop_prompts(
        batch["text"].float(), batch["text_mask"].bool(), null_text[0], null_text[1], obj, generator
    )
    route = None
    extras: dict[str, float] = {"i2v_fraction": float(i2v.float().mean())}
    if config.route is not None:
        p = model.config.patch_size
        num_tokens = (frames // model.config.patch_size_t) * (h // p) * (w // p)
        route = random_route(b, num_tokens, config.route.ratio, config.route.start, config.route.end, generator, device)
        extras["tread_keep"] = route.keep.shape[1] / num_tokens
    out = model(
        hidden_states=torch.cat([xt, cond], dim=1),
        timestep=to_model_timestep(t.to(device)),
        encoder_hidden_states=text.to(device),
        encoder_attention_mask=mask.to(device),
        route=route,
    )
    return flow_loss(out.sample, target), extras


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
