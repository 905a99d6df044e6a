"""FP8 quantization of the transformer blocks, through torchao (an optional dependency): weight-only storage, or
FP8 compute (dynamic activations and weights).

Modes (`FP8_MODES`; `pipe.enable_fp8(mode)`, `--fp8 MODE`):
- "weights": weight-only (below). Saves memory, not time; runs wherever float8 casts do (CPU, any CUDA GPU).
- "dynamic" / "dynamic-tensor": torchao `Float8DynamicActivationFloat8WeightConfig`: weights stored as float8
  e4m3 and every activation cast to float8 at run time, scaled per row ("dynamic") or per tensor
  ("dynamic-tensor"), so the matmuls run on FP8 tensor cores (`torch._scaled_mm`). Saves time and memory;
  needs a CUDA GPU of compute capability >= 8.9 (Ada, Hopper) and layers whose both dimensions divide by 16
  (others stay as they are). `fp8_problem(mode, device)` says, before any model load, why a mode cannot run
  (torchao absent, no CUDA, an older GPU); `quantize_fp8` raises that as a ValueError. Its error against bf16
  is measured by `benchmarks/gpu_suite.py` (section "precision"), and its quality cost on the shipped small model,
  with torchao's numerics on CPU, by `benchmarks/bench_precision.py` (-0.6 held-out points against bf16).
- FP8 attention: torchao 0.18 has one only as a prototype (`torchao.prototype.attention`, FP8 through
  FlashAttention 3), which needs Hopper plus the separately built `flash_attn_interface` package and takes no key
  mask; it is not wired in. SageAttention (`--attention sage`, 8-bit QK) is the low-precision attention here.

Weight-only design:
- Only the `nn.Linear` layers inside the blocks (`model.blocks`) are quantized; they hold nearly all the
  weights. Embedders, norms, `norm_out`/`proj_out` and RoPE keep their dtype: small and precision-sensitive.
- Weights are stored as float8 e4m3 with one scale per output row (torchao `Float8WeightOnlyConfig`, per-row
  granularity). Each matmul dequantizes the weight back to its original dtype, so this saves memory (half of
  bf16 for the blocks), not time, and needs no FP8 matmul hardware: only float8 casts on the weights'
  device, which CUDA and CPU builds of torch have. `is_fp8_available` probes exactly that.
- In place, on whatever device the weights are: quantize, then move (`.to("cuda")`) or enable offloading.
  Fuse q/k/v (`fuse_qkv_projections`) before quantizing, never unfuse after: fusing concatenates weights.
  Global torch/inductor settings are left alone (`set_inductor_config=False`).

Needs torchao >= 0.10 (0.9 lacks `set_inductor_config`); tested on CPU with 0.10, 0.13 and 0.18.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "FP8_MODES",
    "TORCHAO_INSTALL_HINT",
    "fp8_problem",
    "is_fp8_available",
    "quantize_fp8",
    "quantize_fp8_dynamic",
    "quantize_fp8_weight_only",
]

FP8_MODES = ("weights", "dynamic", "dynamic-tensor")
FP8_COMPUTE_CAPABILITY = (8, 9)  # float8 tensor-core matmuls: Ada (8.9) and Hopper (9.0) onwards

TORCHAO_INSTALL_HINT = "FP8 quantization needs torchao: `pip install torchao` (or `pip install 'motif-video[fp8]'`)"
_QUANTIZABLE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _import_torchao() -> tuple[Any, Any]:
    """torchao's `quantize_` and `Float8WeightOnlyConfig`, or an ImportError that says how to install it."""
    try:
        from torchao.quantization import Float8WeightOnlyConfig, quantize_
    except ImportError as error:
        raise ImportError(f"{TORCHAO_INSTALL_HINT} (import failed: {error})") from error
    return quantize_, Float8WeightOnlyConfig


def _float8_casts_work(device: torch.device) -> bool:
    if not hasattr(torch, "float8_e4m3fn"):
        return False
    try:
        probe = torch.ones(2, device=device).to(torch.float8_e4m3fn)
        return bool((probe.to(torch.float32) == 1).all())
    except (RuntimeError, TypeError):
        return False


def is_fp8_available(device: torch.device | str | None = None) -> bool:
    """True when torchao is installed and `device` (default: CUDA if present, else CPU) can hold float8."""
    try:
        _import_torchao()
    except ImportError:
        return False
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return _float8_casts_work(torch.device(device))


def _is_plain_linear(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) and type(weight) is nn.Parameter and weight.dtype in _QUANTIZABLE_DTYPES


