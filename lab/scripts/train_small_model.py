"""Reproduce the shipped small model: procedural data -> VAE -> text encoder -> shards -> transformer -> release.

    python lab/scripts/train_small_model.py --work runs/small --ship src/motif_video/_weights/motif-video-small

Every step resumes where it stopped; see `motif_video_lab.small_model.reproduce`. Then:

    motif-video-lab eval --output runs/small/eval --min-accuracy 0.9
    python lab/scripts/make_small_model_docs.py --metrics runs/small/run/metrics.jsonl \
        --results runs/small/eval/results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from motif_video_lab.small_model.reproduce import SmallModelPlan, reproduce


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, SmallModelPlan]:
    """The command line and its plan: one flag per `SmallModelPlan` field (`--tread` / `--no-tread` for booleans)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/small", help="work folder (default runs/small)")
    parser.add_argument("--ship", help="copy the release here (src/motif_video/_weights/motif-video-small)")
    for field in dataclasses.fields(SmallModelPlan):
        flag = "--" + field.name.replace("_", "-")
        if isinstance(field.default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default)
        else:
            kind = type(field.default)
            parser.add_argument(flag, type=kind, default=field.default, help=f"(default {field.default})")
    args = parser.parse_args(argv)
    try:
        plan = SmallModelPlan(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SmallModelPlan)})
    except ValueError as error:
        parser.error(str(error))
    return args, plan


def main() -> None:
    args, plan = parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(reproduce(args.work, plan, ship_to=args.ship))


if __name__ == "__main__":
    main()
