"""Context parallelism for the transformer forward (Ulysses, ring, or both), wrapped around the model from outside.

`enable_context_parallel(model, group, ulysses=None, ring=None)` shards the N video tokens of every forward over
the P ranks of a torch.distributed process group; every rank holds the full weights and the same inputs. The
degree splits as P = U x R (`cp_mesh.split_degree`: U = gcd(heads, P) unless chosen): Ulysses all-to-alls over
sub-groups of U ranks, ring attention (`ring_attention.py`) over R. Any degree >= 1 works.

- embed: runs in full on every rank, then keeps its own contiguous N/P slice of the patch tokens and the same
  rows of the RoPE tables, so each rank rotates exactly its own tokens. Context (image, text) tokens stay
  replicated. When N does not divide by P the sequence is padded to the next multiple; padding tokens are
  masked out as keys in every joint attention and dropped before the head. Fewer tokens than ranks is refused.
- joint attention of the blocks (dual, single, DDT decoder): the blocks call `blocks.attention`, which this
  module swaps once for a dispatcher; while a parallel forward runs it
  1. (U > 1) turns the sharded video q, k, v (B, H, N/P, Dh) into (B, H/U, N/R, Dh) with one all-to-all in
     the Ulysses sub-group: a contiguous block of the sequence, 1/U of the heads;
  2. (R = 1) runs attention over [all video; context] and sends the video output back with one all-to-all;
     the context output is all-gathered over heads;
  2'. (R > 1) runs ring attention: the video queries meet every rank's video K/V block and, once, in the local
     step, the replicated context K/V with its text mask. The replicated context queries are not sent round:
     each ring rank attends them to its own video block (ring index 0 adds the context keys), and one
     all-gather of the partial (out, LSE) pairs, merged in ring order, gives every rank the same context output.
  In the decoder both halves of [video; video context] are sharded alike and no context is replicated, so the
  whole local sequence goes through steps 1 and 2/2': each rank sees a permutation of the 2N tokens, which
  attention does not notice (padding masks are laid out in the same order).
- cross-attention (video queries on text keys) is local to each query and needs no exchange.
- head: the decoder's tokens are all-gathered before the final projection and unpatchify.

Outside a parallel forward the dispatcher calls the plain `attention`, so other models in the process and the
default path compute exactly what they did. Inference only (the collectives carry no gradient); a TREAD route
is refused.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from motif_video.core.cp_mesh import Mesh, split_degree
from motif_video.core.ring_attention import LseMerge, append_keys, attention_with_lse, ring_attention
from motif_video.models import blocks as blocks_module
from motif_video.models.attention import attention as plain_attention
from motif_video.models.phases import Embedded, PhaseOutput


@dataclass(frozen=True)
class _Shard:
    """The state of one parallel phase: the mesh, and how the local sequence is laid out."""

    mesh: Mesh
    video_len: int  # local video tokens n at the start of each joint sequence
    tail_sharded: bool  # True in the decoder (its video context is sharded too), False for replicated context
    tokens: int  # the real video tokens N; positions from N up to P * n are padding
    masks: dict = field(default_factory=dict, init=False, compare=False, repr=False)  # (src, device) -> `block_valid`

    def block_valid(self, src: int, device: torch.device) -> torch.Tensor | None:
        """(1, U * n) or, in the decoder, (1, 2 * U * n) bool over the keys of ring block src as laid out after
        the Ulysses exchange (per sub-group member: its video shard, then its video-context shard); None when
        nothing is padded. Built once per phase and block, then shared by every attention call of the phase."""
        u, n = self.mesh.ulysses, self.video_len
        if self.tokens == self.mesh.size * n:
            return None
        key = (src, torch.device(device))
        if key not in self.masks:
            positions = torch.arange(src * u * n, (src + 1) * u * n, device=device)
            valid = (positions < self.tokens).view(u, n)
            self.masks[key] = (valid.repeat(1, 2) if self.tail_sharded else valid).reshape(1, -1)
        return self.masks[key]


_active: contextvars.ContextVar[_Shard | None] = contextvars.ContextVar("motif_video_context_parallel", default=None)


def _scatter_heads(x: torch.Tensor, mesh: Mesh) -> torch.Tensor:
    """(S, B, H, n, Dh) sharded over tokens -> (S, B, H/U, U*n, Dh) sharded over heads within the Ulysses
    sub-group (token order kept)."""
    u = mesh.ulysses
    if u == 1:
        return x
    s, b, h, n, d = x.shape
    chunks = x.reshape(s, b, u, h // u, n, d).permute(2, 0, 1, 3, 4, 5)  # (U, S, B, H/U, n, Dh)
    got = mesh.all_to_all(chunks)  # chunk i: my heads of member i's tokens
    return got.permute(1, 2, 3, 0, 4, 5).reshape(s, b, h // u, u * n, d)


def _gather_heads(x: torch.Tensor, mesh: Mesh) -> torch.Tensor:
    """(B, H/U, U*n, Dh) sharded over heads -> (B, H, n, Dh) sharded over tokens: the inverse of `_scatter_heads`."""
    u = mesh.ulysses
    if u == 1:
        return x
    b, hu, un, d = x.shape
    chunks = x.reshape(b, hu, u, un // u, d).permute(2, 0, 1, 3, 4)  # (U, B, H/U, n, Dh)
    got = mesh.all_to_all(chunks)  # chunk i: heads of member i, my tokens
    return got.permute(1, 0, 2, 3, 4).reshape(b, u * hu, un // u, d)


def _ulysses_encoder(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, shard: _Shard
) -> torch.Tensor:
    """R = 1: attention over the whole gathered sequence, any backend of `models/attention.py`."""
    mesh, n = shard.mesh, shard.video_len
    p, heads = mesh.size, q.shape[1]
    mine = slice(mesh.u_index * heads // p, (mesh.u_index + 1) * heads // p)
    vq, vk, vv = _scatter_heads(torch.stack((q[:, :, :n], k[:, :, :n], v[:, :, :n])), mesh).unbind(0)
    fq = torch.cat((vq, q[:, mine, n:]), dim=2)  # (B, H/P, N + M, Dh)
    fk = torch.cat((vk, k[:, mine, n:]), dim=2)
    fv = torch.cat((vv, v[:, mine, n:]), dim=2)
    valid = shard.block_valid(0, q.device)  # (1, P*n) or None
    mask = None
    if key_mask is not None or valid is not None:
        b, m = q.shape[0], q.shape[2] - n
        video = q.new_ones(b, p * n, dtype=torch.bool) if valid is None else valid.expand(b, -1)
        context = q.new_ones(b, m, dtype=torch.bool) if key_mask is None else key_mask[:, n:].bool()
        mask = torch.cat((video, context), dim=1)  # (B, P*n + M)
    out = plain_attention(fq, fk, fv, mask)  # (B, H/P, N + M, Dh)
    video_out = _gather_heads(out[:, :, : p * n], mesh)  # (B, H, n, Dh)
    context = mesh.all_gather(out[:, :, p * n :])  # (P, B, H/P, M, Dh)
    context_out = context.permute(1, 0, 2, 3, 4).flatten(1, 2)  # (B, H, M, Dh)
    return torch.cat((video_out, context_out), dim=2)


def _ring_encoder(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None, shard: _Shard
) -> torch.Tensor:
    """R > 1: ring attention for the video queries; the replicated context queries from partials merged once."""
    mesh, n = shard.mesh, shard.video_len
    u, r, heads = mesh.ulysses, mesh.ring, q.shape[1]
    mine = slice(mesh.u_index * heads // u, (mesh.u_index + 1) * heads // u)
    vq, vk, vv = _scatter_heads(torch.stack((q[:, :, :n], k[:, :, :n], v[:, :, :n])), mesh).unbind(0)
    cq, ck, cv = q[:, mine, n:], k[:, mine, n:], v[:, mine, n:]  # (B, H/U, M, Dh)
    context = (ck, cv, None if key_mask is None else key_mask[:, n:].bool())

    def block_mask(src: int) -> torch.Tensor | None:
        return shard.block_valid(src, q.device)

    video_out = _gather_heads(ring_attention(vq, vk, vv, mesh.ring_of(), block_mask, context), mesh)  # (B, H, n, Dh)
    if cq.shape[2] == 0:
        return video_out
    # context queries: my video block, plus the context keys on ring index 0; then merge all partials in order
    bk, bv, mask = append_keys(vk, vv, block_mask(mesh.r_index), context if mesh.r_index == 0 else None)
    out, lse = attention_with_lse(cq, bk, bv, None if mask is None else mask.expand(q.shape[0], -1))
    parts = mesh.all_gather(torch.cat((out.float(), lse[..., None]), dim=-1))  # (P, B, H/U, M, Dh + 1)
    b, m, d = q.shape[0], cq.shape[2], q.shape[3]
    parts = parts.view(r, u, b, heads // u, m, d + 1).permute(0, 2, 1, 3, 4, 5).reshape(r, b, heads, m, d + 1)
    merge = LseMerge()
    for i in range(r):  # the same order on every rank: identical replicated context outputs
        merge.add(parts[i, ..., :d], parts[i, ..., d])
    return torch.cat((video_out, merge.result(q.dtype)), dim=2)


def _decoder(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shard: _Shard) -> torch.Tensor:
    """[video; video context], both sharded: all local tokens through the exchange; permuted order."""
    mesh = shard.mesh
    fq, fk, fv = _scatter_heads(torch.stack((q, k, v)), mesh).unbind(0)  # each (B, H/U, U * L, Dh)
    if mesh.ring == 1:
        valid = shard.block_valid(0, q.device)
        out = plain_attention(fq, fk, fv, None if valid is None else valid.expand(q.shape[0], -1))
    else:
        out = ring_attention(fq, fk, fv, mesh.ring_of(), lambda src: shard.block_valid(src, q.device))
    return _gather_heads(out, mesh)  # (B, H, L, Dh)


def ulysses_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Joint attention with the video tokens sharded over ranks; same signature and result as `attention`.

    q, k, v: (B, H, L, Dh) with L = n + M local tokens (n video; M context, replicated in the encoder, sharded
    in the decoder); key_mask: (B, L) over the local keys, its video part all valid. Returns (B, H, L, Dh).
    (The name predates ring attention: this dispatcher does Ulysses, ring or both, as the mesh says.)
    """
    shard = _active.get()
    if shard is None:
        return plain_attention(q, k, v, key_mask)
    if shard.tail_sharded:
        if key_mask is not None:
            raise ValueError("context parallelism: a sharded context cannot carry a key mask")
        return _decoder(q, k, v, shard)
    if shard.mesh.ring == 1:
        return _ulysses_encoder(q, k, v, key_mask, shard)
    return _ring_encoder(q, k, v, key_mask, shard)


