"""The phases of a forward, as data and one block runner: embed -> encoder -> DDT decoder -> head.

- `Embedded` is what the embed phase hands on: patch tokens, context, time embedding, RoPE tables, masks. The
  decoder reads it again (its stream starts from the patch tokens), so a caller that keeps an encoder output
  can run the decoder alone on a new step's `Embedded`.
- `run_phase` runs one phase's blocks in a plain loop. The part of a TREAD route that falls in the phase is
  gathered at its start and scattered at its end by one helper (`run_routed`), which also returns the REPA tap.
- Block indices are global (dual, encoder single, decoder), as in `TokenRoute` and `repa_block`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from motif_video.models.joint_attention import AttentionContext
from motif_video.models.routing import TokenRoute, gather_tokens, scatter_tokens

IndexedBlocks = list[tuple[int, nn.Module]]  # (global block index, block), in execution order


@dataclass
class Embedded:
    """patches: (B, N, D) video tokens; context: (B, Lc, D) [image; text] tokens; temb: (B, D);
    rope: cos, sin (N, Dh); context_mask: (B, Lc) bool or None when every context token is valid;
    text_mask: (B, Lt) bool or None; image_len: image tokens at the start of the context; grid: (T, H, W)."""

    patches: torch.Tensor
    context: torch.Tensor
    temb: torch.Tensor
    rope: tuple[torch.Tensor, torch.Tensor]
    context_mask: torch.Tensor | None
    text_mask: torch.Tensor | None
    image_len: int
    grid: tuple[int, int, int]

    def rows(self, rows: slice | torch.Tensor) -> Embedded:
        """The same phase input for a sub-batch (e.g. the conditional half of a guidance batch), with the text
        padding no row of it attends to trimmed off and the key mask dropped when every kept key is valid."""
        context, mask = self.context[rows], None if self.context_mask is None else self.context_mask[rows]
        text_mask = None if self.text_mask is None else self.text_mask[rows]
        if mask is not None:
            positions = torch.arange(1, mask.shape[1] + 1, device=mask.device)
            keep = max(int((mask * positions).amax()), self.image_len + 1)  # mask: (b, Lc) -> last valid key
            context, mask = context[:, :keep], mask[:, :keep]
            text_mask = None if text_mask is None else text_mask[:, : keep - self.image_len]
            if bool(mask.all()):
                mask = text_mask = None
        return Embedded(
            self.patches[rows], context, self.temb[rows], self.rope, mask, text_mask, self.image_len, self.grid
        )

    def attention_context(self, keep: torch.Tensor | None = None, *, decoder: bool = False) -> AttentionContext:
        """For all N video tokens, or the K kept ones (keep: (B, K)). The decoder's context is video tokens of
        the encoder: no key mask, no text."""
        cos, sin = self.rope
        if keep is not None:
            cos, sin = gather_tokens(cos, keep), gather_tokens(sin, keep)  # (B, K, Dh)
        if decoder:
            return AttentionContext(cos, sin)
        if self.context_mask is None:
            return AttentionContext(cos, sin, None, self.text_mask, self.image_len)
        video = self.context_mask.new_ones(self.patches.shape[0], cos.shape[-2])  # (B, N or K)
        joint = torch.cat((video, self.context_mask), dim=1)  # (B, N + Lc)
        return AttentionContext(cos, sin, joint, self.text_mask, self.image_len)


@dataclass
class PhaseOutput:
    """video: (B, N, D) the phase's final video tokens; repa_features: (B, N or K, D) when the REPA block
    lies in the phase (K: gathered by a route that is still open after it), else None."""

    video: torch.Tensor
    repa_features: torch.Tensor | None = None


def run_blocks(
    blocks: IndexedBlocks,
    x: torch.Tensor,
    ctx: torch.Tensor,
    temb: torch.Tensor,
    actx: AttentionContext,
    tap: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """x: (B, N, D), ctx: (B, Lc, D) through the blocks -> (x, ctx, x after block `tap` or None)."""
    features = None
    for index, block in blocks:
        x, ctx = block(x, ctx, temb, actx)  # (B, N, D), (B, Lc, D)
        if index == tap:
            features = x
    return x, ctx, features


def run_routed(
    blocks: IndexedBlocks,
    x: torch.Tensor,
    ctx: torch.Tensor,
    emb: Embedded,
    route: TokenRoute | None,
    tap: int | None,
    *,
    decoder: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A TREAD span: gather the kept video tokens (in the decoder its video context too), run the blocks, scatter
    them back over the untouched full streams. The REPA tap inside the span is the gathered x, (B, K, D); at
    the route's last block it is the scattered x, (B, N, D)."""
    if not blocks:
        return x, ctx, None
    keep = route.keep  # (B, K)
    x_full, ctx_full = x, ctx
    x = gather_tokens(x, keep)  # (B, K, D)
    ctx = gather_tokens(ctx, keep) if decoder else ctx  # decoder (B, K, D); encoder (B, Lc, D)
    x, ctx, features = run_blocks(blocks, x, ctx, emb.temb, emb.attention_context(keep, decoder=decoder), tap)
    x = scatter_tokens(x_full, keep, x)  # (B, N, D)
    ctx = scatter_tokens(ctx_full, keep, ctx) if decoder else ctx  # (B, Lc, D)
    return x, ctx, (x if tap == blocks[-1][0] == route.end - 1 else features)


def run_phase(
    blocks: Sequence[nn.Module],
    first: int,
    x: torch.Tensor,
    ctx: torch.Tensor,
    emb: Embedded,
    route: TokenRoute | None,
    tap: int | None,
    *,
    decoder: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Blocks with global indices first, first + 1, ...: those before the route's span, inside it (on the kept
    tokens), after it. x: (B, N, D), ctx: (B, Lc, D) -> (x, ctx, REPA tap or None)."""
    start, end = (route.start, route.end) if route is not None else (first + len(blocks),) * 2
    indexed = list(enumerate(blocks, first))
    before = [(i, b) for i, b in indexed if i < start]
    inside = [(i, b) for i, b in indexed if start <= i < end]
    after = [(i, b) for i, b in indexed if i >= end]
    full = emb.attention_context(decoder=decoder)
    x, ctx, tap_before = run_blocks(before, x, ctx, emb.temb, full, tap)  # (B, N, D), (B, Lc, D)
    x, ctx, tap_inside = run_routed(inside, x, ctx, emb, route, tap, decoder=decoder)  # (B, N, D), (B, Lc, D)
    x, ctx, tap_after = run_blocks(after, x, ctx, emb.temb, full, tap)  # (B, N, D), (B, Lc, D)
    taps = [t for t in (tap_before, tap_inside, tap_after) if t is not None]
    return x, ctx, (taps[0] if taps else None)
