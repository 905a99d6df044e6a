"""Section "parallel" of `gpu_suite.py`: a denoising step through the parallel code path at degree 1 (`--parallel
cp=1,cfg=1`, and the context-parallel transformer at P=1) against the plain path, in a process group of one
(`bench_parallel.measure_pipeline`; NCCL on the GPU): what the parallel machinery costs when it splits nothing."""

from __future__ import annotations

from typing import Any

from _common import fmt_ms
from bench_parallel import VARIANTS as PARALLEL_VARIANTS
from bench_parallel import measure_pipeline as measure_parallel


def parallel(s: Any, ours: Any, text: dict, size: tuple[int, int, int], step_ms: float) -> None:
    """The parallel code path at degree 1 against the plain path (`bench_parallel`, a process group of one)."""
    steps, repeats = 2, 1
    if not s.fits("parallel", "degree 1", (step_ms or 1e3) * len(PARALLEL_VARIANTS) * (repeats + 1) * steps / 1e3):
        return
    width, height, frames = size
    for row in measure_parallel(ours, text["ours"], size, steps, repeats):
        s.add(f"parallel {width}x{height}x{frames}", row.variant, fmt_ms(row.ms_per_step), "-", "-",
              f"{row.overhead_pct:+.1f}% over plain")  # fmt: skip
