"""Guidance parallelism: the conditional and unconditional halves of a guided step on different ranks.

`guidance_parallel(model, group)` wraps a sampler model function (`sampler.ModelFn`). On a step where `denoise`
batches guidance it calls the model on [cond; uncond] (condition branch "joint", 2B rows); over a 2-rank group,
rank 0 runs the conditional half and rank 1 the unconditional one, and the velocities are all-gathered, so every
rank returns the full (2B, ...) prediction and takes the same scheduler step. Steps without guidance (one
branch) run in full on every rank.

Each half is handed on as its own branch ("cond", "uncond"), the same half object for as long as the joint
condition stands, so a step-reuse model function (`step_cache.EncoderReuse` with a fixed "ddt" rule) keeps the
per-branch state it keeps on one process. It composes with context parallelism: each guidance rank may itself
be a context-parallel group whose transformer was wrapped by `core.context_parallel.enable_context_parallel`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from motif_video.pipeline.sampler import Condition, ModelFn

BRANCHES = ("cond", "uncond")  # the row halves of a "joint" condition, in order


def condition_rows(cond: Condition, rows: slice, branch: str) -> Condition:
    """The condition of a row block of the batch (text, mask, I2V channels and image tokens alike), named as
    the branch it is, so that step reuse keeps one state per branch on each rank."""
    image = None if cond.image is None else cond.image[rows]
    text, mask, channels = cond.text[rows], cond.mask[rows], cond.channels[rows]
    return replace(cond, text=text, mask=mask, channels=channels, image=image, branch=branch)


def guidance_parallel(model: ModelFn, group: Any = None) -> ModelFn:
    """Wrap `model` so the joint [cond; uncond] forward is split over the ranks of `group` (default: world)."""
    if not dist.is_initialized():
        raise RuntimeError("guidance_parallel needs an initialised torch.distributed process group")
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if size != 2:
        raise ValueError(f"guidance parallelism splits [cond; uncond] over exactly 2 ranks, got a group of {size}")

    last: list[Condition | None] = [None, None]  # (joint condition, my half of it)

    def split(latents: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        if cond.branch != "joint":
            return model(latents, t, cond)
        rows = latents.shape[0] // size
        mine = slice(rank * rows, (rank + 1) * rows)
        if last[0] is not cond:  # the same half object while the condition stands: step reuse keys on identity
            last[:] = [cond, condition_rows(cond, mine, BRANCHES[rank])]
        out = model(latents[mine], t[mine], last[1]).contiguous()  # (B, ...): my branch
        parts = [torch.empty_like(out) for _ in range(size)]
        dist.all_gather(parts, out, group=group)
        return torch.cat(parts)  # (2B, ...)

    return split
