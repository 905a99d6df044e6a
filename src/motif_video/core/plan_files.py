"""The sampler plan's files: which shards each rank reads (`plan-rank-XXXXX.json`) and the summary (`plan.json`).

`data.sampler_plan` computes a plan and writes it here; the shard reader of training reads one rank's part back.
Tar paths are stored relative to the plan folder, so a plan moved with its data stays valid.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from motif_video import atomic
from motif_video.core.shards import Bucket, bucket_name, parse_bucket

PLAN_RANK_PATTERN = "plan-rank-{rank:05d}.json"
PLAN_SUMMARY = "plan.json"


@dataclass
class Plan:
    """A shard-to-rank assignment with its quality before (round-robin), after greedy, and after annealing."""

    world_size: int
    buckets: list[Bucket]
    batch_sizes: dict[Bucket, int]
    rank_shards: list[list[str]]  # per rank, tar paths in reading order
    rank_counts: list[dict[Bucket, int]]  # per rank, clips per bucket
    baseline_counts: list[dict[Bucket, int]]  # the same under round-robin
    cost: float  # mean over buckets of the CV of per-rank counts
    cost_greedy: float
    cost_baseline: float
    utilisation: float
    utilisation_greedy: float
    utilisation_baseline: float
    seed: int = 0
    anneal_moves: int = 0
    accepted_moves: int = 0

    def lockstep_batches(self, baseline: bool = False) -> dict[Bucket, int]:
        """n_b: batches of each bucket that every rank can take in lockstep per epoch."""
        counts = self.baseline_counts if baseline else self.rank_counts
        return {b: min(c.get(b, 0) for c in counts) // self.batch_sizes[b] for b in self.buckets}

    def to_dict(self) -> dict:
        def names(d: dict[Bucket, int]) -> dict[str, int]:
            return {bucket_name(b): v for b, v in d.items()}

        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["buckets"] = [bucket_name(b) for b in self.buckets]
        out["batch_sizes"] = names(self.batch_sizes)
        out["rank_counts"] = [names(c) for c in self.rank_counts]
        out["baseline_counts"] = [names(c) for c in self.baseline_counts]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        def buckets(d: dict[str, int]) -> dict[Bucket, int]:
            return {parse_bucket(k): int(v) for k, v in d.items()}

        data = dict(data)
        data["buckets"] = [parse_bucket(b) for b in data["buckets"]]
        data["batch_sizes"] = buckets(data["batch_sizes"])
        data["rank_counts"] = [buckets(c) for c in data["rank_counts"]]
        data["baseline_counts"] = [buckets(c) for c in data["baseline_counts"]]
        return cls(**data)


@dataclass
class RankPlan:
    """What one rank reads: `plan-rank-XXXXX.json`."""

    rank: int
    world_size: int
    shards: list[str]
    bucket_counts: dict[Bucket, int]
    lockstep_batches: dict[Bucket, int]
    batch_sizes: dict[Bucket, int]
    seed: int = 0


def write_plans(plan: Plan, out_dir: Path) -> list[Path]:
    """Write `plan-rank-XXXXX.json` for every rank, then the `plan.json` summary (last: its presence means done).

    Tar paths are stored relative to `out_dir` and read back as absolute paths (`read_plan`, `read_summary`)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lockstep = {bucket_name(b): n for b, n in plan.lockstep_batches().items()}
    relative = [[_relative(s, out_dir) for s in shards] for shards in plan.rank_shards]
    written = []
    for rank, shards in enumerate(relative):
        payload = {
            "rank": rank,
            "world_size": plan.world_size,
            "shards": shards,
            "bucket_counts": {bucket_name(b): n for b, n in plan.rank_counts[rank].items()},
            "lockstep_batches": lockstep,
            "batch_sizes": {bucket_name(b): n for b, n in plan.batch_sizes.items()},
            "seed": plan.seed,
        }
        written.append(_write_json(out_dir / PLAN_RANK_PATTERN.format(rank=rank), payload))
    written.append(_write_json(out_dir / PLAN_SUMMARY, {**plan.to_dict(), "rank_shards": relative}))
    return written


def _relative(shard: str, out_dir: Path) -> str:
    """A tar path as the plan files store it: relative to the plan folder, so that moving the plan and the data
    together (or reading them from another mount point) keeps the plan valid. Paths on another drive stay absolute."""
    try:
        return os.path.relpath(Path(shard).resolve(), out_dir.resolve())
    except ValueError:  # Windows: no relative path across drives
        return str(Path(shard).resolve())


def _absolute(shard: str, out_dir: Path) -> str:
    """A stored tar path back to an absolute one (plans written before paths were relative are absolute already)."""
    return str((Path(out_dir) / shard).resolve())


def _write_json(path: Path, payload: dict) -> Path:
    return atomic.write_text(path, json.dumps(payload, indent=1))


def read_summary(out_dir: Path) -> Plan:
    plan = Plan.from_dict(json.loads((Path(out_dir) / PLAN_SUMMARY).read_text()))
    plan.rank_shards = [[_absolute(s, out_dir) for s in shards] for shards in plan.rank_shards]
    return plan


def read_plan(out_dir: Path, rank: int) -> RankPlan:
    """One rank's plan; checks that the plan is complete (`plan.json` exists) and that the rank is in range."""
    out_dir = Path(out_dir)
    summary = out_dir / PLAN_SUMMARY
    if not summary.is_file():
        raise FileNotFoundError(f"{summary} is missing: the plan in {out_dir} is incomplete")
    world_size = int(json.loads(summary.read_text())["world_size"])
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside the plan's world size {world_size}")
    data = json.loads((out_dir / PLAN_RANK_PATTERN.format(rank=rank)).read_text())

    def buckets(d: dict[str, int]) -> dict[Bucket, int]:
        return {parse_bucket(k): int(v) for k, v in d.items()}

    return RankPlan(
        rank=int(data["rank"]),
        world_size=int(data["world_size"]),
        shards=[_absolute(s, out_dir) for s in data["shards"]],
        bucket_counts=buckets(data["bucket_counts"]),
        lockstep_batches=buckets(data["lockstep_batches"]),
        batch_sizes=buckets(data["batch_sizes"]),
        seed=int(data.get("seed", 0)),
    )
