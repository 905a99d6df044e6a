"""Every inference mode on CPU with the shipped small model: speed, transformer FLOPs per video, and what it costs in
quality against exact mode.

Run from the repository root (diffusers installed; the lab importable: `pip install -e lab` or PYTHONPATH=lab/src):

    python benchmarks/bench_speed.py --threads 1                       # 48 held-out prompts (a few minutes)
    python benchmarks/bench_speed.py --threads 1 --prompts 16 --modes exact ddt:2

Per mode (`_common.MODES`; "exact" is the default path, the reference's numbers):
- ms/step: one T2V call (one prompt, the release's size, steps and guider: 17x64x64, 25 steps, APG on the
  noisiest 70%), the mean interval between step-end callbacks (every step but the first), median of `--repeats`
  calls; "vs diffusers": that over diffusers' `MotifVideoPipeline` loaded from the same release folder (same
  weights, its own step-end callback, median step interval), timed alternately.
- GFLOP/video: transformer matmul FLOPs per video of the evaluation run, counted analytically from the calls the
  pipeline made (`training.flops.sampling_flops` over `pipe.last_reuse.calls`; exact mode is counted from "ddt:1",
  which gives exactly its frames); "x fewer" is exact's count over the mode's; "x fewer at 720p": the same
  calls (which branches ran the model and the encoder, at these prompts' text lengths) counted for the official
  2B config at 1280x736x121, where the encoder is a smaller share of a forward (47.9%) than in the small model.
- quality: the lab's prompt-following evaluator (`motif_video_lab.evaluation.run_eval`) on `--prompts` held-out
  T2V prompts (video i from seed i, as `motif-video-lab eval`), attributes correct in points, and the change
  from exact mode; "PSNR vs exact": mean over those videos of the frame PSNR (dB) against exact mode's frames at
  the same seeds.
Targets (from the speed work): a mode with at least 2x fewer transformer FLOPs per video losing at most 1 point of
held-out score, and (issue 25, toward "3x faster at 720p") one with at least 3x fewer at 720p; the last lines say
which modes meet them.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Any

import numpy as np
import torch
from diffusers import MotifVideoPipeline as ReferencePipeline
from diffusers.utils import logging as diffusers_logging

from _common import MODES, StepMarks, device_modes, mode_options, psnr
from motif_video.core.release import small_model_dir
from motif_video.models.config import get_preset
from motif_video.pipeline import MotifVideoPipeline
from motif_video.training.flops import sampling_flops

PROMPT = "A large red square is above a small blue circle on a white background, and both move to the right quickly."


class ModePipe:
    """The pipeline as the evaluator sees it, with a mode's options added to every call and the frames kept."""

    def __init__(self, pipe: MotifVideoPipeline, options: dict[str, Any]) -> None:
        self.pipe, self.options = pipe, options
        self.frames: list[np.ndarray] = []
        self.calls: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.pipe, name)

    def __call__(self, **kwargs: Any) -> Any:
        out = self.pipe(**kwargs, **self.options)
        self.frames.append(np.asarray(out.frames))
        self.calls += self.pipe.last_reuse.calls if self.pipe.last_reuse is not None else []
        return out


def step_times(ours: MotifVideoPipeline, ref: Any, modes: list[str], repeats: int) -> dict[str, float]:
    """ms/step per mode and for "diffusers": medians over `repeats` calls, modes alternating call by call."""
    d = ours.defaults
    common = dict(prompt=PROMPT, height=d.height, width=d.width, num_frames=d.num_frames, output_type="latent")
    common["num_inference_steps"] = d.num_inference_steps
    times: dict[str, list[float]] = {name: [] for name in ["diffusers", *modes]}
    for _ in range(repeats + 1):  # the first round warms up
        for name in times:
            marks = StepMarks()
            pipe, options = (
                (ref, {"negative_prompt": d.negative_prompt}) if name == "diffusers" else (ours, mode_options(name))
            )
            if pipe is ref:  # diffusers reads the guider's state of the previous call's last step before setting it
                ref.guider.set_state(step=0, num_inference_steps=common["num_inference_steps"], timestep=None)
            pipe(**common, **options, generator=torch.Generator().manual_seed(0), callback_on_step_end=marks)
            times[name].append(marks.mean_ms())
    return {name: statistics.median(values[1:]) for name, values in times.items()}


