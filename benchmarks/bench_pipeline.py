"""Time one denoising step of our `MotifVideoPipeline` against diffusers' Motif-Video pipelines (same run).

Run from the repository root (diffusers must be installed: `pip install -e ".[test]"`):

    python benchmarks/bench_pipeline.py --cpu-only            # tiny components, fp32, T2V and I2V
    python benchmarks/bench_pipeline.py --gpu --steps 3       # official 2B transformer, bf16, denoising loop only

What is measured: a step-end callback (`callback_on_step_end`, which both pipelines call after every step)
records a timestamp (after a CUDA synchronize on GPU); "ms/step" is the median of the intervals between
consecutive callbacks, pooled over `--repeats` timed calls that follow one untimed warm-up call (2 steps) per
pipeline. Each interval is one whole step: transformer forward(s) for the conditional and unconditional text,
APG and the Euler update. Text encoding, VAE encode/decode and the first step (which the intervals cannot see)
are not in it; only the last timed call decodes. The two pipelines alternate call by call, so background load
hits both alike.

CPU (default): `build_tiny_components(seed)`: tiny random transformer, T5Gemma2 text encoder with SigLIP
tower, Wan VAE, word-level tokenizer, Euler, APG; diffusers gets its own `MotifVideoTransformer3DModel`
holding our transformer's weights (ours fuses q/k/v, as `from_pretrained` does), everything fp32. Prompts go
through the tokenizer, with the official negative prompt, so text padding matters: the reference pads every
prompt to 512 tokens (`padding="max_length"`) and attends over all of them with a mask, while we pad only to
the longest prompt of the call and the transformer trims the padding. We also batch the conditional and
unconditional passes into one forward (`batch_guidance=True`); the reference runs two. "frames max diff" is
max |ours - reference| over the decoded frames (in [0, 1], fp32, same seed): both do the same work.

GPU (`--gpu`): the official 2B transformer config with random bf16 weights on cuda (ours from
`MotifVideoTransformer.from_preset("motif-video-2b")` plus weight noise, so the prediction is not zero;
diffusers' `MotifVideoTransformer3DModel` with the official config and our state dict). No real text encoder
or VAE weights exist here and tiny substitutes make end-to-end numbers meaningless, so only the denoising loop
is compared (`output_type="latent"`, the tiny VAE only supplies its config): T2V at 832x480x49 and
1280x736x121, random prompt embeddings of the official width 2560 with 120 (prompt) / 100 (negative) valid
tokens, right-padded to 512 with masks for the reference, trimmed to their valid tokens for ours, and the same
initial noise. The last column then holds max |ours - reference| of the final latents (not frames): bf16 rounding
through random weights, and the reference keeps its latents in bf16 between steps while ours keeps them in fp32
(the same code path in fp32 on CPU with the tiny preset agrees to ~1e-6: see `gpu_cases`). Skipped, with a
message, without CUDA.
"""

from __future__ import annotations

import argparse
import gc
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, MotifVideoImage2VideoPipeline, MotifVideoTransformer3DModel
from diffusers import MotifVideoPipeline as ReferencePipeline
from diffusers.utils import logging as diffusers_logging

from _common import StepMarks
from motif_video import MotifVideoTransformer
from motif_video.core.flow import DEFAULT_SHIFT_I2V, DEFAULT_SHIFT_T2V
from motif_video.pipeline import MotifVideoPipeline
from motif_video.pipeline.pipeline import OFFICIAL_NEGATIVE_PROMPT
from motif_video.pipeline.tiny import build_guider, build_tiny_components, build_vae

CPU_CASES = (("T2V", 64, 64, 17), ("T2V", 32, 32, 9), ("I2V", 64, 64, 17), ("I2V", 32, 32, 9))  # task, w, h, f
T2V_PROMPTS = ["a red dog runs on the beach at sunset", "a small blue bird flies over the green trees at night"]
I2V_PROMPT = "a woman walks slowly along the river in the morning"
GPU_VIDEOS = ((832, 480, 49), (1280, 736, 121))  # width, height, frames
GPU_TEXT = (512, 120, 100)  # padded length, valid prompt tokens, valid negative tokens
GPU_WEIGHT_NOISE = 0.02  # std added to every parameter after init_weights (which zeroes the output layers)


@dataclass
class Timing:
    ms_per_step: float
    out: torch.Tensor


Call = Callable[[StepMarks, str], Any]  # (timer, phase) -> output; phase: "warmup" | "timed" | "last"


