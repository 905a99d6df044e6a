"""Regional `torch.compile` for inference: each repeated transformer block is compiled on its own, from outside the
model, and the embedders, the head and the sampler stay eager.

Why regional: the 36 blocks are three structures (dual-stream, encoder single-stream with cross-attention, DDT
decoder), so a few small graphs cover the whole forward; they compile in seconds rather than the minutes a whole
model graph takes, and a change outside the blocks (the sampler, guidance, step reuse) never invalidates them.
Shapes are dynamic from the first call (`dynamic=True`): the batch (guided [cond; uncond] or conditional only),
the text length and the image tokens of I2V change between calls and steps, and should not recompile
(`tests/test_compile.py` counts compiles across steps, guidance on/off and T2V/I2V). Whether it pays is measured
on the GPU (`benchmarks/gpu_suite.py`, mode "compile"); on CPU it only has to stay correct.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.fx.experimental import _config as shape_config


def compile_blocks(model: nn.Module, *, backend: str = "inductor", dynamic: bool | None = True, **options: Any):
    """Compile the forward of every block of `model.blocks` in place (the module tree, keys and weights are
    unchanged); returns `model`. The streams are handed over contiguous: a single-stream block returns views of
    its joint sequence, whose strides would otherwise be guarded on and recompile. `options` go to
    `torch.compile` (e.g. `mode="max-autotune-no-cudagraphs"`)."""
    for block in model.blocks:
        if getattr(block, "_eager_forward", None) is not None:
            continue
        compiled = torch.compile(block.forward, backend=backend, dynamic=dynamic, **options)

        def forward(x: torch.Tensor, ctx: torch.Tensor, *rest: Any, _compiled: Any = compiled) -> Any:
            with shape_config.patch(use_duck_shape=False):  # T2V's text length == context length is no rule
                return _compiled(x.contiguous(), ctx.contiguous(), *rest)

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


__all__ = ["compile_blocks", "compiled_blocks", "uncompile_blocks"]
