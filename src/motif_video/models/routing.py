"""TREAD token routing: a random subset of video tokens takes a span of blocks, the rest skip it unchanged.

A route names a span of GLOBAL block indices, `start` inclusive to `end` exclusive (dual blocks first, then
encoder single blocks, then DDT decoder blocks), and per sample the sorted indices of the video tokens that
are kept. At `start` the kept tokens are gathered (RoPE tables and masks alike); after block `end - 1` they
are scattered back over the untouched full stream. Text and image tokens always stay. A span that reaches
into the DDT decoder is scattered at the encoder's end and gathered again at the decoder's start, with the
decoder's video context (`phases.run_routed`); gather after scatter is the identity, so the numbers are
those of one span. Training only: the caller draws the indices (`random_route`), so no random choice happens
inside the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenRoute:
    """start, end: global block span [start, end); keep: (B, K) int64 sorted video-token indices."""

    start: int
    end: int
    keep: torch.Tensor

    def validate(self, batch: int, num_tokens: int, num_blocks: int) -> None:
        if not 0 <= self.start < self.end <= num_blocks:
            raise ValueError(
                f"TokenRoute span [{self.start}, {self.end}) must satisfy 0 <= start < end <= {num_blocks} "
                f"(global block indices, end exclusive)"
            )
        if self.keep.dim() != 2 or self.keep.shape[0] != batch:
            raise ValueError(f"TokenRoute.keep must be (batch={batch}, K), got {tuple(self.keep.shape)}")
        if self.keep.shape[1] == 0 or self.keep.shape[1] > num_tokens:
            raise ValueError(f"TokenRoute keeps {self.keep.shape[1]} tokens; it must keep 1..{num_tokens}")


def random_route(
    batch: int,
    num_tokens: int,
    ratio: float,
    start: int,
    end: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> TokenRoute:
    """Drop a uniformly random `ratio` of each sample's video tokens over blocks [start, end)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"TREAD ratio is the fraction of tokens dropped and must be in [0, 1), got {ratio}")
    keep_count = max(1, round(num_tokens * (1.0 - ratio)))
    scores = torch.rand(batch, num_tokens, generator=generator, device=generator.device if generator else "cpu")
    keep = scores.argsort(dim=1)[:, :keep_count].sort(dim=1).values
    return TokenRoute(start, end, keep.to(device) if device is not None else keep)


def gather_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """x: (B, N, D) or shared (N, D); keep: (B, K) -> (B, K, D)."""
    if x.dim() == 2:
        return x[keep]
    return x.gather(1, keep[..., None].expand(-1, -1, x.shape[-1]))


def scatter_tokens(full: torch.Tensor, keep: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
    """Put routed: (B, K, D) back into a copy of full: (B, N, D) at keep: (B, K)."""
    return full.scatter(1, keep[..., None].expand(-1, -1, full.shape[-1]), routed.to(full.dtype))
