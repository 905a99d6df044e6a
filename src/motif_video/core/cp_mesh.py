"""The context-parallel mesh: P = U x R ranks, Ulysses over sub-groups of U, ring attention over R.

- `split_degree(heads, degree, ulysses=None, ring=None)` -> (U, R): by default U = gcd(heads, degree), the
  largest divisor of the degree that divides the heads, and R = degree / U; an explicit `ulysses=` or `ring=`
  overrides (U must divide both the heads and the degree). Any degree >= 1 is accepted.
- `Mesh`: group rank g = ring index i x U + Ulysses index u. Group rank g holds the g-th contiguous slice of
  the video tokens, so Ulysses sub-group i (ranks iU .. iU + U - 1) gathers a contiguous block i of the
  sequence, and ring u (ranks u, U + u, 2U + u, ...) connects the ranks that hold the same head slice.
- `all_to_all(x)` over the Ulysses sub-group: chunk j of x (U, ...) goes to sub-group member j. The whole group
  uses one `all_to_all_single`; a proper sub-group uses `dist.batch_isend_irecv` inside the caller's group, so
  no extra process group is created (`new_group` would need every rank of the world to take part, which a
  context group nested in a guidance layout cannot arrange).
- `all_gather(x)`: (P, ...) stacked by group rank, over the whole group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from motif_video.core.ring_attention import Ring


def split_degree(heads: int, degree: int, ulysses: int | None = None, ring: int | None = None) -> tuple[int, int]:
    """(U, R) with U x R = degree, U dividing the heads; refuse only what cannot be laid out."""
    if degree < 1:
        raise ValueError(f"context-parallel degree must be at least 1 (got {degree})")
    if ulysses is not None and ring is not None and ulysses * ring != degree:
        raise ValueError(f"ulysses={ulysses} x ring={ring} must equal the context-parallel degree {degree}")
    if ring is not None:
        if ring < 1 or degree % ring:
            raise ValueError(f"ring={ring} must be a divisor of the context-parallel degree {degree}")
        ulysses = degree // ring
    if ulysses is None:
        ulysses = math.gcd(heads, degree)
    if ulysses < 1 or degree % ulysses or heads % ulysses:
        raise ValueError(
            f"ulysses={ulysses} must divide both the context-parallel degree {degree} and the {heads} attention "
            f"heads (Ulysses splits heads); use ulysses={math.gcd(heads, degree)} or leave it unset"
        )
    return ulysses, degree // ulysses


@dataclass(frozen=True)
class Mesh:
    group: Any
    rank: int  # in the group
    ulysses: int
    ring: int

    @property
    def size(self) -> int:
        return self.ulysses * self.ring

    @property
    def u_index(self) -> int:
        return self.rank % self.ulysses

    @property
    def r_index(self) -> int:
        return self.rank // self.ulysses

    def ring_of(self) -> Ring:
        members = tuple(i * self.ulysses + self.u_index for i in range(self.ring))
        return Ring(self.group, members, self.r_index)

    def all_to_all(self, x: torch.Tensor) -> torch.Tensor:
        """x: (U, ...) -> (U, ...): chunk j goes to sub-group member j; chunk i of the result came from member i."""
        x = x.contiguous()
        out = torch.empty_like(x)
        if self.ulysses == self.size:
            dist.all_to_all_single(out, x, group=self.group)
            return out
        base = self.r_index * self.ulysses
        out[self.u_index] = x[self.u_index]
        ops = []
        for j in range(self.ulysses):
            if j != self.u_index:
                ops.append(dist.P2POp(dist.isend, x[j], group=self.group, group_peer=base + j))
                ops.append(dist.P2POp(dist.irecv, out[j], group=self.group, group_peer=base + j))
        for work in dist.batch_isend_irecv(ops):
            work.wait()
        return out

    def all_gather(self, x: torch.Tensor) -> torch.Tensor:
        """x: (...) on every rank -> (P, ...) stacked by group rank."""
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x, group=self.group)
        return torch.stack(parts)
