"""Training step (forward + backward) with and without TREAD: analytic FLOPs, measured step time, MFU.

Run from the repository root:

    python benchmarks/bench_tread.py                                   # CPU case (about a minute)
    python benchmarks/bench_tread.py --route 2,24,0.5 --repeats 5 --threads 1    # a shared, busy CPU
    python benchmarks/bench_tread.py --gpu --checkpointing             # official 2B, bf16, 832x480x49

CPU case: the official architecture (12 dual + 16 encoder single + 8 decoder blocks, head dim 128, text dim 2560)
at reduced width (2 heads, D = 256), fp32, B=1, a 3x16x32 latent grid (384 video tokens), 64 text tokens.
GPU case (`--gpu`): the official 2B config in bf16, B=1, 832x480x49 (latent 13x60x104 -> 20,280 tokens), text
512 tokens of dim 2560 with no padding, no image tokens (T2V); `--checkpointing` recomputes each block in the
backward (per-block activation checkpointing, as in training).
Both rows hold the same random weights; the TREAD row draws a fresh `random_route` every step (outside the timed
region), keeping `round(N * (1 - ratio))` video tokens in global blocks [START, END). A step is zero_grad,
forward, an MSE loss, backward; no optimizer. Times are medians over the repeats after warmup, the two rows
alternating step by step so background load hits both alike. FLOPs are `training_step_flops` (matmul and
attention FLOPs, 3x forward, recompute not counted); MFU = FLOPs / time / the device's dense bf16 peak (CUDA only).
On a CPU that other processes also load, pass `--threads 1`: OpenMP threads spinning on oversubscribed cores make
the steps 5-10x slower and the timings erratic.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

import motif_video
from motif_video import MotifVideoConfig, MotifVideoTransformer, get_preset
from motif_video.models import get_attention_backend
from motif_video.models.routing import random_route
from motif_video.training.flops import kept_tokens, mfu, peak_flops_for, training_step_flops
from motif_video.training.parallel import apply_activation_checkpointing

CPU_CONFIG = get_preset("motif-video-2b").replace(num_attention_heads=2)  # D = 2 x 128 = 256
CPU_GRID, CPU_TEXT = (3, 16, 32), 64
GPU_GRID, GPU_TEXT = (13, 60, 104), 512  # 832x480x49


def parse_route(text: str) -> tuple[int, int, float]:
    try:
        start, end, ratio = text.split(",")
        return int(start), int(end), float(ratio)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--route must be START,END,RATIO (e.g. 2,24,0.5), got {text!r}") from None


def build(config: MotifVideoConfig, device: torch.device, dtype: torch.dtype, checkpointing: bool):
    with torch.device(device):
        model = MotifVideoTransformer(config)
        model.init_weights()
        # Random gates and output projection, so every block really takes part (the compute is the same).
        for block in model.blocks:
            for name in ("norm1", "norm1_context", "norm"):
                if hasattr(block, name):
                    torch.nn.init.normal_(getattr(block, name).linear.weight, std=0.02)
        torch.nn.init.normal_(model.proj_out.weight, std=0.02)
    model = model.to(dtype).train()
    if checkpointing:
        apply_activation_checkpointing(model)
    return model


def make_inputs(config: MotifVideoConfig, grid: tuple[int, int, int], text_len: int, device, dtype):
    g = torch.Generator(device="cpu").manual_seed(0)
    return {
        "hidden_states": torch.randn(1, config.in_channels, *grid, generator=g).to(device, dtype),
        "timestep": torch.rand(1, generator=g).to(device) * 1000,
        "encoder_hidden_states": torch.randn(1, text_len, config.text_embed_dim, generator=g).to(device, dtype),
    }


def time_steps(
    model: MotifVideoTransformer,
    inputs: dict[str, torch.Tensor],
    span: tuple[int, int, float],
    warmup: int,
    repeats: int,
) -> dict[str, float | None]:
    """Median seconds of one training step per row ('dense', 'tread'); None for a row that ran out of memory."""
    device = inputs["hidden_states"].device
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    c = model.config
    _, _, f, h, w = inputs["hidden_states"].shape
    n = (f // c.patch_size_t) * (h // c.patch_size) * (w // c.patch_size)
    target = torch.randn(1, c.out_channels, f, h, w, device=device)
    g = torch.Generator(device="cpu").manual_seed(1)
    times: dict[str, list[float]] = {"dense": [], "tread": []}
    live = set(times)
    for i in range(warmup + repeats):
        for name in ("dense", "tread"):
            if name not in live:
                continue
            route = random_route(1, n, span[2], span[0], span[1], g, device) if name == "tread" else None
            model.zero_grad(set_to_none=True)
            try:
                sync()
                start = time.perf_counter()
                out = model(**inputs, route=route).sample
                (out.float() - target).square().mean().backward()
                sync()
            except torch.cuda.OutOfMemoryError:
                live.discard(name)
                model.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                continue
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
            del out
    return {name: statistics.median(t) if name in live and t else None for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", action="store_true", help="the official 2B config in bf16 at 832x480x49 on CUDA")
    parser.add_argument("--route", type=parse_route, default=(2, 24, 0.5), help="TREAD START,END,RATIO")
    parser.add_argument("--checkpointing", action="store_true", help="per-block activation checkpointing")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per row")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's)")
    parser.add_argument("--attention-backend", default=None, help="sdpa (default), flash or sage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    motif_video.set_attention_backend(args.attention_backend)
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu needs a CUDA GPU")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    if args.gpu:
        config, grid, text_len, device, dtype = get_preset("motif-video-2b"), GPU_GRID, GPU_TEXT, "cuda", torch.bfloat16
        case = "2B 832x480x49"
    else:
        config, grid, text_len, device, dtype = CPU_CONFIG, CPU_GRID, CPU_TEXT, "cpu", torch.float32
        case = f"D=256 {'x'.join(map(str, grid))}"
    device = torch.device(device)
    start, end, ratio = args.route
    if not 0 <= start < end <= config.num_blocks or not 0 <= ratio < 1:
        parser.error(f"--route needs 0 <= START < END <= {config.num_blocks} and 0 <= RATIO < 1")
    torch.manual_seed(args.seed)
    model = build(config, device, dtype, args.checkpointing)
    inputs = make_inputs(config, grid, text_len, device, dtype)
    n = (grid[0] // config.patch_size_t) * (grid[1] // config.patch_size) * (grid[2] // config.patch_size)
    times = time_steps(model, inputs, args.route, args.warmup, args.repeats)

    shape = dict(batch=1, latent_frames=grid[0], latent_height=grid[1], latent_width=grid[2], text_len=text_len)
    flops = {
        "dense": training_step_flops(config, **shape).matmul,
        "tread": training_step_flops(config, **shape, route=args.route).matmul,
    }
    peak = peak_flops_for(device)
    print(
        "| case | route | device | dtype | video tokens | kept | TFLOP/step | FLOP saving | median step s"
        " | time saving | TFLOP/s | MFU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in ("dense", "tread"):
        secs = times[name]
        route = f"{start}-{end - 1} @ {ratio:g}" if name == "tread" else "none"
        kept = kept_tokens(n, ratio) if name == "tread" else n
        saving = 1 - flops[name] / flops["dense"]
        time_saving = "-" if secs is None or times["dense"] is None else f"{1 - secs / times['dense']:.1%}"
        util = None if secs is None else mfu(flops[name], secs, peak)
        cells = [case, route, device.type, str(dtype).removeprefix("torch."), str(n), str(kept)]
        cells += [f"{flops[name] / 1e12:.3f}", f"{saving:.1%}", "OOM" if secs is None else f"{secs:.3f}"]
        cells += [time_saving, "-" if secs is None else f"{flops[name] / secs / 1e12:.2f}"]
        cells.append("-" if util is None else f"{util:.1%}")
        print("| " + " | ".join(cells) + " |", flush=True)

    print(
        f"\n{config.num_layers} dual + {config.num_encoder_single_layers} encoder single + "
        f"{config.num_decoder_layers} decoder blocks, D={config.hidden_size}, text {text_len} tokens; route "
        f"[{start}, {end}) over global block indices; attention backend: {get_attention_backend()}; "
        f"activation checkpointing: {'on' if args.checkpointing else 'off'} (recompute not counted in the FLOPs); "
        f"median of {args.repeats} steps after {args.warmup} warmup; torch threads: {torch.get_num_threads()}"
    )
    if peak is None:
        print("MFU: not reported (no dense bf16 peak known for this device)")
    if any(t is None for t in times.values()):
        print("OOM: out of GPU memory; try --checkpointing")


if __name__ == "__main__":
    main()
