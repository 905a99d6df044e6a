"""What `bench_speed.py` (CPU) and `gpu_suite.py` (GPU) share: the named modes and how a run is timed per step.

A mode is a name and the call options it adds to the pipeline: "exact" is the default path (the reference's
numbers); the others are the fast modes, each with its measured quality cost in docs/performance.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import torch

import motif_video
from motif_video.pipeline.step_cache import StepCache

# name -> pipeline call options: exact mode, the mask-free encoder under guidance, and the step-reuse rules kept
# from `bench_speed.py`'s runs on the small model (docs/performance.md has all that were measured); any other
# `--cache` rule can be named on the command line too.
REUSE = (
    "ddt:2",
    "ddt:2,uncond=2",
    "ddt:3,uncond=4",
    "adaptive:0.3,uncond=4",
    "calibrated:0.16",
    "calibrated:0.16,uncond=4",
)
# whole-step reuse (the decoder skipped too; issue 25's road to 3x at 720p), kept from the same runs
WHOLE_STEP = ("ddt:1,uncond=4,skip=3,order=1",)
# Exact up to rounding, three ways to run a guidance batch: "batched" (one [cond; uncond] forward, its encoder with a
# text key mask), "split" (the encoder per text length, mask-free; the decoder batched) and "sequential" (cond and
# uncond as two B=1 forwards, each mask-free). "exact" is the default: split on CUDA, batched elsewhere
# (`pipeline.model_function`), so the one of "batched" / "split" that equals it on a device is not timed there.
MODES: dict[str, dict[str, Any]] = {
    "exact": {},
    "batched": {"split_encoder": "off"},
    "split": {"split_encoder": "on"},
    "sequential": {"batch_guidance": False},
}
MODES |= {r: {"cache": r} for r in REUSE + WHOLE_STEP}
HEADLINE = "ddt:2"  # the fast mode timed at 1280x736x121: a 2-step period, whose steps show a refresh and a reuse
DERIVED = ("ddt:3,uncond=4", *WHOLE_STEP)  # estimated there from those two steps (a skipped call costs ~nothing)


def device_modes(device: torch.device | str, names: list[str] | None = None) -> list[str]:
    """`names` (default every mode of `MODES`) without the one that is "exact" itself on this device."""
    same = "split" if torch.device(device).type == "cuda" else "batched"
    return [name for name in (list(MODES) if names is None else names) if name != same]


def mode_options(name: str) -> dict[str, Any]:
    """A named mode's call options; any other step-reuse rule ("ddt:5,uncond=3", ...) is a mode of its own."""
    if name in MODES:
        return dict(MODES[name])
    StepCache.parse(name)  # raises ValueError for what is not a rule
    return {"cache": name}


def period(mode: str) -> int:
    """Steps after which a mode's pattern of model and encoder runs repeats (whole-step reuse's interval for the
    adaptive and calibrated rules): a timed run of 1 + k * period steps averages whole periods."""
    rule = StepCache.parse(mode_options(mode).get("cache"))
    if rule is None:
        return 1
    return rule.skip * (int(rule.value * rule.uncond) if rule.rule == "ddt" else 1)


def call_shares(mode: str, steps: int = 50) -> tuple[float, float]:
    """For a ddt rule with guidance on every step (warm-up 1): the shares of branch calls over `steps` that run the
    model and that run the encoder. The model runs on every `skip`-th call, the encoder on every N-th of those."""
    rule = StepCache.parse(mode_options(mode).get("cache"))
    model = -(-steps // rule.skip)  # calls that run the model, per branch
    every = (int(rule.value), int(rule.value * rule.uncond))
    return model / steps, sum(-(-model // n) for n in every) / (2 * steps)


@contextmanager
def attention_backend(name: str | None):
    """Our attention backend for the duration (None: leave it)."""
    if name is None:
        yield
        return
    before = motif_video.models.get_attention_backend()
    motif_video.set_attention_backend(name)
    try:
        yield
    finally:
        motif_video.set_attention_backend(before)


class StepMarks:
    """A step-end callback that records when each step ended (after `sync`, e.g. a CUDA synchronize)."""

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.sync = sync
        self.marks: list[float] = []
        self.start: float | None = None  # `begin()`: the call's start, so the first step is timed too

    def begin(self) -> None:
        """Mark the start of the call (after `sync`): `intervals_ms(first=True)` then includes step 1, whose
        interval also holds the call's set-up (for a long step, with text embeddings and noise given, a small part)."""
        self.sync()
        self.start = time.perf_counter()

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, torch.Tensor]) -> dict:
        self.sync()
        self.marks.append(time.perf_counter())
        return {}

    def intervals_ms(self, first: bool = False) -> list[float]:
        """Every step but the first (which no interval sees), in ms; `first`: from the call's start (`begin`)."""
        marks = ([self.start] if first and self.start is not None else []) + self.marks
        return [(b - a) * 1e3 for a, b in zip(marks, marks[1:])]

    def mean_ms(self, first: bool = False) -> float:
        intervals = self.intervals_ms(first)
        return sum(intervals) / len(intervals)


def fmt_ms(ms: float) -> str:
    return f"{ms:,.1f} ms"


def psnr(frames: Any, reference: Any) -> float:
    """Mean over videos of the PSNR (dB) of frames in [0, 1] against the reference's: (B, F, H, W, 3) arrays."""
    a, b = torch.as_tensor(frames, dtype=torch.float64), torch.as_tensor(reference, dtype=torch.float64)
    mse = (a - b).square().flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(1 / mse)).mean())


def versions() -> str:
    """The versions that matter for a timing: torch, diffusers, transformers and the optional kernels."""
    import diffusers
    import transformers

    parts = [
        f"torch {torch.__version__}",
        f"diffusers {diffusers.__version__}",
        f"transformers {transformers.__version__}",
    ]
    for name in ("torchao", "sageattention", "flash_attn"):
        try:
            module = __import__(name)
            parts.append(f"{name} {getattr(module, '__version__', 'installed')}")
        except Exception:
            parts.append(f"{name} absent")
    return ", ".join(parts)
