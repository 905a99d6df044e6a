"""`motif-video plan`: the offline half of the bucket-balanced sampler, from the command line.

Reads the complete shards of one or more prepared folders, assigns them to `--world-size` ranks (greedy, then
simulated annealing; `sampler_plan.py`), writes the per-rank plans and prints data utilisation before and after.
A recipe source whose path is the plan folder then reads each rank's planned shards.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from motif_video.core.shards import parse_bucket


def add_plan_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    cmd = subparsers.add_parser(
        "plan",
        help="assign prepared shards to ranks so every rank sees the same bucket mix (offline sampler)",
        description="Greedy + simulated-annealing assignment of shards to ranks, minimising the coefficient of "
        "variation of per-rank bucket counts; writes plan-rank-XXXXX.json files and plan.json.",
    )
    cmd.add_argument("--data", nargs="+", required=True, help="prepared shard folder(s)")
    cmd.add_argument("--world-size", type=int, required=True, help="number of training ranks")
    cmd.add_argument("--out", required=True, help="plan folder (use it as the recipe source path)")
    cmd.add_argument(
        "--batch-size", default="1", help="one batch size, or per bucket: 1x64x64=32,17x64x64=4 (default 1)"
    )
    cmd.add_argument("--seed", type=int, default=0, help="annealing seed (default 0)")
    cmd.add_argument("--moves", type=int, default=30000, help="annealing swap proposals (default 30000, as the report)")
    cmd.set_defaults(func=run_plan_command)
    return cmd


def parse_batch_sizes(text: str) -> int | dict:
    text = text.strip()
    if "=" not in text:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"--batch-size must be an integer or BUCKET=N pairs, got {text!r}") from None
        if value < 1:
            raise ValueError(f"--batch-size must be >= 1, got {value}")
        return value
    sizes = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        try:
            sizes[parse_bucket(name.strip())] = int(value)
        except ValueError:
            raise ValueError(f"--batch-size entry {item!r} is not FxHxW=N (e.g. 17x64x64=4)") from None
    return sizes


def run_plan_command(args: argparse.Namespace) -> int:
    from motif_video.core.plan_files import write_plans
    from motif_video.core.run_folder import check_output_folder
    from motif_video.core.shards import complete_shards
    from motif_video.data.sampler_plan import plan_shards, report

    if args.world_size < 1:
        raise ValueError(f"--world-size must be >= 1, got {args.world_size}")
    if args.moves < 0:
        raise ValueError(f"--moves must be >= 0, got {args.moves}")
    check_output_folder(args.out, "--out")
    indexes = []
    for folder in map(Path, args.data):
        if not folder.is_dir():
            raise ValueError(f"--data {folder} is not a folder")
        found = complete_shards(folder)
        if not found:
            raise ValueError(f"--data {folder} holds no complete shards (run `motif-video prepare` first)")
        indexes += found
    plan = plan_shards(indexes, args.world_size, parse_batch_sizes(args.batch_size), args.seed, args.moves)
    write_plans(plan, Path(args.out))
    print(report(plan))
    print(f"plans: {args.out}")
    return 0
