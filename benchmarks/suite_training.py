"""Section "training" of `gpu_suite.py`: one training step of the official-size model (tiny in the smoke run) with
and without a TREAD route (`bench_tread`: per-block activation checkpointing, forward + backward, no optimizer):
seconds per step, matmul TFLOP per step (`training.flops`) and MFU against the device's bf16 peak."""

from __future__ import annotations

from typing import Any

import torch

from bench_pipeline import GPU_TEXT
from bench_tread import build as build_training_model
from bench_tread import make_inputs as training_inputs
from bench_tread import time_steps as time_training_steps
from motif_video.training.flops import kept_tokens, mfu, peak_flops_for, training_step_flops


def training(s: Any, preset: str, size: tuple[int, int, int], route: tuple[int, int, float]) -> None:
    from motif_video import get_preset

    config = get_preset(preset)
    width, height, frames = size
    grid, text_len = ((frames - 1) // 4 + 1, height // 8, width // 8), GPU_TEXT[0]
    torch.manual_seed(0)
    model = build_training_model(config, s.device, s.dtype, checkpointing=True)
    inputs = training_inputs(config, grid, text_len, s.device, s.dtype)
    times = time_training_steps(model, inputs, route, warmup=1, repeats=2)
    shape = dict(batch=1, latent_frames=grid[0], latent_height=grid[1], latent_width=grid[2], text_len=text_len)
    n = grid[0] * (grid[1] // 2) * (grid[2] // 2)
    peak = peak_flops_for(s.device)
    for name, span in (("dense", None), ("tread", route)):
        flops = training_step_flops(config, **shape, route=span).matmul
        secs = times[name]
        util = None if secs is None else mfu(flops, secs, peak)
        case = "no route" if span is None else f"TREAD {span[0]}-{span[1] - 1} @ {span[2]:g}"
        ours = "OOM" if secs is None else f"{secs:.3f} s/step, {flops / 1e12:.1f} TFLOP"
        note = f"kept {kept_tokens(n, route[2]) if span else n} of {n} tokens; checkpointing; MFU "
        note += "-" if util is None else f"{util:.1%}"
        s.add(f"training {width}x{height}x{frames}", case, ours, "-", "-", note)
    del model
