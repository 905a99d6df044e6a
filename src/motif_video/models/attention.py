"""The one attention entry point, with a selectable backend.

All attention in the model goes through `attention(q, k, v, key_mask)`; the backend is chosen in one place
(`set_attention_backend`, or the `MOTIF_VIDEO_ATTENTION_BACKEND` environment variable):

- `sdpa`  (default): `torch.nn.functional.scaled_dot_product_attention`, with or without a key mask.
- `flash`: flash-attn's `flash_attn_func` (fp16/bf16 on CUDA) when installed.
- `sage`:  SageAttention's `sageattn` (fp16/bf16 on CUDA) when installed.

Flash and Sage kernels take no key mask; a call that needs one, or whose dtype/device the kernel does not
support, falls back to SDPA, so the numbers never depend on which backend is installed beyond the kernel's
own rounding. Callers trim text padding first (see `transformer.py`), so most calls carry no mask at all.
SageAttention 1.0.x's kernel reads keys in blocks of `SAGE_KEY_BLOCK` and gives the missing keys of a partial
last block a score of 0 instead of leaving them out, so they take a share of the softmax (with 120 text keys, 8
phantom keys: about 4% error in the cross-attention, against 1% for full blocks). Sage therefore runs only where
that share is negligible (`_sage_fits`: at most 1/256 of the keys, i.e. long sequences such as the joint
self-attention, or whole blocks), and only for the head dims it has kernels for (64, 96, 128; others assert);
the short text cross-attention takes SDPA.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch
import torch.nn.functional as F

from motif_video.env import attention_backend_from_env

BACKENDS = ("sdpa", "flash", "sage")
SAGE_KEY_BLOCK = 64  # SageAttention 1.0.x's BLOCK_N: keys per block of its kernel
_backend: str | None = None


def _is_installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends() -> list[str]:
    """Backends usable in this environment."""
    found = ["sdpa"]
    if _is_installed("flash_attn"):
        found.append("flash")
    if _is_installed("sageattention"):
        found.append("sage")
    return found


def set_attention_backend(name: str | None) -> None:
    """Select the backend for all subsequent attention calls (`None` restores the default)."""
    global _backend
    if name is not None:
        name = name.lower()
        if name not in BACKENDS:
            raise ValueError(f"Unknown attention backend {name!r}; choose one of {list(BACKENDS)}")
        if name not in available_backends():
            package = {"flash": "flash-attn", "sage": "sageattention"}[name]
            raise ValueError(f"Attention backend {name!r} needs the `{package}` package, which is not installed")
    _backend = name


def get_attention_backend() -> str:
    if _backend is not None:
        return _backend
    from_env = attention_backend_from_env()
    if from_env is not None:
        set_attention_backend(from_env)
        return from_env
    return "sdpa"


def _kernel_can_run(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def _sage_fits(k: torch.Tensor) -> bool:
    """k: (B, H, Lk, Dh). A head dim Sage has kernels for, and the phantom keys of a partial last block (see the
    module doc) at most 1/256 of the keys."""
    length = k.shape[2]
    return k.shape[-1] in (64, 96, 128) and (-length % SAGE_KEY_BLOCK) * 256 <= length


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func

    # flash-attn takes (B, L, H, Dh).
    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="HND", is_causal=False)


_KERNELS: dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "flash": _flash,
    "sage": _sage,
}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    key_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention.

    q: (B, H, Lq, Dh); k, v: (B, H, Lk, Dh); key_mask: (B, Lk) bool, True = attend, or None.
    Returns (B, H, Lq, Dh).
    """
    backend = get_attention_backend()
    if backend != "sdpa" and key_mask is None and _kernel_can_run(q) and (backend != "sage" or _sage_fits(k)):
        return _KERNELS[backend](q, k, v)
    mask = None if key_mask is None else key_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