def time_calls(calls: dict[str, Call], repeats: int, cuda: bool) -> dict[str, Timing]:
    """One warm-up call each, then `repeats` timed calls each, alternating; the median of all step intervals.
    Only the last call decodes (phase "last"): its output is what the table compares."""
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    intervals: dict[str, list[float]] = {name: [] for name in calls}
    outputs: dict[str, Any] = {}
    phases = ["warmup"] + ["timed"] * (repeats - 1) + ["last"]
    for phase in phases:
        for name, call in calls.items():
            timer = StepMarks(sync)
            outputs[name] = None
            if cuda:
                gc.collect()
                torch.cuda.empty_cache()
            outputs[name] = call(timer, phase)
            if phase != "warmup":
                intervals[name] += timer.intervals_ms()
    results = {}
    for name, out in outputs.items():
        out = out if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out))
        results[name] = Timing(statistics.median(intervals[name]), out.float().cpu())
    return results


def row(case: str, ours: Timing, ref: Timing) -> str:
    diff = (ours.out - ref.out).abs().max().item()
    cells = [case, f"{ours.ms_per_step:.1f}", f"{ref.ms_per_step:.1f}", f"{ours.ms_per_step / ref.ms_per_step:.2f}"]
    return "| " + " | ".join([*cells, f"{diff:.2e}"]) + " |"


def reference_transformer(ours: MotifVideoTransformer) -> MotifVideoTransformer3DModel:
    """diffusers' model with our config and weights, on our device and dtype; then ours fuses q/k/v."""
    kwargs = {k: v for k, v in ours.config.to_dict().items() if not k.startswith("_")}
    with torch.device(ours.device):
        ref = MotifVideoTransformer3DModel(**kwargs).to(ours.dtype).eval()
    ref.load_state_dict(ours.state_dict())
    ours.fuse_qkv_projections()
    return ref


# ------------------------------------------------------------------------------------------------------------
# CPU: tiny components end to end
# ------------------------------------------------------------------------------------------------------------
def cpu_cases(steps: int, repeats: int, seed: int) -> list[str]:
    parts = build_tiny_components(seed)
    ours_model = parts["transformer"]
    ref_model = reference_transformer(ours_model)
    ours = MotifVideoPipeline.from_components(parts)
    ours.set_progress_bar_config(disable=True)
    rows = []
    for task, width, height, frames in CPU_CASES:
        i2v = task == "I2V"
        shift = DEFAULT_SHIFT_I2V if i2v else DEFAULT_SHIFT_T2V
        cls = MotifVideoImage2VideoPipeline if i2v else ReferencePipeline
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
        ref = cls(**dict(parts, transformer=ref_model, guider=build_guider(), scheduler=scheduler))
        ref.set_progress_bar_config(disable=True)
        prompts = [I2V_PROMPT] if i2v else T2V_PROMPTS
        kwargs: dict[str, Any] = dict(
            prompt=prompts,
            negative_prompt=[OFFICIAL_NEGATIVE_PROMPT] * len(prompts),
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=steps,
        )
        if i2v:
            kwargs["image"] = torch.rand(3, height, width, generator=torch.Generator().manual_seed(seed + 1))

        def run(pipe: Any, timer: StepMarks, phase: str, kwargs: dict = kwargs, shift: float = shift) -> Any:
            extra = {"shift": shift} if pipe is ours else {}
            if phase == "warmup":  # short and undecoded: the decoder is never timed
                extra["num_inference_steps"] = 2
            output_type = "np" if phase == "last" else "latent"
            generator = torch.Generator().manual_seed(seed)
            args = {**kwargs, **extra, "output_type": output_type}
            return pipe(**args, generator=generator, callback_on_step_end=timer).frames

        with torch.inference_mode():
            calls = {"ours": partial(run, ours), "ref": partial(run, ref)}
            res = time_calls(calls, repeats, cuda=False)
        case = f"{task} {width}x{height}x{frames}, {len(prompts)} prompt{'s' * (len(prompts) > 1)}, fp32 cpu"
        rows.append(row(case, res["ours"], res["ref"]))
        print(rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------------------------------------------------
# GPU: the official 2B transformer, denoising loop only
# ------------------------------------------------------------------------------------------------------------
def random_official_transformer(device: torch.device, dtype: torch.dtype, seed: int, preset: str) -> Any:
    torch.manual_seed(seed)
    with torch.device(device):
        model = MotifVideoTransformer.from_preset(preset)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * GPU_WEIGHT_NOISE)
    return model.to(dtype).eval()


def text_embeddings(dim: int, device: torch.device, dtype: torch.dtype, seed: int) -> dict[str, dict[str, Any]]:
    """Padded embeddings + masks for the reference; the same embeddings trimmed to their valid tokens for ours."""
    length, valid, negative_valid = GPU_TEXT
    g = torch.Generator().manual_seed(seed)
    embeds = {}
    for name, n in (("prompt", valid), ("negative_prompt", negative_valid)):
        x = torch.zeros(1, length, dim)
        x[:, :n] = torch.randn(1, n, dim, generator=g)
        mask = torch.zeros(1, length, dtype=torch.long)
        mask[:, :n] = 1
        embeds[name] = dict(padded=x.to(device, dtype), mask=mask.to(device), trimmed=x[:, :n].to(device, dtype))
    ref = dict(
        prompt_embeds=embeds["prompt"]["padded"],
        prompt_attention_mask=embeds["prompt"]["mask"],
        negative_prompt_embeds=embeds["negative_prompt"]["padded"],
        negative_prompt_attention_mask=embeds["negative_prompt"]["mask"],
    )
    ours = dict(prompt_embeds=embeds["prompt"]["trimmed"], negative_prompt_embeds=embeds["negative_prompt"]["trimmed"])
    return {"ours": ours, "ref": ref}


