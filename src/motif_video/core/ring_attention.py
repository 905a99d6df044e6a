"""Ring attention: exact attention when the keys and values are spread over the ranks of a ring.

- `attention_with_lse(q, k, v, key_mask)` -> (out, lse): attention of q over one block of keys, with the
  log-sum-exp of each query's scaled scores. q: (B, H, Lq, Dh); k, v: (B, H, Lk, Dh); key_mask: (B, Lk) bool,
  True = attend, or None. out: (B, H, Lq, Dh) in q's dtype, lse: (B, H, Lq) fp32. A row with no valid key gets
  out = 0 and lse = -inf, never NaN. On CUDA a fused kernel that returns the LSE runs (flash attention for
  fp16/bf16 without a mask, memory-efficient attention with the mask as an additive bias otherwise); on CPU,
  or when the kernel refuses the inputs, an explicit fp32 computation runs in query chunks.
- `LseMerge`: merges partial results exactly with the online-softmax rule, in fp32:
  lse = log(exp(lse_a) + exp(lse_b)), out = out_a exp(lse_a - lse) + out_b exp(lse_b - lse).
- `Ring` and `ring_attention(q, k, v, ring, block_mask, local)`: each rank keeps its queries; the stacked
  (k, v) block travels to the next rank of the ring, R - 1 exchanges (`dist.batch_isend_irecv`), each started
  before the current block is computed so transfer and compute overlap. `block_mask(src)` gives the key mask
  of the block that started on ring index src (padding tokens), so masks never travel. `local` (k, v, mask)
  is attended once, with the rank's own block: the replicated context keys, not R times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

_QUERY_CHUNK = 1024  # queries per explicit-path chunk: bounds the fp32 score matrix


def _explicit(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 reference path: scores, LSE, probabilities, in chunks of queries."""
    scale = q.shape[-1] ** -0.5
    kf, vf = k.float(), v.float()
    bias = None
    if key_mask is not None:  # (B, 1, 1, Lk): 0 where valid, -inf where masked
        bias = torch.zeros(key_mask.shape, device=q.device).masked_fill(~key_mask.bool(), float("-inf"))
        bias = bias[:, None, None, :]
    outs, lses = [], []
    for qc in q.float().split(_QUERY_CHUNK, dim=2):
        scores = qc @ kf.transpose(-1, -2) * scale  # (B, H, c, Lk)
        if bias is not None:
            scores = scores + bias
        lse = torch.logsumexp(scores, dim=-1)  # (B, H, c); -inf where every key is masked
        probs = torch.exp(scores - torch.where(torch.isinf(lse), 0.0, lse)[..., None])  # masked rows: all 0
        outs.append(probs @ vf)
        lses.append(lse)
    return torch.cat(outs, dim=2).to(q.dtype), torch.cat(lses, dim=2)


def _fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CUDA kernels that return the LSE (raise RuntimeError on inputs they do not take)."""
    if key_mask is None and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)[:2]
        return out, lse.float()
    b, h, lq, _ = q.shape
    bias = None
    if key_mask is not None:
        lk = k.shape[2]
        # the kernel wants 16-element aligned rows: allocate padded, view the first lk columns, broadcast
        bias = q.new_zeros(b, 1, 1, lk + (-lk % 16))[..., :lk]
        bias.masked_fill_(~key_mask.bool()[:, None, None, :], float("-inf"))
        bias = bias.expand(b, h, lq, lk)
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True)[:2]
    lse = lse[:, :, :lq].float()  # the kernel pads the LSE rows
    if key_mask is not None:  # a row with no valid key: whatever the kernel wrote, make it (0, -inf)
        empty = ~key_mask.bool().any(dim=1)[:, None, None]  # (B, 1, 1)
        out = torch.where(empty[..., None], torch.zeros((), dtype=out.dtype, device=out.device), out)
        lse = torch.where(empty, float("-inf"), lse)
    return out, lse


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Partial attention over one block of keys: (out (B, H, Lq, Dh), lse (B, H, Lq) fp32); see the module doc."""
    if q.is_cuda:
        try:
            return _fused(q, k, v, key_mask)
        except (RuntimeError, NotImplementedError):
            pass  # unsupported head dim, dtype or alignment: the explicit path computes the same thing
    return _explicit(q, k, v, key_mask)


