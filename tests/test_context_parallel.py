"""Ulysses context parallelism: 2 and 4 gloo ranks give the single-process transformer output (fp32), for T2V,
I2V, padded text masks, both cross-attention layouts, the DDT decoder and grids whose token count does not divide
by the degree (padded); bad degrees and too few tokens are refused."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model_helpers import free_port, make_inputs, random_ours
from motif_video import get_preset
from motif_video.core import context_parallel
from motif_video.core.context_parallel import check_degree, disable_context_parallel, enable_context_parallel

GRID = (2, 4, 8)  # 2 x 2 x 4 = 16 tokens after the 2x2 patch: divides by 2 and 4


def _config(heads: int, layout: str = "diffusers"):
    return get_preset("tiny").replace(
        num_attention_heads=heads, cross_attention_layout=layout, enable_text_cross_attention_dual=True
    )


CASES = {
    "t2v_padded": dict(heads=2, inputs=dict(valid=(7, 4))),
    "t2v_no_mask": dict(heads=2, inputs=dict(valid=None)),
    "i2v_padded": dict(heads=2, inputs=dict(valid=(5, 7), image_len=3)),
    "shared_layout_i2v": dict(heads=2, layout="shared", inputs=dict(valid=(7, 2), image_len=3)),
    "four_heads_i2v": dict(heads=4, inputs=dict(valid=(6, 3), image_len=2)),
    # 9 tokens: padded to 10 on 2 ranks; to 12 on 4 ranks, where the last rank holds padding only
    "uneven_i2v": dict(heads=2, inputs=dict(valid=(7, 4), image_len=2, grid=(3, 2, 6))),
    "four_heads_uneven_t2v": dict(heads=4, inputs=dict(valid=(3, 7), grid=(3, 2, 6))),
}


def _case(name: str):
    spec = CASES[name]
    config = _config(spec["heads"], spec.get("layout", "diffusers"))
    return config, make_inputs(config, **{"grid": GRID, **spec["inputs"]})


@torch.no_grad()
def _single(name: str) -> torch.Tensor:
    config, inputs = _case(name)
    return random_ours(config)(**inputs).sample


def _worker(rank: int, world_size: int, port: int, names: list[str], out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    results: dict[str, object] = {"exchanges": 0}
    exchange = context_parallel._all_to_all

    def counted(x, group):
        results["exchanges"] += 1
        return exchange(x, group)

    context_parallel._all_to_all = counted
    try:
        with torch.no_grad():
            for name in names:
                config, inputs = _case(name)
                model = enable_context_parallel(random_ours(config))
                results[name] = model(**inputs).sample
                if name == names[0]:
                    # fewer video tokens than ranks: refused with a message
                    with pytest.raises(ValueError, match="at least"):
                        model(**make_inputs(config, grid=(1, 2, 2)))
                    # the plain path of another model in the same process is untouched
                    results["plain_" + name] = disable_context_parallel(model)(**inputs).sample
            if world_size > 2:
                with pytest.raises(ValueError, match="must divide the 2 attention heads"):
                    enable_context_parallel(random_ours(_config(2)))
                results["refused_bad_degree"] = True
        if rank == 0:
            torch.save(results, out_path)
    finally:
        dist.destroy_process_group()


def _run(world_size: int, names: list[str], tmp_path) -> dict:
    out = tmp_path / f"cp{world_size}.pt"
    mp.spawn(_worker, args=(world_size, free_port(), names, str(out)), nprocs=world_size, join=True)
    return torch.load(out, weights_only=True)


def _check(results: dict, names: list[str]) -> dict[str, float]:
    errors = {}
    for name in names:
        expected = _single(name)
        errors[name] = (results[name] - expected).abs().max().item()
        assert errors[name] <= 1e-5, f"{name}: max abs diff {errors[name]:.2e}"
    plain = "plain_" + names[0]
    torch.testing.assert_close(results[plain], _single(names[0]), rtol=0, atol=1e-6, msg="the plain path changed")
    print({k: f"{v:.2e}" for k, v in errors.items()})
    return errors


def test_two_ranks_match_one_process(tmp_path):
    names = [name for name, spec in CASES.items() if spec["heads"] == 2]
    _check(_run(2, names, tmp_path), names)


def test_four_ranks_match_one_process_and_refuse_a_bad_degree(tmp_path):
    names = ["four_heads_i2v", "four_heads_uneven_t2v"]
    results = _run(4, names, tmp_path)
    _check(results, names)
    assert results["refused_bad_degree"]
    assert results["exchanges"] == 2 * 2 * 6  # 2 cases x (in and out) x (2 dual, 2 single, 2 decoder blocks)


def test_degree_must_divide_heads():
    check_degree(12, 4)
    with pytest.raises(ValueError, match="must divide the 12 attention heads"):
        check_degree(12, 5)


def test_needs_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(RuntimeError, match="process group"):
        enable_context_parallel(random_ours(_config(2)))
