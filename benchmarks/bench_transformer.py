"""Time one transformer forward of ours against diffusers' `MotifVideoTransformer3DModel` (same weights, same inputs).

Run from the repository root (diffusers must be installed: `pip install -e ".[test]"`):

    python benchmarks/bench_transformer.py                  # CPU case, then GPU cases when CUDA is available
    python benchmarks/bench_transformer.py --cpu-only --repeats 10
    python benchmarks/bench_transformer.py --gpu-only --attention-backend flash

CPU case: a small fp32 model (2 dual + 2 encoder single + 2 decoder blocks, 4x32 heads) on a 33-channel 5x16x16
latent grid, text 64 tokens right-padded with a mask (the pipeline's 512 with ~100 valid, scaled down); B=1 (ours
drops the mask entirely) and B=2 with unequal valid lengths (ours keeps a trimmed mask).
GPU cases: the official 2B config in bf16, B=1, text 512 tokens with 120 valid, at 832x480x49 and 1280x736x121.
Both models hold random weights; ours loads diffusers' state dict and fuses q/k/v (its inference mode). Diffusers
always attends with the full padded mask. Times are medians over the repeats after warmup; "peak GiB" is the model's
weights plus the extra memory allocated during its forward (torch.cuda.max_memory_allocated).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import MotifVideoTransformer3DModel
from diffusers.utils import logging as diffusers_logging

import motif_video
from motif_video import MotifVideoConfig, MotifVideoTransformer, get_preset
from motif_video.models import get_attention_backend

CPU_CONFIG = MotifVideoConfig(
    num_attention_heads=4,
    attention_head_dim=32,
    rope_axes_dim=(8, 12, 12),
    num_layers=2,
    num_single_layers=4,
    num_decoder_layers=2,
    text_embed_dim=64,
    image_embed_dim=48,
)
GPU_VIDEOS = ((832, 480, 49), (1280, 736, 121))  # width, height, frames


@dataclass
class Result:
    ms: float | None = None  # None: out of memory
    peak_gib: float | None = None
    out: torch.Tensor | None = None


def build_models(
    config: MotifVideoConfig, device: torch.device, dtype: torch.dtype
) -> tuple[MotifVideoTransformer, MotifVideoTransformer3DModel]:
    kwargs = {k: v for k, v in config.to_dict().items() if not k.startswith("_")}
    with torch.device(device):
        ref = MotifVideoTransformer3DModel(**kwargs).to(dtype).eval()
        ours = MotifVideoTransformer(config).to(dtype).eval()
    ours.load_state_dict(ref.state_dict())
    ours.fuse_qkv_projections()
    return ours, ref


def make_inputs(
    config: MotifVideoConfig,
    grid: tuple[int, int, int],
    valid: list[int],
    text_len: int,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    b = len(valid)
    mask = torch.zeros(b, text_len, dtype=torch.long, device=device)
    for i, n in enumerate(valid):
        mask[i, :n] = 1  # right padding, as the tokenizer does
    return {
        "hidden_states": torch.randn(b, config.in_channels, *grid, device=device, dtype=dtype),
        "timestep": torch.rand(b, device=device) * 1000,
        "encoder_hidden_states": torch.randn(b, text_len, config.text_embed_dim, device=device, dtype=dtype),
        "encoder_attention_mask": mask,
    }


def time_pair(
    models: dict[str, torch.nn.Module], inputs: dict[str, torch.Tensor], warmup: int, repeats: int
) -> dict[str, Result]:
    """Alternate the models call by call (so background load hits both alike); a model that runs out of memory
    is dropped and reported as OOM."""
    cuda = inputs["hidden_states"].is_cuda
    sync: Callable[[], None] = torch.cuda.synchronize if cuda else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in models}
    results = {name: Result() for name in models}
    peaks = dict.fromkeys(models, 0)
    live = dict(models)
    with torch.inference_mode():
        for i in range(warmup + repeats):
            for name, model in list(live.items()):
                if cuda:
                    results[name].out = None
                    gc.collect()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                try:
                    sync()
                    start = time.perf_counter()
                    out = model(**inputs, image_embeds=None, return_dict=False)[0]
                    sync()
                except torch.cuda.OutOfMemoryError:
                    del live[name]
                    results[name] = Result()
                    continue
                if i >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
                if cuda:
                    peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() - base)
                results[name].out = out.float()
                del out
    for name, model in live.items():
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        results[name].ms = statistics.median(times[name])
        results[name].peak_gib = (peaks[name] + weights) / 2**30 if cuda else None
    return results


def row(case: str, device: str, dtype: torch.dtype, tokens: int, ours: Result, ref: Result) -> str:
    def fmt(x: float | None, spec: str) -> str:
        return "OOM" if x is None else format(x, spec)

    ratio = f"{ours.ms / ref.ms:.2f}" if ours.ms and ref.ms else "-"
    diff = f"{(ours.out - ref.out).abs().max().item():.2e}" if ours.out is not None and ref.out is not None else "-"
    peaks = [fmt(ours.peak_gib, ".2f"), fmt(ref.peak_gib, ".2f")] if device != "cpu" else ["-", "-"]
    cells = [case, device, str(dtype).removeprefix("torch."), str(tokens), fmt(ours.ms, ".1f"), fmt(ref.ms, ".1f")]
    cells += [ratio, diff, *peaks]
    return "| " + " | ".join(cells) + " |"


def run_case(
    case: str,
    models: tuple[MotifVideoTransformer, MotifVideoTransformer3DModel],
    inputs: dict[str, torch.Tensor],
    warmup: int,
    repeats: int,
) -> str:
    ours, ref = models
    c = ours.config
    f, h, w = inputs["hidden_states"].shape[2:]
    tokens = (f // c.patch_size_t) * (h // c.patch_size) * (w // c.patch_size)
    results = time_pair({"ours": ours, "ref": ref}, inputs, warmup, repeats)
    device = inputs["hidden_states"].device.type
    return row(case, device, ours.dtype, tokens, results["ours"], results["ref"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--cpu-only", action="store_true", help="run only the CPU case")
    group.add_argument("--gpu-only", action="store_true", help="run only the GPU cases")
    parser.add_argument("--repeats", type=int, default=5, help="timed CPU forwards per model (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed CPU forwards per model")
    parser.add_argument("--gpu-repeats", type=int, default=1, help="timed GPU forwards per model (after 1 warmup)")
    parser.add_argument("--attention-backend", default=None, help="our backend: sdpa (default), flash or sage")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    motif_video.set_attention_backend(args.attention_backend)
    diffusers_logging.set_verbosity_error()  # its casting advice concerns from_pretrained, not random weights

    print(
        "| case | device | dtype | tokens N | ours ms | diffusers ms | ours/ref | max abs diff | ours peak GiB |"
        " ref peak GiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    if not args.gpu_only:
        cpu = torch.device("cpu")
        torch.manual_seed(args.seed)
        models = build_models(CPU_CONFIG, cpu, torch.float32)
        for valid in ([32], [32, 20]):
            inputs = make_inputs(CPU_CONFIG, (5, 16, 16), valid, 64, cpu, torch.float32)
            case = f"small B={len(valid)} 5x16x16 text 64 (valid {'/'.join(map(str, valid))})"
            print(run_case(case, models, inputs, args.warmup, args.repeats), flush=True)
        del models

    skipped = None
    if args.cpu_only:
        skipped = "--cpu-only"
    elif not torch.cuda.is_available():
        skipped = "no CUDA GPU"
    if skipped is None:
        gpu = torch.device("cuda")
        config = get_preset("motif-video-2b")
        torch.manual_seed(args.seed)
        models = build_models(config, gpu, torch.bfloat16)
        for width, height, frames in GPU_VIDEOS:
            grid = ((frames - 1) // 4 + 1, height // 8, width // 8)
            inputs = make_inputs(config, grid, [120], 512, gpu, torch.bfloat16)
            case = f"2B {width}x{height}x{frames} text 512 (valid 120)"
            print(run_case(case, models, inputs, 1, args.gpu_repeats), flush=True)
    print(f"\nattention backend (ours): {get_attention_backend()}; diffusers: its default (SDPA with mask)")
    if skipped:
        print(f"GPU cases (official 2B config, bf16) skipped: {skipped}.")


if __name__ == "__main__":
    main()
