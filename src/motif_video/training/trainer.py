"""The training loop: rectified flow + TREAD + joint T2V/I2V, AdamW with warmup and decay, clipping, EMA, exact resume.

`train(config, model, reader, run_dir)` runs `config.steps` optimizer steps in phases: set up (AdamW, the lr
schedule, EMA, the per-rank generator), resume (the latest COMPLETE checkpoint), the loop over steps (a step, a log
row and a checkpoint when due) and finish (the log rows). The model is parallelised from outside
(`parallel.parallelize`), so the same loop runs in one process or under torchrun with FSDP2.

Each step is `step.training_step`: flat over one batch type, one model call, the weighted losses summed.

Randomness lives in one place (style guide): a per-rank generator seeded from (seed, rank) draws the timesteps,
noise, I2V choices, prompt dropout and TREAD routes, always in that order (`step.draw_step`) and never inside a
checkpointed region; the data order is the reader's own seed. Both generators' states and the reader position are
saved with every checkpoint, so a run killed at any point and resumed (`resume=True`, the default) continues from
its last COMPLETE checkpoint and ends bit-identical to an uninterrupted run.

The reader is any iterator of batches with `state_dict()` / `load_state_dict()` (e.g. `core.shard_reader.ShardReader`
or `interleave.InterleavedBatches`); a batch is a `step.TrainBatch`, a dict of its fields or a shard reader `Batch`.
What a caller needs from a run comes through callbacks: `on_log(row)` on rank 0 at every log step, and
`on_step_end(step, row)` on every rank after every step (row: that step's log row or None); raising `StopTraining`
there ends the run as a kill would (how tests interrupt runs).

REPA (`config.repa`): the model must be a `train_module.TrainModule` with a projector, and online targets need a
`teacher`. REPA is on while `repa.active(step)` (the step counted within this `train` call, i.e. within the
curriculum stage).
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

from motif_video.training.checkpoint import init_optimizer_state, latest_checkpoint, load_checkpoint, save_checkpoint
from motif_video.training.ema import make_ema, update_ema
from motif_video.training.metrics import RateWindow, StepFlops
from motif_video.training.objective import ObjectiveConfig
from motif_video.training.parallel import world
from motif_video.training.repa import REPAConfig
from motif_video.training.step import StepOutput, training_step

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


class Batches(Iterator[Any]):
    """What the loop needs from a data reader."""

    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class StopTraining(Exception):
    """Raised by an `on_step_end` callback to end the run after that step, as if the process were killed there."""


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


# ---------------------------------------------------------------------------------------------------- the loop


def train(
    config: TrainConfig,
    model: torch.nn.Module,
    reader: Batches,
    run_dir: str | Path,
    *,
    null_text: tuple[torch.Tensor, torch.Tensor] | None = None,
    resume: bool = True,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ema_init: dict[str, torch.Tensor] | None = None,
    step_flops: StepFlops | None = None,
    peak_flops: float | None = None,
    extra_state: dict[str, Any] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_step_end: Callable[[int, dict[str, Any] | None], None] | None = None,
) -> list[dict[str, Any]]:
    """Train to `config.steps`; returns this call's log rows.

    null_text: the empty prompt's encoding ((L0, D), (L0,)) that prompt dropout swaps in (default: zeros);
    teacher: online REPA targets, clean latents (B, 16, F', h, w) -> (B, N, D_t); ema_init: starting EMA (a
    previous stage's); step_flops / peak_flops: FLOPs per step and the device peak, for the tflops and MFU fields;
    extra_state: JSON data stored in every checkpoint's trainer.json (the runner stores `model_config` and `lora`
    there, for `export.py`); on_log / on_step_end: the callbacks of the module docstring.
    """
    rank, world_size = world()
    device = next(model.parameters()).device
    _check_repa(config.repa, model, teacher)
    state = _OptimizerState.create(config, model, ema_init, rank)
    checkpoints = Path(run_dir) / "checkpoints"
    step = _resume(checkpoints, model, state, reader) if resume else 0
    if null_text is None:
        null_text = (torch.zeros(1, model.config.text_embed_dim), torch.ones(1, dtype=torch.bool))

    logs: list[dict[str, Any]] = []
    window = RateWindow()
    model.train()
    while step < config.steps:
        started = time.perf_counter()
        out, grad_norm, lr = _optimizer_step(model, next(reader), config, state, null_text, device, step, teacher)
        step += 1
        window.add(out.counts, step_flops, config.route)
        log_now = step % config.log_every == 0 or step == config.steps
        save_now = step % config.checkpoint_every == 0 or step == config.steps
        if (log_now or save_now) and not math.isfinite(float(out.loss.detach())):  # a host sync only on these steps
            raise FloatingPointError(f"non-finite loss at step {step}: lower the learning rate or check the data")
        row = None
        if log_now:
            row = _log_row(step, out, grad_norm, lr, device)
            row.update(window.rates(time.perf_counter(), world_size, peak_flops), step_s=time.perf_counter() - started)
            logs.append(row)
            window = RateWindow()
            if on_log is not None and rank == 0:
                on_log(row)
        if save_now:  # never after a non-finite loss (checked above)
            _save(checkpoints, step, model, state, reader, config, world_size, extra_state)
        if on_step_end is not None:
            on_step_end(step, row)
    return logs


@dataclass
class _OptimizerState:
    """What a step updates besides the model, and what a checkpoint stores with it."""

    params: list[torch.nn.Parameter]
    adamw: torch.optim.AdamW
    schedule: torch.optim.lr_scheduler.LambdaLR
    ema: dict[str, torch.Tensor] | None
    generator: torch.Generator  # the per-rank source of every random draw (`draw_step`)

    @classmethod
    def create(
        cls, config: TrainConfig, model: torch.nn.Module, ema_init: dict[str, torch.Tensor] | None, rank: int
    ) -> _OptimizerState:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters (requires_grad is False everywhere)")
        adamw = torch.optim.AdamW(
            _param_groups(model, config),
            lr=config.lr,
            betas=config.betas,
            weight_decay=config.weight_decay,
            fused=False,
        )
        init_optimizer_state(model, adamw)
        multiplier = lr_multiplier(config.warmup_steps, config.steps, config.decay_steps, config.decay_to)
        schedule = torch.optim.lr_scheduler.LambdaLR(adamw, multiplier)
        ema = make_ema(model, ema_init) if config.ema_decay is not None else None
        generator = torch.Generator(device="cpu").manual_seed(config.seed * 100_003 + rank)
        return cls(params, adamw, schedule, ema, generator)


def _resume(checkpoints: Path, model: torch.nn.Module, state: _OptimizerState, reader: Batches) -> int:
    """Load the latest complete checkpoint into model, optimizer, EMA, generator and reader; -> its step (0: none)."""
    found = latest_checkpoint(checkpoints)
    if found is None:
        return 0
    trainer_state, rank_state = load_checkpoint(found, model, state.adamw, state.ema)
    state.schedule.load_state_dict(trainer_state["scheduler"])
    state.generator.set_state(rank_state["generator"])
    reader.load_state_dict(rank_state["reader"])
    step = int(trainer_state["step"])
    logger.info("resumed from %s at step %d", found, step)
    return step


def _optimizer_step(
    model: torch.nn.Module,
    batch: Any,
    config: TrainConfig,
    state: _OptimizerState,
    null_text: tuple[torch.Tensor, torch.Tensor],
    device: torch.device,
    step: int,
    teacher: Callable[[torch.Tensor], torch.Tensor] | None,
) -> tuple[StepOutput, torch.Tensor, float]:
    """One optimizer step on one batch -> (the step's output, the gradient norm before clipping, the lr it took)."""
    out = training_step(model, batch, config, state.generator, null_text, device, step, teacher)
    out.loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(state.params, config.grad_clip)
    state.adamw.step()
    lr = state.schedule.get_last_lr()[0]  # the lr this step took (logged), before the schedule moves on
    state.schedule.step()
    state.adamw.zero_grad(set_to_none=True)
    if state.ema is not None:
        update_ema(state.ema, model, config.ema_decay)
    return out, grad_norm, lr


def _log_row(step: int, out: StepOutput, grad_norm: torch.Tensor, lr: float, device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    row = dict(step=step, loss=float(out.loss.detach()), grad_norm=float(norm), lr=lr)
    row.update({name: float(value) for name, value in out.parts.items()})
    return row


def _save(
    checkpoints: Path,
    step: int,
    model: torch.nn.Module,
    state: _OptimizerState,
    reader: Batches,
    config: TrainConfig,
    world_size: int,
    extra_state: dict[str, Any] | None,
) -> None:
    trainer_state = dict(
        step=step, scheduler=state.schedule.state_dict(), world_size=world_size, config=_jsonable(asdict(config))
    )
    trainer_state.update(extra_state or {})
    rank_state = dict(generator=state.generator.get_state(), reader=reader.state_dict())
    save_checkpoint(
        checkpoints, step, model, state.adamw, state.ema, trainer_state, rank_state, keep=config.keep_checkpoints
    )


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


def _check_repa(repa: REPAConfig | None, model: torch.nn.Module, teacher: Callable | None) -> None:
    if repa is None or not repa.enabled:
        return
    if getattr(model, "repa_projector", None) is None:
        raise ValueError("REPA is enabled: wrap the transformer in training.train_module.TrainModule with a projector")
    if repa.feature_source == "online" and teacher is None:
        raise ValueError("REPA feature_source='online' needs a teacher (see training.repa_online.OnlineTargets)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
