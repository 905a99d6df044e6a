"""The overhead of the parallel code path at degree 1: a denoising step of our pipeline with and without it.

    python benchmarks/bench_parallel.py --smoke     # CPU: tiny preset, fp32, 32x32x9, gloo world of 1
    python benchmarks/bench_parallel.py --gpu       # CUDA: random 2B transformer, bf16, 832x480x49, NCCL world of 1

One process starts a torch.distributed group of size 1 (gloo on CPU, NCCL with `--gpu`) and times, alternating
call by call so background load hits all alike:
  plain              the pipeline as it is;
  launch cp=1,cfg=1  `pipe.enable_parallel(cp=1, cfg=1)`: what `--parallel` adds at degree 1 (the text, noise and
                     conditions go through the rank-0 broadcast; no axis is wrapped);
  ulysses P=1        `enable_context_parallel(transformer, group of 1)`: the context-parallel transformer itself
                     at degree 1 (its all-to-alls and gathers over one rank, the padding logic).
The guidance axis cannot run at degree 1 (it splits two branches over two ranks), so it has no row.

A step: APG guidance on every step, the [cond; uncond] pair as one batched forward (B=2), the Euler update;
random prompt embeddings (120 / 100 valid tokens of the official width for the 2B model), `output_type="latent"`
(the tiny VAE only supplies its config). "ms/step" is the median over `repeats` timed calls (after one untimed
warm-up each) of the mean interval between step-end callbacks (after a CUDA synchronize), steps 2..S.
`measure()` and `table()` are what another suite calls.
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from diffusers import FlowMatchEulerDiscreteScheduler

from _common import StepMarks, fmt_ms, versions
from bench_pipeline import random_official_transformer, text_embeddings
from motif_video.core.context_parallel import disable_context_parallel, enable_context_parallel
from motif_video.core.flow import DEFAULT_SHIFT_T2V
from motif_video.pipeline import MotifVideoPipeline
from motif_video.pipeline.tiny import build_guider, build_vae

SMOKE = dict(preset="tiny", dtype=torch.float32, size=(32, 32, 9), steps=3, repeats=3)
GPU = dict(preset="motif-video-2b", dtype=torch.bfloat16, size=(832, 480, 49), steps=4, repeats=2)
VARIANTS = ("plain", "launch cp=1,cfg=1", "ulysses P=1")


@dataclass
class Row:
    variant: str
    ms_per_step: float
    overhead_pct: float


def _pipeline(preset: str, device: torch.device, dtype: torch.dtype) -> MotifVideoPipeline:
    transformer = random_official_transformer(device, dtype, seed=0, preset=preset)
    pipe = MotifVideoPipeline.from_components(
        dict(
            transformer=transformer,
            vae=build_vae().to(device),  # only its config is read: output_type="latent"
            scheduler=FlowMatchEulerDiscreteScheduler(shift=DEFAULT_SHIFT_T2V),
            guider=build_guider(),
        )
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _variant(pipe: MotifVideoPipeline, name: str, on: bool) -> None:
    """Switch `name` on (or back off) on `pipe`."""
    if name == "launch cp=1,cfg=1":
        pipe.enable_parallel(cp=1, cfg=1) if on else pipe.disable_parallel()
    elif name == "ulysses P=1":
        enable_context_parallel(pipe.transformer) if on else disable_context_parallel(pipe.transformer)


def _start_world_of_one(device: torch.device) -> bool:
    """A process group of size 1 (NCCL on CUDA, gloo on CPU); False when one was already running."""
    if dist.is_initialized():
        return False
    backend = "nccl" if device.type == "cuda" else "gloo"
    options = dict(device_id=device) if device.type == "cuda" else {}
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, **options)
    return True


def measure(
    device: torch.device, dtype: torch.dtype, preset: str, size: tuple[int, int, int], steps: int, repeats: int
) -> list[Row]:
    """ms/step of each variant (`VARIANTS`) at `size` = (width, height, frames), and its overhead over plain."""
    pipe = _pipeline(preset, device, dtype)
    text = text_embeddings(pipe.transformer.config.text_embed_dim, device, dtype, seed=1)["ours"]
    return measure_pipeline(pipe, text, size, steps, repeats)


def measure_pipeline(
    pipe: MotifVideoPipeline, text: dict[str, Any], size: tuple[int, int, int], steps: int, repeats: int
) -> list[Row]:
    """`measure` on a given pipeline (the GPU suite's) with given prompt embeddings (`text_embeddings(...)["ours"]`)."""
    device = pipe.device
    started = _start_world_of_one(device)
    try:
        width, height, frames = size
        noise = torch.randn(
            1, 16, (frames - 1) // 4 + 1, height // 8, width // 8, generator=torch.Generator().manual_seed(0)
        )
        args = dict(height=height, width=width, num_frames=frames, output_type="latent", **text)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        times: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for call in range(repeats + 1):  # call 0 warms every variant up
            for name in VARIANTS:
                _variant(pipe, name, on=True)
                marks = StepMarks(sync)
                try:
                    with torch.inference_mode():
                        pipe(**args, latents=noise.to(device), num_inference_steps=steps, callback_on_step_end=marks)
                finally:
                    _variant(pipe, name, on=False)
                if call:
                    times[name].append(marks.mean_ms())
        plain = statistics.median(times["plain"])
        rows = []
        for name in VARIANTS:
            ms = statistics.median(times[name])
            rows.append(Row(name, ms, 100.0 * (ms - plain) / plain))
        return rows
    finally:
        if started:
            dist.destroy_process_group()


def table(rows: list[Row], label: str) -> str:
    lines = [f"Parallel path at degree 1, {label}", "", "| Variant | ms/step | overhead |", "|---|---|---|"]
    lines += [f"| {r.variant} | {fmt_ms(r.ms_per_step)} | {r.overhead_pct:+.1f}% |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--smoke", action="store_true", help="CPU, tiny preset, fp32, 32x32x9")
    mode.add_argument("--gpu", action="store_true", help="CUDA, random 2B transformer, bf16, 832x480x49")
    parser.add_argument("--steps", type=int, help="steps per call (default 3 smoke, 4 GPU)")
    parser.add_argument("--repeats", type=int, help="timed calls per variant (default 3 smoke, 2 GPU)")
    args = parser.parse_args(argv)
    if args.gpu and not torch.cuda.is_available():
        print("bench_parallel: --gpu needs CUDA; skipped")
        return
    spec: dict[str, Any] = dict(GPU if args.gpu else SMOKE)
    spec["steps"] = args.steps or spec["steps"]
    spec["repeats"] = args.repeats or spec["repeats"]
    device = torch.device("cuda", torch.cuda.current_device()) if args.gpu else torch.device("cpu")
    rows = measure(device, spec["dtype"], spec["preset"], spec["size"], spec["steps"], spec["repeats"])
    width, height, frames = spec["size"]
    label = f"{spec['preset']} {str(spec['dtype']).removeprefix('torch.')} {width}x{height}x{frames}, {device.type}"
    print(table(rows, label))
    print(f"\n{spec['steps']} steps per call, median of {spec['repeats']} calls; {versions()}")


if __name__ == "__main__":
    main()
