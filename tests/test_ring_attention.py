"""Ring attention's building blocks, single process: the partial attention with its LSE, the exact LSE merge of
key blocks (masks, fully masked blocks and rows, no NaN), and the Ulysses x ring split of a degree. The
multi-rank parity of ring and combined layouts is in test_context_parallel.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from motif_video.core.cp_mesh import split_degree
from motif_video.core.ring_attention import LseMerge, append_keys, attention_with_lse


def _qkv(b=2, h=3, lq=5, lk=12, d=8, seed=0, device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(device, dtype) * 2 for n in (lq, lk, lk)]


def _reference(q, k, v, mask):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask[:, None, None, :])


def test_partial_matches_attention_and_its_lse():
    q, k, v = _qkv()
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, 3:7] = False
    out, lse = attention_with_lse(q, k, v, mask)
    torch.testing.assert_close(out, _reference(q, k, v, mask), rtol=0, atol=1e-5)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5 + torch.where(mask, 0.0, float("-inf"))[:, None, None, :]
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1), rtol=0, atol=1e-5)
    assert lse.dtype == torch.float32


def test_fully_masked_rows_give_zero_and_minus_inf_not_nan():
    q, k, v = _qkv()
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1] = False  # batch element 1: no valid key
    out, lse = attention_with_lse(q, k, v, mask)
    assert not out.isnan().any() and not lse.isnan().any()
    assert (out[1] == 0).all() and torch.isneginf(lse[1]).all()
    torch.testing.assert_close(out[0], _reference(q, k, v, mask)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("cuts", [(4, 8), (1, 2, 9), (6,)])
def test_merging_key_blocks_equals_attention_over_all(cuts):
    q, k, v = _qkv(seed=len(cuts))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, :4] = False  # batch 0: the first block of cuts (4, 8) is fully masked
    mask[1, 9:] = False  # batch 1: the last block of cuts (1, 2, 9) is fully masked
    mask[1, 5] = False
    merge = LseMerge()
    edges = (0, *cuts, 12)
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        merge.add(*attention_with_lse(q, k[:, :, a:b], v[:, :, a:b], mask[:, a:b]))
    got = merge.result(q.dtype)
    assert not got.isnan().any()
    torch.testing.assert_close(got, _reference(q, k, v, mask), rtol=0, atol=1e-5)
    torch.testing.assert_close(merge.lse, attention_with_lse(q, k, v, mask)[1], rtol=0, atol=1e-5)


def test_merge_in_another_order_and_with_appended_local_keys():
    q, k, v = _qkv(lk=10)
    ck, cv = _qkv(lk=4, seed=5)[1:]
    cmask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    blocks = [(k[:, :, :5], v[:, :, :5], None), (k[:, :, 5:], v[:, :, 5:], torch.tensor([[True] * 3 + [False] * 2]))]
    merge = LseMerge()
    for i, (bk, bv, bmask) in enumerate(reversed(blocks)):
        bk, bv, bmask = append_keys(bk, bv, bmask, (ck, cv, cmask) if i == 0 else None)
        merge.add(*attention_with_lse(q, bk, bv, None if bmask is None else bmask.expand(2, -1)))
    full_mask = torch.cat((torch.ones(2, 5, dtype=torch.bool), blocks[1][2].expand(2, -1), cmask), dim=1)
    expected = _reference(q, torch.cat((k, ck), 2), torch.cat((v, cv), 2), full_mask)
    torch.testing.assert_close(merge.result(q.dtype), expected, rtol=0, atol=1e-5)


def test_a_merge_with_nothing_added_is_refused():
    with pytest.raises(ValueError, match="no partial"):
        LseMerge().result(torch.float32)


def test_any_degree_splits_into_ulysses_times_ring():
    assert split_degree(12, 4) == (4, 1)
    assert split_degree(12, 5) == (1, 5)
    assert split_degree(12, 8) == (4, 2)
    assert split_degree(2, 3) == (1, 3)
    assert split_degree(2, 4) == (2, 2)
    assert split_degree(2, 2, ring=2) == (1, 2)
    assert split_degree(12, 8, ulysses=2) == (2, 4)
    assert split_degree(12, 1) == (1, 1)
    with pytest.raises(ValueError, match="at least 1"):
        split_degree(12, 0)
    with pytest.raises(ValueError, match="must divide both"):
        split_degree(12, 8, ulysses=8)
    with pytest.raises(ValueError, match="divisor of the context-parallel degree"):
        split_degree(12, 8, ring=3)
    with pytest.raises(ValueError, match="must equal"):
        split_degree(12, 8, ulysses=2, ring=2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("masked", [False, True])
def test_fused_cuda_partial_matches_the_explicit_one(dtype, masked):
    from motif_video.core.ring_attention import _explicit, _fused

    q, k, v = _qkv(b=2, h=4, lq=300, lk=333, d=128, device="cuda", dtype=dtype)
    mask = None
    if masked:
        mask = torch.ones(2, 333, dtype=torch.bool, device="cuda")
        mask[0, 100:] = False
        mask[1] = False  # a fully masked row
    out, lse = _fused(q, k, v, mask)
    ref_out, ref_lse = _explicit(q, k, v, mask)
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    assert not out.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(out.float(), ref_out.float(), rtol=0, atol=tol)
    torch.testing.assert_close(lse, ref_lse, rtol=0, atol=tol)