class LseMerge:
    """Accumulates partial (out, lse) pairs over disjoint key blocks into the attention over their union."""

    def __init__(self) -> None:
        self.out: torch.Tensor | None = None  # (B, H, Lq, Dh) fp32
        self.lse: torch.Tensor | None = None  # (B, H, Lq) fp32

    def add(self, out: torch.Tensor, lse: torch.Tensor) -> None:
        out, lse = out.float(), lse.float()
        if self.out is None:
            self.out, self.lse = out, lse
            return
        total = torch.logaddexp(self.lse, lse)
        safe = torch.where(torch.isinf(total), 0.0, total)  # rows masked in every block so far stay (0, -inf)
        self.out = self.out * torch.exp(self.lse - safe)[..., None] + out * torch.exp(lse - safe)[..., None]
        self.lse = total

    def result(self, dtype: torch.dtype) -> torch.Tensor:
        if self.out is None:
            raise ValueError("LseMerge.result: no partial result was added")
        return self.out.to(dtype)


@dataclass(frozen=True)
class Ring:
    """Ring of `size` ranks of `group`: ring index i is group rank `members[i]`; this rank is ring index `index`."""

    group: Any
    members: tuple[int, ...]
    index: int

    @property
    def size(self) -> int:
        return len(self.members)

    def start_shift(self, x: torch.Tensor) -> tuple[list[Any], torch.Tensor]:
        """Send x to the next ring index and receive the previous one's into a new buffer (asynchronous)."""
        received = torch.empty_like(x)
        nxt, prev = self.members[(self.index + 1) % self.size], self.members[(self.index - 1) % self.size]
        ops = [
            dist.P2POp(dist.isend, x, group=self.group, group_peer=nxt),
            dist.P2POp(dist.irecv, received, group=self.group, group_peer=prev),
        ]
        return dist.batch_isend_irecv(ops), received


def append_keys(
    k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, local: tuple | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Append the once-attended local keys (k, v, mask) to a block: one kernel call instead of two."""
    if local is None or local[0].shape[2] == 0:
        return k, v, mask
    lk, lv, lmask = local
    if mask is not None or lmask is not None:
        b = k.shape[0]
        ones = torch.ones(b, k.shape[2], dtype=torch.bool, device=k.device)
        left = ones if mask is None else mask.expand(b, -1)
        right = torch.ones(b, lk.shape[2], dtype=torch.bool, device=k.device) if lmask is None else lmask.bool()
        mask = torch.cat((left, right), dim=1)
    return torch.cat((k, lk), dim=2), torch.cat((v, lv), dim=2), mask


def ring_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ring: Ring,
    block_mask: Callable[[int], torch.Tensor | None],
    local: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None,
) -> torch.Tensor:
    """Attention of the local queries over every rank's key block (and `local` once). Returns (B, H, Lq, Dh).

    q: (B, H, Lq, Dh); k, v: (B, H, Lk, Dh), this rank's block, the same shape on every rank of the ring;
    block_mask(src): (B, Lk) or (1, Lk) bool mask of ring index src's block, or None when all valid.
    """
    merge = LseMerge()
    kv = torch.stack((k, v)).contiguous()  # (2, B, H, Lk, Dh): one message per exchange
    for step in range(ring.size):
        pending = ring.start_shift(kv) if step < ring.size - 1 else None
        src = (ring.index - step) % ring.size
        bk, bv, mask = append_keys(kv[0], kv[1], block_mask(src), local if step == 0 else None)
        if mask is not None:
            mask = mask.expand(q.shape[0], -1)
        merge.add(*attention_with_lse(q, bk, bv, mask))
        if pending is not None:
            works, kv = pending
            for work in works:
                work.wait()
    return merge.result(q.dtype)
