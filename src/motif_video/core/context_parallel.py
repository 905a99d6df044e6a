"""Ulysses context parallelism for the transformer forward, wrapped around the model from outside.

`enable_context_parallel(model, group)` shards the N video tokens of every forward over the P ranks of a
torch.distributed process group; every rank holds the full weights and the same inputs.

- embed: runs in full on every rank, then keeps its own contiguous N/P slice of the patch tokens and the same
  rows of the RoPE tables, so each rank rotates exactly its own tokens. Context (image, text) tokens stay
  replicated. When N does not divide by P the sequence is padded to the next multiple; padding tokens are
  masked out as keys in every joint attention and dropped before the head. Fewer tokens than ranks is refused.
- joint attention of the blocks (dual, single, DDT decoder): the blocks call `blocks.attention`, which this
  module swaps once for a dispatcher; while a parallel forward runs it does the Ulysses exchange:
  one all-to-all turns the sharded q, k, v (B, H, N/P, Dh) into (B, H/P, N, Dh), each rank takes its head slice
  of the replicated context, attention runs over the full sequence, one all-to-all turns the video output back,
  and an all-gather over heads rebuilds the (small) replicated context output. In the decoder both halves of
  [video; video context] are sharded alike, so the whole local sequence goes through the all-to-all: each
  rank then sees a permutation of the 2N tokens, which attention does not notice (a padding mask is laid out
  in the same order).
- cross-attention (video queries on text keys) is local to each query and needs no exchange.
- head: the decoder's tokens are all-gathered before the final projection and unpatchify.

Outside a parallel forward the dispatcher calls the plain `attention`, so other models in the process and the
default path compute exactly what they did. Inference only (the collectives carry no gradient); a TREAD route
is refused.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from motif_video.models import blocks as blocks_module
from motif_video.models.attention import attention as plain_attention
from motif_video.models.phases import Embedded, PhaseOutput


@dataclass(frozen=True)
class _Shard:
    """The state of one parallel phase: the group, this rank, and how the local sequence is laid out."""

    group: Any
    rank: int
    size: int
    video_len: int  # local video tokens at the start of each joint sequence
    tail_sharded: bool  # True in the decoder (its video context is sharded too), False for replicated context
    tokens: int  # the real video tokens N; positions from N up to P * video_len are padding

    def valid(self, device: torch.device) -> torch.Tensor | None:
        """(P * n,) bool over the padded token order, or None when nothing is padded."""
        if self.tokens == self.size * self.video_len:
            return None
        return torch.arange(self.size * self.video_len, device=device) < self.tokens


_active: contextvars.ContextVar[_Shard | None] = contextvars.ContextVar("motif_video_ulysses", default=None)


def _all_to_all(x: torch.Tensor, group: Any) -> torch.Tensor:
    """x: (P, ...) -> (P, ...): chunk j goes to rank j; chunk i of the result came from rank i."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=group)
    return out