def gpu_cases(
    steps: int,
    repeats: int,
    seed: int,
    device: torch.device | None = None,
    preset: str = "motif-video-2b",
    videos: tuple[tuple[int, int, int], ...] = GPU_VIDEOS,
    dtype: torch.dtype = torch.bfloat16,
) -> list[str]:
    """`device`/`preset`/`videos`/`dtype` exist to check this code path on CPU with the tiny preset (in fp32 the
    latents agree to ~1e-6)."""
    device = device or torch.device("cuda")
    cuda = device.type == "cuda"
    ours_model = random_official_transformer(device, dtype, seed, preset)
    ref_model = reference_transformer(ours_model)
    vae = build_vae().to(device)  # the tiny one: only its config is used (output_type="latent")
    scheduler = lambda: FlowMatchEulerDiscreteScheduler(shift=DEFAULT_SHIFT_T2V)  # noqa: E731
    ours = MotifVideoPipeline.from_components(
        dict(transformer=ours_model, vae=vae, scheduler=scheduler(), guider=build_guider())
    )
    ours.set_progress_bar_config(disable=True)
    ref = ReferencePipeline(
        scheduler=scheduler(), vae=vae, text_encoder=None, tokenizer=None, transformer=ref_model, guider=build_guider()
    )
    ref.set_progress_bar_config(disable=True)
    text = text_embeddings(ours_model.config.text_embed_dim, device, dtype, seed)
    rows = []
    for width, height, frames in videos:
        shape = (1, vae.config.z_dim, (frames - 1) // 4 + 1, height // 8, width // 8)
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(device)
        common = dict(height=height, width=width, num_frames=frames, num_inference_steps=steps, output_type="latent")

        def run(pipe: Any, name: str, timer: StepMarks, phase: str, common: dict = common, noise: Any = noise) -> Any:
            extra = {"shift": DEFAULT_SHIFT_T2V} if pipe is ours else {}
            if phase == "warmup":
                extra["num_inference_steps"] = 2
            args = {**common, **text[name], **extra}
            return pipe(**args, latents=noise.clone(), callback_on_step_end=timer).frames.float()

        calls = {"ours": partial(run, ours, "ours"), "ref": partial(run, ref, "ref")}
        try:
            with torch.inference_mode():
                res = time_calls(calls, repeats, cuda=cuda)
        except torch.cuda.OutOfMemoryError:
            rows.append(f"| 2B {width}x{height}x{frames} | OOM | OOM | - | - |")
            print(rows[-1], flush=True)
            continue
        name = "2B" if preset == "motif-video-2b" else preset
        setup = f"{str(dtype).removeprefix('torch.')} {device.type}"
        case = f"{name} T2V {width}x{height}x{frames}, text {GPU_TEXT[1]}/{GPU_TEXT[2]} valid, {setup}"
        rows.append(row(case, res["ours"], res["ref"]))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--cpu-only", action="store_true", help="only the tiny CPU cases (the default without CUDA)")
    group.add_argument("--gpu", action="store_true", help="only the official-size GPU denoising-loop cases")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per call (default: 5 CPU, 3 GPU)")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per pipeline (default: 2 CPU, 1 GPU)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    diffusers_logging.set_verbosity_error()  # the reference's device/dtype notices concern other setups
    if args.steps is not None and args.steps < 2:
        parser.error("--steps must be >= 2: a step is timed between two step-end callbacks")
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")

    skipped = "--cpu-only" if args.cpu_only else None if torch.cuda.is_available() else "no CUDA GPU"
    if args.gpu and skipped:
        print(f"GPU cases skipped: {skipped} (torch.cuda.is_available() is False); nothing to run.")
        return
    print("| case | ours ms/step | diffusers ms/step | ours/ref | frames max diff |")
    print("|---|---|---|---|---|")
    if not args.gpu:
        cpu_cases(args.steps or 5, args.repeats or 2, args.seed)
    if not skipped:
        gpu_cases(args.steps or 3, args.repeats or 1, args.seed)
    print()
    if skipped:
        print(f"GPU cases (official 2B transformer, bf16, denoising loop only) skipped: {skipped}.")
    else:
        print("GPU rows: denoising loop only (output_type='latent'); their last column is the final latents' max diff.")


if __name__ == "__main__":
    main()
