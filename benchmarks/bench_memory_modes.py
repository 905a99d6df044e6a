"""Peak memory and speed of each memory mode of our `MotifVideoPipeline` (text-to-video, one prompt + negative).

Run from the repository root:

    python benchmarks/bench_memory_modes.py                                # CPU: tiny components (a smoke test)
    python benchmarks/bench_memory_modes.py --device cuda --size 832x480x49
    python benchmarks/bench_memory_modes.py --device cuda --modes all-on-device,block-offload,fp8+block-offload

Modes (each on a fresh deep copy of the same components): all on the device (`pipe.to`), model CPU offload
(`enable_model_cpu_offload`: text encoder -> transformer -> VAE, one at a time on the device), block offload
with prefetch 1 (`enable_block_offload`), FP8 weight-only transformer (`enable_fp8`, torchao; skipped with the
reason when torchao or float8 tensors are unavailable), FP8 + block offload, VAE tiling (`enable_vae_tiling`)
and the text encoder kept on the CPU (`enable_text_encoder_on_cpu`). FP8 quantizes on the CPU before the
weights are placed, as a loader would.

What is measured, per mode: one untimed warm-up call (2 steps, decoded), then one measured call with
`--steps` steps: "ms/step" is the median interval between consecutive step-end callbacks
(`callback_on_step_end`, after a CUDA synchronize), "total s" the wall time of the whole call (text encoding,
denoising, VAE decode, and whatever the mode moves between devices).
Memory on CUDA: `torch.cuda.max_memory_allocated` during the measured call (peak reset just before it; it
includes what stays resident, shown as "resident GiB": the memory allocated when the call starts).
Memory on CPU: the process's resident set size (RSS, `/proc/self/statm`, sampled every 2 ms by a thread during
the measured call; `resource.getrusage` where /proc is missing): the peak minus the RSS just before the call.
RSS counts everything the process touches (allocator caches included) and is NOT comparable to GPU memory.

CPU (default): `build_tiny_components`, fp32, 32x32x9. The weights already live on the CPU, so the offload modes
degenerate (their copies are no-ops): they run to show that they work, and their numbers are a smoke test only.
CUDA (`--device cuda`): the official 2B transformer config (`MotifVideoTransformer.from_preset("motif-video-2b")`,
random weights, q/k/v fused, bf16) at `--size` (default 832x480x49). No real text encoder or VAE weights exist
here, so the text encoder is a random 2-layer T5Gemma2 stand-in at the official text width 2560 (its prompt
embeddings have the official shape, its size is nowhere near the real encoder's) with the tiny word-level
tokenizer, and the VAE is `AutoencoderKLWan()` with its default (Wan 2.1-size) config and random fp32 weights
(`--vae tiny` for the tiny one). The output says which.
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.utils import logging as diffusers_logging

from motif_video import MotifVideoTransformer
from motif_video.pipeline import MotifVideoPipeline
from motif_video.pipeline.quantization import TORCHAO_INSTALL_HINT, is_fp8_available
from motif_video.pipeline.tiny import build_text_encoder, build_tiny_components

PROMPT = "a red dog runs on the beach at sunset, slow motion, cinematic"
MODES = (
    "all-on-device",
    "model-cpu-offload",
    "block-offload",
    "fp8",
    "fp8+block-offload",
    "vae-tiling",
    "text-encoder-on-cpu",
)
DEFAULT_SIZE = {"cpu": "32x32x9", "cuda": "832x480x49"}
DEFAULT_STEPS = {"cpu": 4, "cuda": 3}
OFFICIAL_TEXT_WIDTH = 2560
SIGLIP_WIDTH = 1152  # the stand-in encoder's vision tower (unused in text-to-video)
CPU_TILE = 32  # on CPU the video is smaller than the VAE's 256 px tiles: shrink them so tiled decoding runs
MIB, GIB = 2**20, 2**30
# The T5Gemma2 4B-4B encoder: the Gemma 3 4B text stack and the SigLIP so400m tower at 896 px (4096 image tokens)
GEMMA3_4B = dict(hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8)
GEMMA3_4B |= dict(num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256, sliding_window=1024)
SIGLIP_896 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
SIGLIP_896 |= dict(image_size=896, patch_size=14, vision_use_head=False)


@dataclass
class Result:
    mode: str
    peak: float | None = None  # bytes: CUDA peak allocated, or CPU peak RSS delta
    resident: float | None = None  # bytes at the start of the measured call (allocated on CUDA, RSS on CPU)
    ms_per_step: float | None = None
    total_s: float | None = None
    note: str = ""


# ------------------------------------------------------------------------------------------------------------
# Memory probes
# ------------------------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # Linux reports KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class RssPeak:
    """Context manager: peak RSS while inside, minus the RSS on entry (sampled; getrusage without /proc)."""

    def __init__(self, period_s: float = 0.002) -> None:
        self.period_s = period_s
        self.proc = os.path.exists("/proc/self/statm")
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(self.period_s):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self) -> RssPeak:
        gc.collect()
        self.start = rss_bytes() if self.proc else maxrss_bytes()
        self.peak = self.start
        if self.proc:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        else:
            self.peak = maxrss_bytes()  # a process-lifetime maximum: the delta is 0 once an earlier peak was higher

    @property
    def delta(self) -> int:
        return self.peak - self.start


# ------------------------------------------------------------------------------------------------------------
# Components
# ------------------------------------------------------------------------------------------------------------
def build_components(official: bool, device: torch.device, vae_kind: str, seed: int) -> tuple[dict[str, Any], str]:
    """CPU-resident components (the modes place them) and a line saying what they are. official: the 2B
    transformer and width-2560 text encoder stand-in (initialised on `device`), else the tiny components."""
    parts = build_tiny_components(seed)
    if not official:
        parts["transformer"].fuse_qkv_projections()
        return parts, "tiny components (build_tiny_components), fp32"
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    with torch.device(device):  # initialising 2B parameters is much faster on the GPU
        transformer = MotifVideoTransformer.from_preset("motif-video-2b")
    transformer = transformer.to(torch.bfloat16).eval()
    transformer.fuse_qkv_projections()
    parts["transformer"] = transformer.to("cpu")
    parts["text_encoder"] = build_text_encoder(OFFICIAL_TEXT_WIDTH, SIGLIP_WIDTH)
    if vae_kind == "wan":
        parts["vae"] = AutoencoderKLWan().eval()  # default config: Wan 2.1 size, z_dim 16
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    n_text = sum(p.numel() for p in parts["text_encoder"].parameters()) / 1e6
    n_vae = sum(p.numel() for p in parts["vae"].parameters()) / 1e6
    vae = "AutoencoderKLWan() default config" if vae_kind == "wan" else "tiny AutoencoderKLWan"
    what = (
        f"transformer: official 2B config, random init_weights, bf16, q/k/v fused "
        f"({transformer.num_parameters() / 1e9:.2f}B params); text encoder: random 2-layer T5Gemma2 stand-in at width "
        f"{OFFICIAL_TEXT_WIDTH} ({n_text:.0f}M params, fp32) + tiny word-level tokenizer; VAE: {vae}, random, fp32 "
        f"({n_vae:.1f}M params)"
    )
    return parts, what


def text_encoder(official: bool, device: torch.device, dtype: torch.dtype) -> tuple[Any, str]:
    """The T5Gemma2 encoder with the official 4B-4B encoder config (random; `gpu_suite.py` uses it) or the 2-layer
    stand-in, on the CPU."""
    if not official:
        return build_text_encoder(2560, 1152), "T5Gemma2 2-layer stand-in at width 2560"
    from transformers import SiglipVisionConfig, T5Gemma2Encoder, T5Gemma2EncoderConfig, T5Gemma2TextConfig

    text = T5Gemma2TextConfig(vocab_size=262_144, **GEMMA3_4B)
    config = T5Gemma2EncoderConfig(text_config=text, vision_config=SiglipVisionConfig(**SIGLIP_896))
    config.text_config.dropout_rate = config.text_config.attention_dropout = 0.0
    with torch.device(device):  # initialising 4B parameters is much faster on the GPU
        model = T5Gemma2Encoder(config).to(dtype).eval()
    n = sum(p.numel() for p in model.parameters()) / 1e9
    return model.to("cpu"), f"T5Gemma2 4B-4B encoder config with SigLIP 896 ({n:.2f}B params, {dtype})"


def make_pipeline(base: dict[str, Any]) -> MotifVideoPipeline:
    parts = dict(base)
    for name in ("transformer", "vae", "text_encoder"):
        parts[name] = copy.deepcopy(base[name])
    pipe = MotifVideoPipeline.from_components(parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def apply_mode(pipe: MotifVideoPipeline, mode: str, device: torch.device, size: tuple[int, int, int]) -> str:
    """Put the pipeline in `mode`; returns a note for the table."""
    notes = []
    if mode.startswith("fp8"):
        pipe.enable_fp8()  # on the CPU copy, before placing
    if mode in ("block-offload", "fp8+block-offload"):
        pipe.enable_block_offload(device, prefetch=1)
        notes.append("prefetch 1")
    elif mode == "model-cpu-offload":
        pipe.enable_model_cpu_offload(device)
    else:
        if mode == "text-encoder-on-cpu":
            pipe.enable_text_encoder_on_cpu()
        pipe.to(device)
    if mode == "vae-tiling":
        pipe.enable_vae_tiling()
        width, height, _ = size
        vae = pipe.vae
        if not (width > vae.tile_sample_min_width or height > vae.tile_sample_min_height):
            if device.type == "cpu":
                stride = CPU_TILE * 3 // 4
                vae.enable_tiling(CPU_TILE, CPU_TILE, stride, stride)
                notes.append(f"tiles shrunk to {CPU_TILE} px so tiling engages")
            else:
                notes.append(f"no-op: video not larger than the {vae.tile_sample_min_width} px tiles")
        else:
            notes.append(f"{vae.tile_sample_min_width} px tiles, stride {vae.tile_sample_stride_width}")
    if device.type == "cpu" and "offload" in mode:
        notes.append("degenerate on CPU: smoke test only")
    return "; ".join(notes)


def fp8_skip_reason(device: torch.device) -> str | None:
    try:
        import torchao  # noqa: F401
    except ImportError:
        return f"skipped: {TORCHAO_INSTALL_HINT}"
    for where in {torch.device("cpu"), device}:
        if not is_fp8_available(where):
            return f"skipped: float8 tensors unavailable on {where} (torch {torch.__version__})"
    return None


# ------------------------------------------------------------------------------------------------------------
# Measurement
# ------------------------------------------------------------------------------------------------------------
def timed_calls(
    pipe: MotifVideoPipeline, device: torch.device, size: tuple[int, int, int], steps: int, seed: int
) -> tuple[float, float, list[float], float]:
    """Warm-up call, then the measured one -> (peak, resident, step intervals in ms, total seconds)."""
    cuda = device.type == "cuda"
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    width, height, frames = size
    marks: list[float] = []

    def on_step_end(p: Any, i: int, t: Any, tensors: dict) -> dict:
        sync()
        marks.append(time.perf_counter())
        return {}

    def call(n_steps: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        pipe(
            prompt=PROMPT,
            height=height,
            width=width,
            num_frames=frames,
            num_inference_steps=n_steps,
            generator=generator,
            output_type="pt",
            callback_on_step_end=on_step_end,
        )

    call(2)  # warm-up
    marks.clear()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        call(steps)
        sync()
        total = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device)
    else:
        with RssPeak() as rss:
            start = time.perf_counter()
            call(steps)
            total = time.perf_counter() - start
        resident, peak = rss.start, rss.delta
    return peak, resident, [(b - a) * 1e3 for a, b in zip(marks, marks[1:])], total


def measure(
    mode: str, base: dict[str, Any], device: torch.device, size: tuple[int, int, int], steps: int, seed: int
) -> Result:
    if mode.startswith("fp8"):
        reason = fp8_skip_reason(device)
        if reason:
            return Result(mode, note=reason)
    pipe = make_pipeline(base)
    try:
        note = apply_mode(pipe, mode, device, size)
        peak, resident, intervals, total = timed_calls(pipe, device, size, steps, seed)
    except torch.cuda.OutOfMemoryError:
        return Result(mode, note="out of memory")
    finally:
        del pipe
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return Result(mode, peak, resident, statistics.median(intervals), total, note)


def print_table(results: list[Result], device: torch.device) -> None:
    if device.type == "cuda":
        print("| mode | peak GiB (max_memory_allocated) | resident GiB | ms/step | total s | note |")
        scale = GIB
    else:
        print(
            "| mode | peak RSS delta MiB (process RSS; not comparable to GPU memory) | RSS before MiB | ms/step "
            "| total s | note |"
        )
        scale = MIB
    print("|---|---|---|---|---|---|")
    for r in results:
        if r.total_s is None:
            print(f"| {r.mode} | - | - | - | - | {r.note} |")
            continue
        digits = 2 if device.type == "cuda" else 0
        cells = [r.mode, f"{r.peak / scale:.{digits}f}", f"{r.resident / scale:.{digits}f}"]
        cells += [f"{r.ms_per_step:.1f}", f"{r.total_s:.2f}", r.note]
        print("| " + " | ".join(cells) + " |")


def parse_size(text: str) -> tuple[int, int, int]:
    try:
        width, height, frames = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must look like 832x480x49 (WxHxF), got {text!r}") from None
    return width, height, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default: tiny components) or cuda (official 2B)")
    parser.add_argument("--size", type=parse_size, default=None, help="WxHxF (default: 32x32x9 CPU, 832x480x49 CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the measured call (default: 4 CPU, 3 CUDA)")
    parser.add_argument("--vae", choices=("wan", "tiny"), default=None, help="CUDA only; default wan")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    diffusers_logging.set_verbosity_error()

    device = torch.device(args.device)
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        print("skipped: --device cuda, but no CUDA GPU is available (torch.cuda.is_available() is False)")
        return
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    steps = args.steps or DEFAULT_STEPS[device.type]
    if steps < 2:
        parser.error("--steps must be >= 2: a step is timed between two step-end callbacks")
    if device.type == "cpu" and args.vae == "wan":
        parser.error("--vae wan is for CUDA runs; the CPU run uses the tiny components")
    size = args.size or parse_size(DEFAULT_SIZE[device.type])

    base, what = build_components(device.type == "cuda", device, args.vae or "wan", args.seed)
    results = []
    for mode in modes:
        results.append(measure(mode, base, device, size, steps, args.seed))
        print(f"  done: {mode}", file=sys.stderr, flush=True)
    print_table(results, device)
    width, height, frames = size
    print(f"\n{device.type}: {what}; T2V {width}x{height}x{frames}, {steps} steps, 1 prompt + negative prompt, APG.")
    if device.type == "cpu":
        print(
            "Note: on CPU the weights already live on the CPU, so the offload modes move nothing: their rows only "
            "show that the modes run. CPU memory is process RSS, not comparable to GPU memory."
        )


if __name__ == "__main__":
    main()
