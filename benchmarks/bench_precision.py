"""What the lower-precision modes cost in quality, on CPU with the shipped small model: bf16, FP8 weight-only storage
and FP8 compute (torchao's dynamic float8 activations and weights, per row and per tensor), against fp32.

Run from the repository root (torchao installed; the lab importable: `pip install -e lab`):

    python benchmarks/bench_precision.py --threads 2                  # 96 held-out prompts, ~12 minutes
    python benchmarks/bench_precision.py --prompts 16 --modes fp32 bf16 fp8-dynamic

FP8 compute needs a CUDA GPU of compute capability >= 8.9 to be fast, and both torchao and our
`quantization.fp8_problem` refuse anything else. Its *numbers*, though, do not need one: torchao's `Float8Tensor`
quantizes each activation and weight (scale = amax / 448, a cast to float8 e4m3) and multiplies through
`torch._scaled_mm`, which torch 2.13 also has on CPU (a float32-accumulating reference kernel, as the tensor cores
accumulate). So `cpu_fp8` lifts the two hardware checks for the length of a run, and torchao's own code computes
here what it would compute on an H100, up to the order of the accumulation: a quality measurement, not a timing
(on CPU FP8 is slower than fp32).

Per mode, on `--prompts` held-out T2V prompts of the lab's evaluator (video i from seed i, the release's size,
steps and guider): the held-out score (attributes correct, points), its change from fp32 and from bf16 (the GPU's
default precision, which the FP8 modes start from), and the frame PSNR (dB) against fp32's and bf16's frames.
The modes: "fp32" (the reference, exact mode), "bf16" (the transformer in bf16), "fp8-weights" (bf16, weights
stored as float8 per row, dequantized per matmul) and "fp8-dynamic" (bf16, float8 compute, per-row scales; the
per-tensor variant cannot run on this model, see `MODES`); the FP8 modes quantize the Linears of the blocks only,
as on the GPU (`pipeline.quantization`). Caveat: the small model is 3M parameters (width 128); the 2B model's
activations may have other outliers, so this bounds this model's cost; the GPU suite's "precision" section measures
the 2B model's error.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

from _common import psnr
from bench_speed import evaluate as evaluate_mode
from motif_video.core.release import small_model_dir
from motif_video.pipeline import MotifVideoPipeline, quantization

# "fp8-dynamic-tensor" (per-tensor scales) cannot run on this model: torchao 0.18 takes the per-tensor scale of a
# 128x128 weight (its block is the whole 128x128 matrix) for 128x128 block scaling and then asserts on the
# activation's per-tensor scale; the small model's width is 128. The 2B model has no 128x128 Linear in its blocks.
MODES = ("fp32", "bf16", "fp8-weights", "fp8-dynamic")


@contextmanager
def cpu_fp8() -> Iterator[None]:
    """torchao's float8 compute allowed on CPU for the block: its hardware check and `fp8_problem` step aside."""
    from torchao.quantization import quant_api

    saved = quant_api._check_hardware_support, quantization.fp8_problem
    quant_api._check_hardware_support = lambda *args, **kwargs: None
    quantization.fp8_problem = lambda *args, **kwargs: None
    try:
        yield
    finally:
        quant_api._check_hardware_support, quantization.fp8_problem = saved


def transformer_in(mode: str, fp32: torch.nn.Module) -> torch.nn.Module:
    """A copy of the fp32 transformer in `mode` (the original is left as it is)."""
    if mode == "fp32":
        return fp32
    model = copy.deepcopy(fp32).to(torch.bfloat16)
    if mode == "fp8-weights":
        quantization.quantize_fp8_weight_only(model)
    elif mode == "fp8-dynamic":
        with cpu_fp8():
            quantization.quantize_fp8_dynamic(model, granularity="row")
    return model


def evaluate(pipe: MotifVideoPipeline, prompts: int) -> tuple[np.ndarray, float]:
    """(every video's frames, the held-out T2V score in points): `bench_speed`'s evaluation in exact mode."""
    wrapped, table, _ = evaluate_mode(pipe, "exact", prompts)
    return np.concatenate(wrapped.frames), 100 * table.overall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES, help="fp32 and bf16 always run")
    parser.add_argument("--prompts", type=int, default=96, help="held-out T2V prompts for the evaluator")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 on a shared machine)")
    args = parser.parse_args()
    if args.prompts < 1:
        parser.error("--prompts must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    modes = ["fp32", "bf16"] + [m for m in args.modes if m not in ("fp32", "bf16")]
    pipe = MotifVideoPipeline.from_pretrained(str(small_model_dir()))
    pipe.set_progress_bar_config(disable=True)
    fp32 = pipe.transformer
    results: dict[str, tuple[np.ndarray, float]] = {}
    for mode in modes:
        started = time.perf_counter()
        pipe.transformer = transformer_in(mode, fp32)
        try:
            results[mode] = evaluate(pipe, args.prompts)
        finally:
            pipe.transformer = fp32
        print(f"  {mode}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)

    (ref, ref_score), (half, half_score) = results["fp32"], results["bf16"]
    print("| mode | held-out score | vs fp32 | vs bf16 | PSNR vs fp32 (dB) | PSNR vs bf16 (dB) |")
    print("|---|---|---|---|---|---|")
    for mode in modes:
        frames, score = results[mode]
        vs_fp32 = "exact" if mode == "fp32" else f"{psnr(frames, ref):.1f}"
        vs_bf16 = "-" if mode == "fp32" else "exact" if mode == "bf16" else f"{psnr(frames, half):.1f}"
        cells = [mode, f"{score:.1f}", f"{score - ref_score:+.1f}", f"{score - half_score:+.1f}", vs_fp32, vs_bf16]
        print("| " + " | ".join(cells) + " |", flush=True)
    import torchao

    print(
        f"\nSmall model ({small_model_dir()}), CPU, torch {torch.__version__}, torchao {torchao.__version__}, "
        f"{torch.get_num_threads()} threads; {args.prompts} held-out T2V prompts, video i from seed i."
    )


if __name__ == "__main__":
    main()
