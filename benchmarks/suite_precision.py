"""Section "precision" of `gpu_suite.py`: each lower-precision mode against bf16, on the same random official
weights and inputs.

Per mode (`PRECISION_MODES`): one transformer forward (B=1, 120 text tokens, trimmed, so SageAttention's kernel
takes the self-attention; the 120-key cross-attention takes SDPA, see `models.attention`): max and mean absolute
error and relative L2 error of the velocity against bf16's; then a short guided sampling run (`STEPS` steps, APG
on every step, from the same noise): ms/step (mean of steps 2..STEPS) and the
PSNR of its final latents against bf16's (peak: the range of bf16's latents). The sampling runs split the guidance
batch's encoder per branch (`split_encoder`, in every mode and in bf16 alike): the batched pass needs a key mask
for its two text lengths, and a masked attention call takes SDPA, not Sage. Latents, not frames: the suite
decodes no video here, and frames through a random-weight VAE would say no more; the frame PSNR of the fast
modes with trained weights comes from `bench_speed.py` on CPU, where FP8 compute cannot run.

Modes: "sage" (SageAttention kernels, `--attention sage`), "fp8-dynamic" / "fp8-dynamic-tensor" (torchao FP8
compute, per-row / per-tensor scales, `--fp8 dynamic[-tensor]`) and "fp8-weights" (weight-only, `--fp8`). The FP8
modes quantize a copy of the transformer (the other sections keep the bf16 one). A mode that cannot run here is
a row that says why ("not run: ...").
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from _common import StepMarks, attention_backend, fmt_ms
from bench_pipeline import GPU_TEXT
from bench_transformer import make_inputs
from motif_video.core.flow import DEFAULT_SHIFT_T2V
from motif_video.models.attention import available_backends
from motif_video.pipeline.quantization import fp8_problem, quantize_fp8

PRECISION_MODES = ("sage", "fp8-dynamic", "fp8-dynamic-tensor", "fp8-weights")
STEPS = 4


def problem(mode: str, device: torch.device) -> str | None:
    """Why `mode` cannot run on `device`; None when it can."""
    if mode == "sage":
        if "sage" not in available_backends():
            return "sageattention is not installed"
        return None if device.type == "cuda" else "SageAttention runs on CUDA only"
    return fp8_problem(mode.removeprefix("fp8-"), device)


@contextmanager
def variant(mode: str, pipe: Any) -> Iterator[None]:
    """`pipe` in `mode` for the duration: the attention backend, or a quantized copy of its transformer."""
    if mode == "sage":
        with attention_backend("sage"):
            yield
        return
    original = pipe.transformer
    pipe.transformer = copy.deepcopy(original)
    try:
        quantize_fp8(pipe.transformer, mode.removeprefix("fp8-"))
        yield
    finally:
        pipe.transformer = original


def latent_psnr(latents: torch.Tensor, reference: torch.Tensor) -> float:
    peak = (reference.max() - reference.min()).clamp_min(1e-12)
    mse = (latents - reference).square().mean().clamp_min(1e-20)
    return float(10 * torch.log10(peak.square() / mse))


def precision(s: Any, pipe: Any, text: dict, size: tuple[int, int, int]) -> None:
    """The section's rows on suite `s` (`gpu_suite.Suite`), with our pipeline `pipe` at `size` (w, h, frames)."""
    width, height, frames = size
    label = f"precision {width}x{height}x{frames}"
    config = pipe.transformer.config
    grid = ((frames - 1) // 4 + 1, height // 8, width // 8)
    torch.manual_seed(0)
    inputs = make_inputs(config, grid, [GPU_TEXT[1]], GPU_TEXT[1], s.device, s.dtype)
    noise = torch.randn(1, config.out_channels, *grid, generator=torch.Generator().manual_seed(0)).to(s.device)
    args = dict(height=height, width=width, num_frames=frames, output_type="latent", **text["ours"])
    args |= dict(shift=DEFAULT_SHIFT_T2V, num_inference_steps=STEPS, split_encoder=True)  # mask-free: Sage applies

    def measure() -> tuple[torch.Tensor, torch.Tensor, float]:
        marks = StepMarks(s.sync)
        with torch.inference_mode():
            velocity = pipe.transformer(**inputs, return_dict=False)[0].float()
            latents = pipe(**args, latents=noise.clone(), callback_on_step_end=marks).frames.float()
        return velocity, latents, marks.mean_ms()

    started = time.perf_counter()
    v0, z0, ms0 = measure()
    cost = time.perf_counter() - started
    name = str(s.dtype).removeprefix("torch.").replace("bfloat16", "bf16")
    s.add(label, name, f"{fmt_ms(ms0)}/step", "-", "-", f"the yardstick; {STEPS} guided steps")
    for mode in PRECISION_MODES:
        why = problem(mode, s.device)
        if why is not None:
            s.add(label, mode, "-", "-", "-", f"not run: {why}")
            continue
        if not s.fits(label, mode, 2 * cost + (0 if mode == "sage" else 5)):  # + quantizing a copy
            continue
        with s.case(label, mode):  # a mode that fails (a kernel, torchao) is a row; the next mode still runs
            with variant(mode, pipe):
                v, z, ms = measure()
            err = v - v0
            note = f"velocity: max abs {err.abs().max():.2e}, mean abs {err.abs().mean():.2e}, "
            note += f"rel L2 {err.norm() / v0.norm():.2e}; "
            note += f"latents after {STEPS} steps: PSNR {latent_psnr(z, z0):.1f} dB"
            s.add(label, mode, f"{fmt_ms(ms)}/step", "-", f"{ms / ms0:.2f} of bf16", note)
