"""Regional `torch.compile` for inference: each repeated transformer block is compiled on its own, from outside the
model, and the embedders, the head and the sampler stay eager.

Why regional: the 36 blocks are three structures (dual-stream, encoder single-stream with cross-attention, DDT
decoder), so a few small graphs cover the whole forward; they compile in seconds rather than the minutes a whole
model graph takes, and a change outside the blocks (the sampler, guidance, step reuse) never invalidates them.
Shapes are dynamic from the first call (`dynamic=True`): the batch (guided [cond; uncond] or conditional only),
the text length and the image tokens of I2V change between calls and steps, and should not recompile
(`tests/test_compile.py` counts compiles across steps, guidance on/off and T2V/I2V). Whether it pays is measured
on the GPU (`benchmarks/gpu_suite.py`, mode "compile"); on CPU it only has to stay correct.

CUDA graphs (`compile_blocks(model, cudagraphs=True)`, `--compile cudagraphs`; CUDA only): inductor's
"reduce-overhead" mode replays each block's kernels as one recorded graph, which removes the launch overhead
between the many small kernels of a block. A graph is recorded per distinct shape, so it pays where shapes are
static: one size, one prompt length, steps after the first (each new text length or batch records again, and
keeps that graph's memory). Each call starts a new graph generation and its outputs are copied out of the graph's
memory pool, so tensors kept across calls (step reuse keeps the encoder's output) are never overwritten by a
later replay. Measured only on the GPU (`gpu_suite.py --sections compile`, row "compile+cudagraphs").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx.experimental import _config as shape_config

COMPILE_MODES = ("blocks", "cudagraphs")  # `--compile` (regional) and `--compile cudagraphs` (CUDA only)


def compile_problem(mode: str, device: torch.device | str) -> str | None:
    """Why compile `mode` cannot run on `device`, as one sentence saying what to change; None when it can."""
    if mode not in COMPILE_MODES:
        return f"unknown compile mode {mode!r}: choose one of {', '.join(COMPILE_MODES)}"
    if mode == "cudagraphs" and (torch.device(device).type != "cuda" or not torch.cuda.is_available()):
        return "--compile cudagraphs records CUDA graphs: it needs --device cuda (on CPU use --compile)"
    return None


def compile_blocks(
    model: nn.Module,
    *,
    backend: str = "inductor",
    dynamic: bool | None = True,
    cudagraphs: bool = False,
    **options: Any,
):
    """Compile the forward of every block of `model.blocks` in place (the module tree, keys and weights are
    unchanged); returns `model`. The streams are handed over contiguous: a single-stream block returns views of
    its joint sequence, whose strides would otherwise be guarded on and recompile. `cudagraphs`: inductor's
    "reduce-overhead" mode (CUDA graphs; see the module docstring). `options` go to `torch.compile` (e.g.
    `mode="max-autotune-no-cudagraphs"`)."""
    if cudagraphs:
        if backend != "inductor":
            raise ValueError(f"CUDA graphs come from inductor: backend must be 'inductor', got {backend!r}")
        options = {**options, "mode": "reduce-overhead"}
    for block in model.blocks:
        if getattr(block, "_eager_forward", None) is not None:
            continue
        compiled = torch.compile(block.forward, backend=backend, dynamic=dynamic, **options)

        def forward(x: torch.Tensor, ctx: torch.Tensor, *rest: Any, _compiled: Any = compiled) -> Any:
            if cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()  # a new generation: earlier outputs are copies
            with shape_config.patch(use_duck_shape=False):  # T2V's text length == context length is no rule
                out = _compiled(x.contiguous(), ctx.contiguous(), *rest)
            return tuple(t.clone() for t in out) if cudagraphs else out  # out of the graph's memory pool

        block._eager_forward, block.forward = block.forward, forward
    return model


def uncompile_blocks(model: nn.Module) -> nn.Module:
    """Back to the eager forwards."""
    for block in model.blocks:
        if getattr(block, "_eager_forward", None) is not None:
            block.forward = block._eager_forward
            del block._eager_forward
    return model


def compiled_blocks(model: nn.Module) -> int:
    """How many blocks of `model.blocks` are compiled."""
    return sum(getattr(block, "_eager_forward", None) is not None for block in model.blocks)


__all__ = ["COMPILE_MODES", "compile_blocks", "compile_problem", "compiled_blocks", "uncompile_blocks"]
