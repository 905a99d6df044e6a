"""Guidance parallelism: the conditional and unconditional halves of a guided step on different ranks.

`guidance_parallel(model, group)` wraps a sampler model function (`sampler.ModelFn`). On a step where `denoise`
batches guidance it calls the model on [cond; uncond] (condition branch "joint", 2B rows); over a 2-rank group,
rank 0 runs the conditional half and rank 1 the unconditional one, and the velocities are all-gathered, so every
rank returns the full (2B, ...) prediction and takes the same scheduler step. Steps without guidance (one
branch) run on guidance rank 0 alone and its velocity is broadcast, so step reuse on the other rank keeps the
state one process keeps, and every rank takes the same step.

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


def condition_rows(cond: Condition, rows: slice, branch: str, peers: Any = None) -> Condition:
    """The condition of a row block of the batch (text, mask, I2V channels and image tokens alike), named as
    the branch it is, so that step reuse keeps one state per branch on each rank; `peers`: the group holding the
    other branch, with which step reuse decides a whole-step skip (one process skips a joint call only when
    both branches may)."""
    image = None if cond.image is None else cond.image[rows]
    text, mask, channels = cond.text[rows], cond.mask[rows], cond.channels[rows]
    return replace(cond, text=text, mask=mask, channels=channels, image=image, branch=branch, peers=peers)


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _from_first(model: ModelFn, latents: torch.Tensor, t: torch.Tensor, cond: Condition, rank: int, group: Any):
    """A step with one branch under guidance parallelism: rank 0 of `group` runs it and broadcasts the velocity,
    so the other rank's step reuse never sees that branch's calls (its state stays what one process keeps for
    the unconditional branch, which such a step does not run) and its latents stay identical."""
    if rank == 0:
        out = model(latents, t, cond).contiguous()
        head = torch.tensor([_DTYPES.index(out.dtype)], device=latents.device)
    else:
        head = torch.zeros(1, dtype=torch.long, device=latents.device)
    dist.broadcast(head, group=group, group_src=0)
    if rank != 0:
        out = torch.empty(latents.shape, dtype=_DTYPES[int(head.item())], device=latents.device)
    dist.broadcast(out, group=group, group_src=0)
    return out


def guidance_parallel(model: ModelFn, group: Any = None) -> ModelFn:
    """Wrap `model` so the joint [cond; uncond] forward is split over the ranks of `group` (default: world)."""
    if not dist.is_initialized():
        raise RuntimeError("guidance_parallel needs an initialised torch.distributed process group")
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    if size != 2:
        raise ValueError(f"guidance parallelism splits [cond; uncond] over exactly 2 ranks, got a group of {size}")

    last: list[Condition | None] = [None, None]  # (joint condition, my half of it)

    def split(latents: torch.Tensor, t: torch.Tensor, cond: Condition) -> torch.Tensor:
        if cond.branch != "joint":  # one branch: guidance rank 0 runs it (as one process would), then broadcasts
            return _from_first(model, latents, t, cond, rank, group)
        rows = latents.shape[0] // size
        mine = slice(rank * rows, (rank + 1) * rows)
        if last[0] is not cond:  # the same half object while the condition stands: step reuse keys on identity
            last[:] = [cond, condition_rows(cond, mine, BRANCHES[rank], group)]
        out = model(latents[mine], t[mine], last[1]).contiguous()  # (B, ...): my branch
        parts = [torch.empty_like(out) for _ in range(size)]
        dist.all_gather(parts, out, group=group)
        return torch.cat(parts)  # (2B, ...)

    return split
