"""Sampling schedules for rectified flow (the convention: `core.flow`), and how they reach a diffusers scheduler.

The default schedule is the reference's: sigmas = linspace(1, 1/N, N), then a STATIC shift
s * sigma / (1 + (s - 1) * sigma) (Motif-Video model card: s = 15 for T2V, 8 for I2V). The shift is applied
here, once, and the scheduler is configured to apply none of its own: a shipped scheduler config that stores
`flow_shift` instead of `shift` (or enables dynamic shifting) would otherwise silently change the schedule.
Custom `sigmas` or `timesteps` from the caller are used exactly as given (no shift).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from motif_video.core.flow import NUM_TRAIN_TIMESTEPS, flow_sigmas


def resolve_sigmas(
    num_steps: int | None,
    shift: float,
    sigmas: list[float] | np.ndarray | None = None,
    timesteps: list[float] | np.ndarray | None = None,
) -> np.ndarray:
    """The schedule for one call: custom `sigmas`, custom `timesteps` (0..1000) or the shifted default."""
    if sigmas is not None and timesteps is not None:
        raise ValueError("pass either `sigmas` or `timesteps`, not both")
    if timesteps is not None:
        sigmas = np.asarray(timesteps, dtype=np.float64) / NUM_TRAIN_TIMESTEPS
    if sigmas is None:
        return flow_sigmas(num_steps or 0, shift)
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if sigmas.size == 0:
        raise ValueError("custom sigmas/timesteps must not be empty")
    if num_steps is not None and num_steps != sigmas.size:
        raise ValueError(f"num_inference_steps={num_steps} but {sigmas.size} custom sigmas/timesteps were given")
    if np.any(sigmas <= 0) or np.any(sigmas > 1):
        raise ValueError("custom sigmas must lie in (0, 1] (timesteps in (0, 1000]); the final 0 is appended")
    if np.any(np.diff(sigmas) >= 0):
        raise ValueError("custom sigmas/timesteps must be strictly decreasing (from noise towards data)")
    return sigmas


def unshifted_scheduler(scheduler: Any) -> Any:
    """A copy of a diffusers flow scheduler that applies no shift of its own (ours is already in the sigmas)."""
    overrides: dict[str, Any] = {}
    config = scheduler.config
    if "shift" in config:
        overrides["shift"] = 1.0
    if "flow_shift" in config:
        overrides["flow_shift"] = 1.0
    if config.get("use_dynamic_shifting", False):
        overrides["use_dynamic_shifting"] = False
    if "use_flow_sigmas" in config and not config.get("use_flow_sigmas"):
        overrides["use_flow_sigmas"] = True  # UniPC / DPM-Solver: flow-matching mode
        if "prediction_type" in config:
            overrides["prediction_type"] = "flow_prediction"
    for karras_like in ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas"):
        if config.get(karras_like, False):
            raise ValueError(
                f"scheduler {type(scheduler).__name__} has {karras_like}=True, which re-spaces the sigmas; "
                "set it to False to use Motif-Video's shifted flow schedule"
            )
    return type(scheduler).from_config(config, **overrides)


def set_scheduler_sigmas(scheduler: Any, sigmas: np.ndarray, device: torch.device | str | None) -> torch.Tensor:
    """Configure an (unshifted) diffusers scheduler to step through `sigmas`; returns its model timesteps (N,).

    Schedulers whose `set_timesteps` takes `sigmas` (FlowMatchEuler, UniPC) get them directly; others
    (DPM-Solver) are set up for N steps and then given our sigmas. The scheduler's sigmas are then checked
    against ours, so a scheduler that silently ignores the request is an error rather than a different video.
    """
    params = inspect.signature(scheduler.set_timesteps).parameters
    sigmas32 = sigmas.astype(np.float32)
    if "sigmas" in params:
        scheduler.set_timesteps(sigmas=sigmas32.copy(), device=device)
    elif hasattr(scheduler, "sigmas") and hasattr(scheduler, "timesteps"):
        # DPM-Solver's flow mode ignores custom timesteps: let it build its state for N steps, then put our
        # schedule in place. Its update reads only `sigmas[i]`, `sigmas[i + 1]` and looks up `timesteps`.
        scheduler.set_timesteps(num_inference_steps=len(sigmas), device=device)
        final = scheduler.sigmas[len(sigmas) :].detach().float().cpu()
        scheduler.sigmas = torch.cat([torch.from_numpy(sigmas32), final])
        scheduler.timesteps = torch.from_numpy(sigmas32 * NUM_TRAIN_TIMESTEPS).to(device)
    else:
        raise ValueError(
            f"scheduler {type(scheduler).__name__} has no way to take a custom flow schedule; "
            "use FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler or DPMSolverMultistepScheduler"
        )
    got = scheduler.sigmas.detach().float().cpu().numpy()[: len(sigmas)]
    # UniPC nudges sigma=1 down by 1e-6; DPM-Solver round-trips through integer timesteps (<= 5e-4 apart).
    if got.shape != sigmas32.shape or not np.allclose(got, sigmas32, atol=1e-3):
        raise ValueError(
            f"scheduler {type(scheduler).__name__} did not adopt the requested sigmas "
            f"(wanted {sigmas32[:3].tolist()}..., got {got[:3].tolist()}...); it cannot run this schedule"
        )
    return scheduler.timesteps
