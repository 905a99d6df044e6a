"""Apply activation checkpointing, per-block `torch.compile` and FSDP2 to the transformer, from OUTSIDE the model.

One function, one fixed order (torchtitan's): activation checkpointing -> per-block compile -> `fully_shard`
each block -> `fully_shard` the root last. The model itself stays plain PyTorch: it has no checkpointing switch.

Activation checkpointing swaps each block's class for a `Recomputed` subclass (as `fully_shard` swaps in an
`FSDP` subclass) rather than nesting the block in a wrapper module, so module names, parameter names and
state-dict keys are unchanged (EMA, optimizer groups and checkpoints are keyed by them), and the block's whole
call, its hooks included (FSDP2's unshard, block offload), is what the backward recomputes.

Mixed precision (report: bf16 compute, fp32 optimizer state and reductions): parameters are kept in fp32 (the
master weights the optimizer updates); FSDP2 casts them to `param_dtype` for compute and reduces gradients in
`reduce_dtype`. Without a process group (one process, no torchrun) nothing is sharded and the model runs as is
(compute in its own dtype), so the same training code runs on a laptop and on 64 GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class ParallelConfig:
    param_dtype: str = "bfloat16"  # compute dtype under FSDP2
    reduce_dtype: str = "float32"  # gradient reduce-scatter dtype
    activation_checkpointing: bool = True
    compile_blocks: bool = False
    reshard_after_forward: bool = True


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) without a process group."""
    if not is_distributed():
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


class Recomputed:
    """Mixin of a checkpointed block: with grad on, its call runs under `torch.utils.checkpoint` (non-reentrant),
    so the backward recomputes its activations instead of keeping them."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():
            return super().__call__(*args, **kwargs)
        return checkpoint(super().__call__, *args, use_reentrant=False, **kwargs)


_RECOMPUTED: dict[type, type] = {}  # block class -> its Recomputed subclass


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Checkpoint each of `model.blocks` in place (names and keys unchanged; applying it twice is a no-op)."""
    for block in model.blocks:
        cls = type(block)
        if issubclass(cls, Recomputed):
            continue
        if cls not in _RECOMPUTED:
            _RECOMPUTED[cls] = type(f"Recomputed{cls.__name__}", (Recomputed, cls), {})
        block.__class__ = _RECOMPUTED[cls]
    return model


def parallelize(model: nn.Module, config: ParallelConfig, device_type: str = "cuda") -> nn.Module:
    """Checkpointing, compile and FSDP2 in the fixed order; returns the same (now sharded) model."""
    if config.activation_checkpointing:
        apply_activation_checkpointing(model)
    if config.compile_blocks:
        for block in model.blocks:
            block.compile()
    if not is_distributed():
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device_type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(param_dtype=DTYPES[config.param_dtype], reduce_dtype=DTYPES[config.reduce_dtype])
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=config.reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model
