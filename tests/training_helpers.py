"""Helpers for the training tests: interrupt a run from outside, through the trainer's `on_step_end` callback."""

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
