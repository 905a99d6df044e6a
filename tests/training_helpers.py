"""Helpers for the training tests: a one-stage tiny recipe, and interrupting a run from outside through the trainer's
`on_step_end` callback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from motif_video.training.trainer import StopTraining


def kill_after(last_step: int) -> Callable[[int, dict[str, Any] | None], None]:
    """An `on_step_end` callback that ends the run after step `last_step` (its checkpoint, if due, is written)."""

    def on_step_end(step: int, row: dict[str, Any] | None) -> None:
        if step == last_step:
            raise StopTraining(f"killed after step {step}")

    return on_step_end


def tiny_recipe(steps: int) -> str:
    """A one-stage TOML recipe on the tiny preset and synthetic 5x32x32 shards: `steps` steps, a checkpoint every 2."""
    return f"""
log_every = 1
checkpoint_every = 2
ema_decay = 0.9
tensorboard = false
[model]
preset = "tiny"
[parallel]
param_dtype = "float32"
activation_checkpointing = false
[[stages]]
name = "only"
steps = {steps}
lr = 1e-3
[stages.sources.video]
path = "synthetic"
buckets = ["5x32x32"]
batch_size = 2
synthetic_shards = 2
"""