@contextmanager
def _phase(shard: _Shard):
    token = _active.set(shard)
    try:
        yield
    finally:
        _active.reset(token)


def check_degree(heads: int, degree: int, *, ulysses: int | None = None, ring: int | None = None) -> tuple[int, int]:
    """The (ulysses, ring) split of a context-parallel degree; any degree >= 1 (see `cp_mesh.split_degree`)."""
    return split_degree(heads, degree, ulysses, ring)


def enable_context_parallel(
    model: nn.Module, group: Any = None, *, ulysses: int | None = None, ring: int | None = None
) -> nn.Module:
    """Make `model` (a MotifVideoTransformer) run each forward context-parallel over `group` (default: world).

    The degree (the group size) splits into `ulysses` x `ring` (default: as many Ulysses ranks as the heads
    allow). Every rank must call this, and then the model, with the same arguments and inputs; every rank gets
    the full output. Returns the model.
    """
    if not dist.is_initialized():
        raise RuntimeError("enable_context_parallel needs an initialised torch.distributed process group")
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    u, r = check_degree(model.config.num_attention_heads, size, ulysses=ulysses, ring=ring)
    if getattr(model, "_context_parallel", None) is not None:
        raise ValueError("context parallelism is already enabled on this model")
    # one collective on the whole group before any sub-group exchange: all ranks agree on the layout
    layouts: list[Any] = [None] * size
    dist.all_gather_object(layouts, (u, r), group=group)
    if any(layout != (u, r) for layout in layouts):
        raise ValueError(f"context parallelism: the ranks chose different (ulysses, ring) layouts {layouts}")
    mesh = Mesh(group, rank, u, r)
    blocks_module.attention = ulysses_attention  # a no-op outside a parallel forward
    embed, encode, decode, head = model.embed, model.encode, model.decode, model.head

    def shard(emb: Embedded, *, decoder: bool) -> _Shard:
        f, h, w = emb.grid
        return _Shard(mesh, emb.patches.shape[1], decoder, f * h * w)

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
        x = torch.cat(tuple(mesh.all_gather(x)), dim=1)[:, : f * h * w]  # (B, N, D), padding dropped
        return head(x, emb)  # (B, C_out, F, H, W)

    model.embed, model.encode, model.decode, model.head = sharded_embed, sharded_encode, sharded_decode, gathered_head
    model._context_parallel = (group, size)
    model._context_parallel_layout = (u, r)
    return model


def token_sums(model: nn.Module, emb: Embedded, xs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The sums of each x (b, n, ...) of `xs` over the real video tokens of the whole sequence: (len(xs),) fp32,
    the same on every rank. On a context-parallel model each x holds this rank's token shard: its padding rows
    are left out and the partial sums are all-reduced over the group (one all-reduce), so a decision taken from
    them (step reuse's adaptive rule) is the one a single process takes up to the order of summation, and no
    rank runs the encoder's collectives alone. Otherwise the plain sums."""
    parallel = getattr(model, "_context_parallel", None)
    if parallel is None:
        return torch.stack([x.float().sum() for x in xs])
    group, _ = parallel
    f, h, w = emb.grid
    n = xs[0].shape[1]
    real = max(0, min(n, f * h * w - dist.get_rank(group) * n))  # this rank's tokens that are not padding
    totals = torch.stack([x[:, :real].float().sum() for x in xs])
    dist.all_reduce(totals, group=group)
    return totals


def disable_context_parallel(model: nn.Module) -> nn.Module:
    """Undo `enable_context_parallel` on this model (the attention dispatcher stays: it is inert)."""
    for name in ("embed", "encode", "decode", "head"):
        model.__dict__.pop(name, None)
    model._context_parallel = None
    return model
