"""FP8 weight-only quantization of the transformer blocks, through torchao (an optional dependency).

Design:
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

__all__ = ["TORCHAO_INSTALL_HINT", "is_fp8_available", "quantize_fp8_weight_only"]

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
    if blocks is None:
        if not hasattr(model, "blocks"):
            raise TypeError(f"{type(model).__name__} has no `blocks`; pass blocks=[...]")
        blocks = model.blocks
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