def evaluate(ours: MotifVideoPipeline, mode: str, prompts: int) -> tuple[ModePipe, Any, float]:
    from motif_video_lab.evaluation import EvalSettings, run_eval

    options = {"cache": "ddt:1", **mode_options(mode)}  # "ddt:1": the mode's own frames, with the calls recorded
    wrapped = ModePipe(ours, options)
    started = time.perf_counter()
    settings = EvalSettings(model=str(small_model_dir()), splits=("heldout",), num_prompts=prompts, mode="t2v")
    report = run_eval(settings, progress=False, pipe=wrapped)
    return wrapped, report.table("heldout", "t2v"), time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--modes", nargs="+", default=device_modes("cpu"), help=f"modes: {list(MODES)} or any --cache rule"
    )
    parser.add_argument("--prompts", type=int, default=48, help="held-out T2V prompts for the evaluator (0: none)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per mode for ms/step (0: no timing)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)")
    args = parser.parse_args()
    modes = args.modes
    if "exact" not in modes:
        parser.error("--modes must include exact (the yardstick)")
    for mode in modes:
        try:
            mode_options(mode)
        except ValueError as error:
            parser.error(f"--modes: {mode!r} is neither a named mode nor a cache rule ({error})")
    if args.threads:
        torch.set_num_threads(args.threads)
    diffusers_logging.set_verbosity_error()
    folder = str(small_model_dir())
    ours = MotifVideoPipeline.from_pretrained(folder)
    ref = ReferencePipeline.from_pretrained(folder)
    for pipe in (ours, ref):
        pipe.set_progress_bar_config(disable=True)
    ms = step_times(ours, ref, modes, args.repeats) if args.repeats else dict.fromkeys(["diffusers", *modes], math.nan)
    print(f"  timed {len(modes)} modes", file=sys.stderr, flush=True)

    config, d = ours.transformer.config, ours.defaults
    grid = dict(latent_frames=(d.num_frames - 1) // 4 + 1, latent_height=d.height // 8, latent_width=d.width // 8)
    official, grid_720 = get_preset("motif-video-2b"), dict(latent_frames=31, latent_height=92, latent_width=160)
    results: dict[str, dict[str, Any]] = {}
    for mode in modes:
        if args.prompts == 0:
            results[mode] = {}
            continue
        wrapped, table, seconds = evaluate(ours, mode, args.prompts)
        videos = sum(len(f) for f in wrapped.frames)
        flops = sampling_flops(config, **grid, calls=wrapped.calls).matmul / videos
        results[mode] = dict(frames=np.concatenate(wrapped.frames), score=100 * table.overall, flops=flops)
        results[mode]["flops_720"] = sampling_flops(official, **grid_720, calls=wrapped.calls).matmul
        results[mode]["all"] = 100 * table.all_correct / max(table.videos, 1)
        print(f"  evaluated {mode}: {seconds:.0f} s", file=sys.stderr, flush=True)

    exact = results["exact"]
    print("| mode | ms/step | vs diffusers | GFLOP/video | x fewer FLOPs | x fewer at 720p | held-out score | change"
          " | all correct | PSNR vs exact (dB) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    print(f"| diffusers pipeline (same weights) | {ms['diffusers']:.1f} | 1.00 | - | - | - | - | - | - | - |")
    meets, meets_720 = [], []
    for mode in modes:
        r = results[mode]
        cells = [mode, f"{ms[mode]:.1f}", f"{ms[mode] / ms['diffusers']:.2f}"]
        if r:
            fewer, change = exact["flops"] / r["flops"], r["score"] - exact["score"]
            quality = "exact" if mode == "exact" else f"{psnr(r['frames'], exact['frames']):.1f}"
            fewer_720 = exact["flops_720"] / r["flops_720"]
            cells += [f"{r['flops'] / 1e9:.1f}", f"{fewer:.2f}", f"{fewer_720:.2f}", f"{r['score']:.1f}"]
            cells += [f"{change:+.1f}", f"{r['all']:.1f}", quality]
            if mode != "exact" and fewer >= 2 and change >= -1:
                meets.append(mode)
            if mode != "exact" and fewer_720 >= 3 and change >= -1:
                meets_720.append(mode)
        else:
            cells += ["-"] * 7
        print("| " + " | ".join(cells) + " |", flush=True)
    steps = d.num_inference_steps
    print(
        f"\nSmall model ({folder}), fp32 CPU, torch threads {torch.get_num_threads()}; T2V {d.num_frames}x{d.height}x"
        f"{d.width}, {steps} steps, guider {ours.guidance.method} {ours.guidance.scale:g} on the first "
        f"{ours.guidance.stop:.0%} of steps; held-out score: attributes correct over {args.prompts} prompts."
    )
    if args.prompts:
        print(f"Target (>= 2x fewer FLOPs, <= 1 point lost): {', '.join(meets) if meets else 'met by no mode'}.")
        print(f"Target (>= 3x fewer at 720p, <= 1 point lost): {', '.join(meets_720) or 'met by no mode'}.")


if __name__ == "__main__":
    main()
