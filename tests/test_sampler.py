"""The offline bucket-balanced shard planner and the run-time shard reader, on small real tar shards."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from motif_video.core.plan_files import read_plan, read_summary, write_plans
from motif_video.core.shard_reader import ShardReader, ShardReadError
from motif_video.core.shards import INDEX_SUFFIX, ShardIndex, complete_shards
from motif_video.core.synthetic_shards import synthetic_sample, write_shard, write_synthetic_shards
from motif_video.data.sampler_plan import plan_shards, report

BUCKETS = [(1, 16, 16), (5, 16, 16), (9, 16, 24), (13, 24, 16), (17, 16, 16)]
BATCH = 4


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("shards")
    write_synthetic_shards(directory, num_shards=60, buckets=BUCKETS, samples_per_shard=(8, 40), seed=0)
    return directory


@pytest.fixture(scope="module")
def plan_dir(shard_dir, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("plan")
    write_plans(plan_shards([shard_dir], world_size=4, batch_sizes=BATCH, seed=0), directory)
    return directory


def _index_keys(shards: list[str]) -> dict[str, tuple]:
    """key -> bucket for the samples of these tars, from their index files."""
    out = {}
    for tar in shards:
        index = ShardIndex.read(Path(tar).with_name(Path(tar).name[: -len(".tar")] + INDEX_SUFFIX))
        out.update({e.key: e.bucket for e in index.entries})
    return out


def _same(a, b) -> bool:
    if a.keys != b.keys or a.bucket != b.bucket:
        return False
    names = ("latents", "text", "text_mask", "first_frame", "image_tokens", "image_tokens_mask", "teacher")
    return all(
        (getattr(a, n) is None and getattr(b, n) is None) or torch.equal(getattr(a, n), getattr(b, n)) for n in names
    )


@pytest.mark.parametrize("world_size", [4, 8])
def test_plan_balances_buckets(shard_dir, world_size):
    indexes = complete_shards(shard_dir)
    plan = plan_shards(indexes, world_size=world_size, batch_sizes=BATCH, seed=0)
    print("\n" + report(plan))
    assert plan.cost < plan.cost_baseline
    assert plan.utilisation > plan.utilisation_baseline
    assert plan.cost <= plan.cost_greedy
    greedy_only = plan_shards(indexes, world_size=world_size, batch_sizes=BATCH, seed=0, anneal_moves=0)
    assert greedy_only.cost == plan.cost_greedy and greedy_only.accepted_moves == 0
    # A partition: every shard on exactly one (non-empty) rank, and the counts are the shards' counts.
    assigned = [s for shards in plan.rank_shards for s in shards]
    assert sorted(assigned) == sorted(str((shard_dir / ShardIndex.read(p).shard).resolve()) for p in indexes)
    assert all(plan.rank_shards)
    for shards, counts in zip(plan.rank_shards, plan.rank_counts):
        assert Counter(_index_keys(shards).values()) == Counter({b: n for b, n in counts.items() if n})
    # Utilisation is exactly the documented lockstep formula.
    counts = np.array([[c[b] for b in plan.buckets] for c in plan.rank_counts])
    usable = sum(world_size * (counts[:, k].min() // BATCH) * BATCH for k in range(len(plan.buckets)))
    assert plan.utilisation == pytest.approx(usable / counts.sum())


def test_plan_deterministic_and_round_trips(shard_dir, tmp_path):
    a = plan_shards([shard_dir], world_size=8, batch_sizes=BATCH, seed=3)
    b = plan_shards([shard_dir], world_size=8, batch_sizes=BATCH, seed=3)
    assert a == b
    write_plans(a, tmp_path)
    assert read_summary(tmp_path) == a
    for rank in range(8):
        rank_plan = read_plan(tmp_path, rank)
        assert rank_plan.shards == a.rank_shards[rank]
        assert rank_plan.bucket_counts == a.rank_counts[rank]
        assert rank_plan.lockstep_batches == a.lockstep_batches()
    with pytest.raises(ValueError, match="outside"):
        read_plan(tmp_path, 8)


def test_plan_and_resume_survive_moving_the_data(tmp_path):
    root = tmp_path / "a"
    write_synthetic_shards(root / "shards", num_shards=6, buckets=BUCKETS[:2], samples_per_shard=(8, 12), seed=4)
    write_plans(plan_shards([root / "shards"], world_size=2, batch_sizes=BATCH, seed=0), root / "plan")
    stored = json.loads((root / "plan" / "plan-rank-00000.json").read_text())["shards"]
    assert stored and all(not Path(s).is_absolute() and s.startswith("../shards/") for s in stored)
    reader = ShardReader(root / "plan", 0, BATCH, seed=1, shuffle_window=8)
    for _ in range(2):
        next(reader)
    state = json.loads(json.dumps(reader.state_dict()))
    expected = [next(reader) for _ in range(3)]
    reader.close()
    moved = root.rename(tmp_path / "b")
    rank_plan = read_plan(moved / "plan", 0)
    assert all(Path(s).is_file() and Path(s).is_relative_to(moved.resolve()) for s in rank_plan.shards)
    assert all(Path(s).is_relative_to(moved.resolve()) for s in sum(read_summary(moved / "plan").rank_shards, []))
    resumed = ShardReader(moved / "plan", 0, BATCH, seed=1, shuffle_window=8)
    resumed.load_state_dict(state)
    assert all(_same(x, y) for x, y in zip([next(resumed) for _ in range(3)], expected))


def test_reader_yields_homogeneous_batches_covering_the_rank(plan_dir):
    plan = read_summary(plan_dir)
    lockstep = plan.lockstep_batches()
    for rank in range(plan.world_size):
        expected = _index_keys(plan.rank_shards[rank])
        batches = list(ShardReader(plan_dir, rank, BATCH, seed=0, shuffle_window=64, num_epochs=1))
        seen = Counter()
        for batch in batches:
            assert len(batch.meta) == BATCH and {m.bucket for m in batch.meta} == {batch.bucket}
            assert batch.latents.shape[0] == BATCH and batch.text_mask.dtype == torch.bool
            assert batch.text.shape[:2] == batch.text_mask.shape
            assert (batch.first_frame is None) == (batch.bucket[0] == 1)  # images carry no first frame
            assert batch.image_tokens.shape[:2] == batch.image_tokens_mask.shape
            assert batch.teacher.shape[0] == BATCH
            seen.update(batch.bucket for _ in batch.keys)
        keys = [k for batch in batches for k in batch.keys]
        assert len(keys) == len(set(keys)) and set(keys) <= set(expected)
        totals = Counter(expected.values())
        assert seen == Counter({b: n // BATCH * BATCH for b, n in totals.items() if n >= BATCH})  # drop_last
        for bucket, n in lockstep.items():  # every rank can take the planned lockstep steps
            assert seen[bucket] // BATCH >= n
        everything = list(ShardReader(plan_dir, rank, BATCH, seed=0, shuffle_window=64, drop_last=False, num_epochs=1))
        assert sorted(k for b in everything for k in b.keys) == sorted(expected)


def test_collate_pads_text_and_image_tokens(plan_dir):
    batch = next(iter(ShardReader(plan_dir, 0, BATCH, seed=0, shuffle_window=8)))
    for tokens, mask in ((batch.text, batch.text_mask), (batch.image_tokens, batch.image_tokens_mask)):
        lengths = mask.sum(1)
        assert mask.shape[1] == lengths.max()
        for i, n in enumerate(lengths.tolist()):
            assert mask[i, :n].all() and not mask[i, n:].any()
            assert (tokens[i, n:] == 0).all()


def test_reader_is_deterministic_by_seed(plan_dir):
    a = list(ShardReader(plan_dir, 1, BATCH, seed=5, shuffle_window=32, num_epochs=2))
    b = list(ShardReader(plan_dir, 1, BATCH, seed=5, shuffle_window=32, num_epochs=2))
    c = list(ShardReader(plan_dir, 1, BATCH, seed=6, shuffle_window=32, num_epochs=2))
    assert len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    assert [x.keys for x in a] != [x.keys for x in c]
    half = len(a) // 2  # the second epoch reshuffles
    assert [x.keys for x in a[:half]] != [x.keys for x in a[half:]]


@pytest.mark.parametrize("drop_last", [True, False])
def test_resume_is_exact_across_epochs(plan_dir, drop_last):
    kwargs = dict(batch_sizes=BATCH, seed=2, shuffle_window=16, drop_last=drop_last)
    per_epoch = len(list(ShardReader(plan_dir, 2, num_epochs=1, **kwargs)))
    total = per_epoch + 6
    reference = ShardReader(plan_dir, 2, **kwargs)
    expected = [next(reference) for _ in range(total)]
    for k in (0, 3, per_epoch - 1, per_epoch, per_epoch + 2):
        first = ShardReader(plan_dir, 2, **kwargs)
        for _ in range(k):
            next(first)
        state = json.loads(json.dumps(first.state_dict()))  # it must survive a JSON checkpoint
        first.close()
        resumed = ShardReader(plan_dir, 2, **kwargs)
        resumed.load_state_dict(state)
        rest = [next(resumed) for _ in range(total - k)]
        assert all(_same(x, y) for x, y in zip(rest, expected[k:])), f"resume after {k} batches diverged"
    with pytest.raises(ValueError, match="seed"):
        ShardReader(plan_dir, 2, batch_sizes=BATCH, seed=9).load_state_dict(state)


def test_incomplete_shards_are_ignored(tmp_path):
    write_synthetic_shards(tmp_path, num_shards=3, buckets=BUCKETS[:2], samples_per_shard=(8, 8), seed=1)
    rng = np.random.default_rng(0)
    half = write_shard(tmp_path, 3, [synthetic_sample(f"x{i}", BUCKETS[0], rng) for i in range(8)])
    half.unlink()  # a tar whose index was never written: an interrupted `prepare`
    assert (tmp_path / "shard-000003.tar").is_file() and len(complete_shards(tmp_path)) == 3
    plan = plan_shards([tmp_path], world_size=2, batch_sizes=2)
    assert sum(len(s) for s in plan.rank_shards) == 3
    keys = [k for b in ShardReader(tmp_path, 0, 2, shuffle_window=4, drop_last=False, num_epochs=1) for k in b.keys]
    assert len(keys) == 24 and not any(k.startswith("x") for k in keys)


def test_corrupt_sample_raises_naming_shard_and_key(tmp_path):
    rng = np.random.default_rng(0)
    samples = [synthetic_sample(f"ok{i}", BUCKETS[1], rng) for i in range(3)]
    bad_meta, _ = synthetic_sample("broken", BUCKETS[1], rng)
    write_shard(tmp_path, 0, samples[:2] + [(bad_meta, b"not a safetensors file")] + samples[2:])
    reader = ShardReader(tmp_path, 0, 2, shuffle_window=0)
    assert reader.__next__().keys == ["ok0", "ok1"]
    with pytest.raises(ShardReadError, match=r"shard-000000\.tar.*'broken'"):
        next(reader)
