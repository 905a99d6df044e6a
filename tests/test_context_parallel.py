"""Context parallelism (Ulysses, ring, and Ulysses x ring) gives the single-process transformer output (fp32,
gloo): T2V, I2V, padded text masks, both cross-attention layouts, the DDT decoder, grids whose token count does
not divide by the degree (padded; a rank may hold padding only). One spawn of 4 ranks runs every layout in
sub-groups: 2 ranks Ulysses and forced ring, 3 ranks ring only (2 heads), 4 ranks Ulysses (4 heads), 2 x 2
combined (2 heads) and forced ring. Exchange counts prove the layout taken; too few tokens are refused."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model_helpers import free_port, make_inputs, random_ours
from motif_video import get_preset
from motif_video.core.context_parallel import check_degree, disable_context_parallel, enable_context_parallel

GRID = (2, 4, 8)  # 2 x 2 x 4 = 16 tokens after the 2x2 patch: divides by 2 and 4, padded to 18 on 3 ranks


def _config(heads: int, layout: str = "diffusers"):
    return get_preset("tiny").replace(
        num_attention_heads=heads, cross_attention_layout=layout, enable_text_cross_attention_dual=True
    )


CASES = {
    "t2v_padded": dict(heads=2, inputs=dict(valid=(7, 4))),
    "t2v_no_mask": dict(heads=2, inputs=dict(valid=None)),
    "i2v_padded": dict(heads=2, inputs=dict(valid=(5, 7), image_len=3)),
    "shared_layout_i2v": dict(heads=2, layout="shared", inputs=dict(valid=(7, 2), image_len=3)),
    # 9 tokens: padded to 10 on 2 ranks; to 12 on 4 ranks, where the last rank holds padding only
    "uneven_i2v": dict(heads=2, inputs=dict(valid=(7, 4), image_len=2, grid=(3, 2, 6))),
    # 4 tokens: padded to 6 on 3 ranks, the last one padding only
    "small_t2v": dict(heads=2, inputs=dict(valid=(3, 7), grid=(1, 4, 4))),
    "four_heads_i2v": dict(heads=4, inputs=dict(valid=(6, 3), image_len=2)),
    "four_heads_uneven_t2v": dict(heads=4, inputs=dict(valid=(3, 7), grid=(3, 2, 6))),
}

# (group ranks, layout keywords, cases); every rank creates every group, in this order
PLAN = [
    ((0, 1), {}, ["t2v_padded", "t2v_no_mask", "i2v_padded", "shared_layout_i2v", "uneven_i2v"]),
    ((2, 3), {"ring": 2}, ["t2v_padded", "i2v_padded", "shared_layout_i2v", "uneven_i2v"]),
    ((0, 1, 2), {}, ["t2v_padded", "t2v_no_mask", "i2v_padded", "uneven_i2v", "small_t2v"]),
    ((0, 1, 2, 3), {}, ["four_heads_i2v", "four_heads_uneven_t2v", "t2v_padded", "shared_layout_i2v", "uneven_i2v"]),
    ((0, 1, 2, 3), {"ring": 4}, ["four_heads_uneven_t2v"]),
]
JOINT_ATTENTIONS = 6  # tiny preset, per forward: 2 dual, 2 encoder single, 2 DDT decoder blocks (4 single in all)


def _key(ranks: tuple[int, ...], layout: dict, name: str) -> str:
    return f"{name}@{len(ranks)}{'r' + str(layout['ring']) if layout else ''}"


def _case(name: str):
    spec = CASES[name]
    config = _config(spec["heads"], spec.get("layout", "diffusers"))
    return config, make_inputs(config, **{"grid": GRID, **spec["inputs"]})


@torch.no_grad()
def _single(name: str) -> torch.Tensor:
    config, inputs = _case(name)
    return random_ours(config)(**inputs).sample


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    counts = {"a2a": 0, "p2p": 0}
    a2a, p2p = dist.all_to_all_single, dist.batch_isend_irecv

    def counted_a2a(*args, **kwargs):
        counts["a2a"] += 1
        return a2a(*args, **kwargs)

    def counted_p2p(ops):
        counts["p2p"] += 1
        return p2p(ops)

    dist.all_to_all_single, dist.batch_isend_irecv = counted_a2a, counted_p2p
    results: dict[str, object] = {}
    try:
        groups = [dist.new_group(list(ranks)) for ranks, _, _ in PLAN]
        with torch.no_grad():
            for group, (ranks, layout, names) in zip(groups, PLAN, strict=True):
                if rank not in ranks:
                    continue
                for name in names:
                    config, inputs = _case(name)
                    model = enable_context_parallel(random_ours(config), group, **layout)
                    counts.update(a2a=0, p2p=0)
                    key = _key(ranks, layout, name)
                    results[key] = model(**inputs).sample
                    results["layout_" + key] = model._context_parallel_layout
                    results["counts_" + key] = dict(counts)
                    if name == names[0]:
                        with pytest.raises(ValueError, match="at least"):  # fewer video tokens than ranks
                            model(**make_inputs(config, grid=(1, 2, 2)))
                        # the plain path of another model in the same process is untouched
                        results["plain_" + key] = disable_context_parallel(model)(**inputs).sample
            with pytest.raises(ValueError, match="must divide both"):
                enable_context_parallel(random_ours(_config(2)), ulysses=4)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def parallel_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("cp")
    mp.spawn(_worker, args=(4, free_port(), str(out)), nprocs=4, join=True)
    rank0, rank2 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 2))
    return {**rank2, **rank0}  # rank 0 is in every group but (2, 3)


def _check(results: dict, ranks: tuple[int, ...], layout: dict, names: list[str], split: tuple[int, int]) -> None:
    errors = {}
    for name in names:
        key = _key(ranks, layout, name)
        assert results["layout_" + key] == split, key
        errors[key] = (results[key] - _single(name)).abs().max().item()
        assert errors[key] <= 1e-5, f"{key}: max abs diff {errors[key]:.2e}"
    plain = "plain_" + _key(ranks, layout, names[0])
    if plain in results:  # the first case of each group
        torch.testing.assert_close(results[plain], _single(names[0]), rtol=0, atol=1e-6, msg="the plain path changed")
    print({k: f"{v:.2e}" for k, v in errors.items()})


def test_ulysses_on_two_ranks(parallel_results):
    ranks, layout, names = PLAN[0]
    _check(parallel_results, ranks, layout, names, (2, 1))
    # in and out per joint attention, nothing point-to-point
    assert parallel_results["counts_" + _key(ranks, layout, names[0])] == {"a2a": 2 * JOINT_ATTENTIONS, "p2p": 0}


def test_forced_ring_on_two_ranks(parallel_results):
    ranks, layout, names = PLAN[1]
    _check(parallel_results, ranks, layout, names, (1, 2))
    # P - 1 = 1 ring exchange per joint attention, no all-to-all
    assert parallel_results["counts_" + _key(ranks, layout, names[0])] == {"a2a": 0, "p2p": JOINT_ATTENTIONS}


def test_ring_on_three_ranks_with_two_heads(parallel_results):
    ranks, layout, names = PLAN[2]
    _check(parallel_results, ranks, layout, names, (1, 3))
    assert parallel_results["counts_" + _key(ranks, layout, names[0])] == {"a2a": 0, "p2p": 2 * JOINT_ATTENTIONS}


def test_four_ranks_ulysses_and_two_by_two_combined(parallel_results):
    ranks, layout, names = PLAN[3]
    _check(parallel_results, ranks, layout, names[:2], (4, 1))  # 4 heads: Ulysses only
    _check(parallel_results, ranks, layout, names[2:], (2, 2))  # 2 heads: 2 Ulysses x 2 ring
    # combined: the sub-group all-to-alls (in, out) are point-to-point batches, plus 1 ring exchange
    assert parallel_results["counts_" + _key(ranks, layout, names[2])] == {"a2a": 0, "p2p": 3 * JOINT_ATTENTIONS}


def test_forced_ring_on_four_ranks(parallel_results):
    ranks, layout, names = PLAN[4]
    _check(parallel_results, ranks, layout, names, (1, 4))
    assert parallel_results["counts_" + _key(ranks, layout, names[0])] == {"a2a": 0, "p2p": 3 * JOINT_ATTENTIONS}


def test_any_degree_is_accepted_and_below_one_refused():
    assert check_degree(12, 4) == (4, 1)
    assert check_degree(12, 5) == (1, 5)
    assert check_degree(12, 8) == (4, 2)
    with pytest.raises(ValueError, match="at least 1"):
        check_degree(12, 0)


def test_needs_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(RuntimeError, match="process group"):
        enable_context_parallel(random_ours(_config(2)))
