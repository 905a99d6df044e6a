"""`benchmarks/bench_precision.py`: torchao's FP8 compute measured on CPU for its numbers. The copy it makes is
really float8 (per-row scaled weights, activations quantized per call), close to bf16 and not equal to it; the
original transformer is untouched; and outside the measurement both hardware checks refuse CPU again."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from motif_video.pipeline import quantization
from motif_video.pipeline.tiny import build_tiny_components

pytest.importorskip("torchao")
ROOT = Path(__file__).resolve().parent.parent


def _bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import bench_precision

        return bench_precision
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_fp8_compute_copy_on_cpu_is_float8_and_the_checks_come_back():
    bench = _bench()
    transformer = build_tiny_components(0)["transformer"].eval()
    linears = [m for m in transformer.blocks[0].modules() if isinstance(m, torch.nn.Linear)]
    linear = next(m for m in linears if m.in_features % 16 == 0 and m.out_features % 16 == 0)
    before = linear.weight.detach().clone()
    fp8 = bench.transformer_in("fp8-dynamic", transformer)
    bf16 = bench.transformer_in("bf16", transformer)
    assert torch.equal(linear.weight, before)  # the fp32 original is left as it is
    name = next(n for n, m in transformer.named_modules() if m is linear)
    quantized, half = fp8.get_submodule(name), bf16.get_submodule(name)
    assert type(quantized.weight).__name__ == "Float8Tensor" and quantized.weight.qdata.dtype == torch.float8_e4m3fn
    x = torch.randn(3, linear.in_features, dtype=torch.bfloat16)
    with torch.no_grad():
        got, want = quantized(x).float(), half(x).float()
    error = ((got - want).norm() / want.norm()).item()
    assert 1e-4 < error < 0.1, error  # float8's rounding: visible, and small
    assert quantization.fp8_problem("dynamic", "cpu") is not None  # refused again outside the measurement
    with pytest.raises((AssertionError, ValueError)):
        quantization.quantize_fp8_dynamic(bench.transformer_in("bf16", transformer), granularity="row")