def _scatter_heads(x: torch.Tensor, p: int) -> torch.Tensor:
    """(S, B, H, n, Dh) sharded over tokens -> (S, B, H/P, P*n, Dh) sharded over heads (token order kept)."""
    s, b, h, n, d = x.shape
    chunks = x.reshape(s, b, p, h // p, n, d).permute(2, 0, 1, 3, 4, 5)  # (P, S, B, H/P, n, Dh)
    got = _all_to_all(chunks, _active.get().group)  # chunk i: my heads of rank i's tokens
    return got.permute(1, 2, 3, 0, 4, 5).reshape(s, b, h // p, p * n, d)


def _gather_heads(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, H/P, P*n, Dh) sharded over heads -> (B, H, n, Dh) sharded over tokens: the inverse of `_scatter_heads`."""
    b, hp, pn, d = x.shape
    chunks = x.reshape(b, hp, p, pn // p, d).permute(2, 0, 1, 3, 4)  # (P, B, H/P, n, Dh)
    got = _all_to_all(chunks, _active.get().group)  # chunk i: heads of rank i, my tokens
    return got.permute(1, 0, 2, 3, 4).reshape(b, p * hp, pn // p, d)


def _all_gather(x: torch.Tensor, dim: int, group: Any, size: int) -> torch.Tensor:
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x, group=group)
    return torch.cat(parts, dim=dim)


def ulysses_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Joint attention with the video tokens sharded over ranks; same signature and result as `attention`.

    q, k, v: (B, H, L, Dh) with L = n + M local tokens (n video; M context, replicated in the encoder, sharded
    in the decoder); key_mask: (B, L) over the local keys, its video part all valid. Returns (B, H, L, Dh).
    """
    shard = _active.get()
    if shard is None:
        return plain_attention(q, k, v, key_mask)
    p, heads, n = shard.size, q.shape[1], shard.video_len
    valid = shard.valid(q.device)  # (P * n,) or None
    if shard.tail_sharded:
        if key_mask is not None:
            raise ValueError("context parallelism: a sharded context cannot carry a key mask")
        fq, fk, fv = _scatter_heads(torch.stack((q, k, v)), p).unbind(0)  # each (B, H/P, P*L, Dh)
        if valid is not None:  # gathered order: per rank [its video shard; its video-context shard]
            valid = valid.view(p, n).repeat(1, 2).flatten().expand(q.shape[0], -1)  # (B, 2 * P * n)
        return _gather_heads(plain_attention(fq, fk, fv, valid), p)  # (B, H, L, Dh)
    mine = slice(shard.rank * heads // p, (shard.rank + 1) * heads // p)
    vq, vk, vv = _scatter_heads(torch.stack((q[:, :, :n], k[:, :, :n], v[:, :, :n])), p).unbind(0)
    fq = torch.cat((vq, q[:, mine, n:]), dim=2)  # (B, H/P, N + M, Dh)
    fk = torch.cat((vk, k[:, mine, n:]), dim=2)
    fv = torch.cat((vv, v[:, mine, n:]), dim=2)
    mask = None
    if key_mask is not None or valid is not None:
        b, m = q.shape[0], q.shape[2] - n
        video = q.new_ones(b, p * n, dtype=torch.bool) if valid is None else valid.expand(b, -1)
        context = q.new_ones(b, m, dtype=torch.bool) if key_mask is None else key_mask[:, n:].bool()
        mask = torch.cat((video, context), dim=1)  # (B, P*n + M)
    out = plain_attention(fq, fk, fv, mask)  # (B, H/P, N + M, Dh)
    video_out = _gather_heads(out[:, :, : p * n], p)  # (B, H, n, Dh)
    context_out = _all_gather(out[:, :, p * n :], 1, shard.group, p)  # (B, H, M, Dh)
    return torch.cat((video_out, context_out), dim=2)


@contextmanager
def _phase(shard: _Shard):
    token = _active.set(shard)
    try:
        yield
    finally:
        _active.reset(token)


def check_degree(heads: int, degree: int) -> None:
    """Refuse a Ulysses degree that does not divide the head count."""
    if degree < 1 or heads % degree:
        divisors = [d for d in range(1, heads + 1) if heads % d == 0]
        raise ValueError(
            f"context-parallel degree {degree} must divide the {heads} attention heads (Ulysses splits heads); "
            f"use one of {divisors}"
        )


def enable_context_parallel(model: nn.Module, group: Any = None) -> nn.Module:
    """Make `model` (a MotifVideoTransformer) run each forward Ulysses-parallel over `group` (default: world).

    Every rank must call the model with the same inputs; every rank gets the full output. Returns the model.
    """
    if not dist.is_initialized():
        raise RuntimeError("enable_context_parallel needs an initialised torch.distributed process group")
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    check_degree(model.config.num_attention_heads, size)
    if getattr(model, "_context_parallel", None) is not None:
        raise ValueError("context parallelism is already enabled on this model")
    blocks_module.attention = ulysses_attention  # a no-op outside a parallel forward
    embed, encode, decode, head = model.embed, model.encode, model.decode, model.head

    def shard(emb: Embedded, *, decoder: bool) -> _Shard:
        f, h, w = emb.grid
        return _Shard(group, rank, size, emb.patches.shape[1], decoder, f * h * w)

    def sharded_embed(*args: Any, **kwargs: Any) -> Embedded:
        emb = embed(*args, **kwargs)
        tokens = emb.patches.shape[1]
        if tokens < size:
            raise ValueError(
                f"context parallelism over {size} ranks needs at least {size} video tokens; the latent grid "
                f"{emb.grid} has {tokens}"
            )
        n = -(-tokens // size)  # tokens per rank; the last ranks carry up to size - 1 masked padding tokens
        pad = n * size - tokens
        cos, sin = emb.rope
        patches = nn.functional.pad(emb.patches, (0, 0, 0, pad))  # (B, P * n, D)
        cos = nn.functional.pad(cos, (0, 0, 0, pad), value=1.0)  # padding rows rotate by zero
        sin = nn.functional.pad(sin, (0, 0, 0, pad))
        mine = slice(rank * n, (rank + 1) * n)
        return replace(emb, patches=patches[:, mine], rope=(cos[mine], sin[mine]))

    def sharded_encode(emb: Embedded, *, route: Any = None, repa_block: int | None = None) -> PhaseOutput:
        if route is not None:
            raise ValueError("context parallelism does not support a TREAD route")
        with _phase(shard(emb, decoder=False)):
            return encode(emb, route=None, repa_block=repa_block)

    def sharded_decode(
        emb: Embedded, encoded: torch.Tensor, *, route: Any = None, repa_block: int | None = None
    ) -> PhaseOutput:
        if route is not None:
            raise ValueError("context parallelism does not support a TREAD route")
        with _phase(shard(emb, decoder=True)):
            return decode(emb, encoded, route=None, repa_block=repa_block)

    def gathered_head(x: torch.Tensor, emb: Embedded) -> torch.Tensor:
        f, h, w = emb.grid
        x = _all_gather(x, 1, group, size)[:, : f * h * w]  # (B, N, D), padding dropped
        return head(x, emb)  # (B, C_out, F, H, W)

    model.embed, model.encode, model.decode, model.head = sharded_embed, sharded_encode, sharded_decode, gathered_head
    model._context_parallel = (group, size)
    return model


def disable_context_parallel(model: nn.Module) -> nn.Module:
    """Undo `enable_context_parallel` on this model (the attention dispatcher stays: it is inert)."""
    for name in ("embed", "encode", "decode", "head"):
        model.__dict__.pop(name, None)
    model._context_parallel = None
    return model