def quantize_fp8_weight_only(model: nn.Module, *, blocks: Sequence[nn.Module] | None = None) -> int:
    """Store the weights of every Linear in the blocks as per-row-scaled float8 (in place).

    blocks: the modules to quantize (default `model.blocks`). Linears already quantized, or not in
    fp32/bf16/fp16, are left as they are. Returns how many Linears were quantized.
    Raises ImportError (with the install command) without torchao, and RuntimeError when the weights'
    device cannot hold float8 tensors.
    """
    quantize_, Float8WeightOnlyConfig = _import_torchao()
    blocks = _blocks_of(model, blocks)
    targets = [m for block in blocks for m in block.modules() if _is_plain_linear(m)]
    for device in {m.weight.device for m in targets}:
        if not _float8_casts_work(device):
            raise RuntimeError(
                f"device {device} cannot store float8 tensors (torch {torch.__version__}); quantize on CPU or a "
                "CUDA GPU, or run without FP8"
            )
    chosen = {id(m) for m in targets}
    config = Float8WeightOnlyConfig(set_inductor_config=False)
    for block in blocks:
        quantize_(block, config, filter_fn=lambda module, fqn: id(module) in chosen)
    return len(targets)


def fp8_problem(mode: str, device: torch.device | str | None = None) -> str | None:
    """Why FP8 `mode` cannot run on `device` (default: CUDA if present, else CPU), as one sentence saying what to
    change; None when it can. Checks only the environment (torchao, device), never a model."""
    if mode not in FP8_MODES:
        return f"unknown FP8 mode {mode!r}: choose one of {', '.join(FP8_MODES)}"
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if mode != "weights":  # the hardware first: no torchao import (and its warnings) to refuse a CPU run
        if device.type != "cuda" or not torch.cuda.is_available():
            return (
                f"--fp8 {mode} computes in FP8 on a CUDA GPU of compute capability >= 8.9 (Ada, Hopper), not on "
                f"{device.type}: use --fp8 weights, or run on such a GPU"
            )
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_COMPUTE_CAPABILITY:
            name = torch.cuda.get_device_name(device)
            return (
                f"--fp8 {mode} needs compute capability >= 8.9 (Ada, Hopper); {name} has "
                f"{capability[0]}.{capability[1]}: use --fp8 weights"
            )
    try:
        _import_torchao()
    except ImportError:
        return TORCHAO_INSTALL_HINT
    if mode == "weights" and not _float8_casts_work(device):
        return f"device {device} cannot store float8 tensors (torch {torch.__version__}): run without --fp8"
    return None


def _fits_fp8_matmul(module: nn.Module) -> bool:
    return _is_plain_linear(module) and module.in_features % 16 == 0 and module.out_features % 16 == 0


def quantize_fp8_dynamic(
    model: nn.Module, *, granularity: str = "row", blocks: Sequence[nn.Module] | None = None
) -> int:
    """FP8 compute for every Linear in the blocks (in place): float8 weights, activations cast per call, scaled
    per row (`granularity="row"`) or per tensor ("tensor"). Call after `fuse_qkv_projections` and after moving
    the model to its GPU. Returns how many Linears were quantized (those with a dimension not divisible by 16
    stay as they are). Raises ValueError (what to change) where it cannot run."""
    if granularity not in ("row", "tensor"):
        raise ValueError(f"FP8 granularity must be 'row' or 'tensor', got {granularity!r}")
    blocks = _blocks_of(model, blocks)
    targets = [m for block in blocks for m in block.modules() if _fits_fp8_matmul(m)]
    mode = "dynamic" if granularity == "row" else "dynamic-tensor"
    for device in {m.weight.device for m in targets}:
        problem = fp8_problem(mode, device)
        if problem is not None:
            raise ValueError(problem)
    if granularity == "row" and any(m.weight.dtype != torch.bfloat16 for m in targets):
        raise ValueError(
            "FP8 with per-row scales ('dynamic') needs bf16 weights: convert the transformer to "
            "torch.bfloat16 first, or use 'dynamic-tensor'"
        )  # fmt: skip (torchao asserts otherwise)
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    scale = PerRow() if granularity == "row" else PerTensor()
    config = Float8DynamicActivationFloat8WeightConfig(granularity=scale, set_inductor_config=False)
    chosen = {id(m) for m in targets}
    for block in blocks:
        quantize_(block, config, filter_fn=lambda module, fqn: id(module) in chosen)
    return len(targets)


def quantize_fp8(model: nn.Module, mode: str = "weights") -> int:
    """One of `FP8_MODES` on `model.blocks` (in place); returns how many Linears were quantized."""
    if mode not in FP8_MODES:
        raise ValueError(f"unknown FP8 mode {mode!r}: choose one of {', '.join(FP8_MODES)}")
    if mode == "weights":
        return quantize_fp8_weight_only(model)
    return quantize_fp8_dynamic(model, granularity="row" if mode == "dynamic" else "tensor")


def _blocks_of(model: nn.Module, blocks: Sequence[nn.Module] | None) -> Sequence[nn.Module]:
    if blocks is not None:
        return blocks
    if not hasattr(model, "blocks"):
        raise TypeError(f"{type(model).__name__} has no `blocks`; pass blocks=[...]")
    return model.blocks
