"""`motif-video-lab` command line: the lab's subcommands (today: `eval`), registered here and nowhere else."""

from __future__ import annotations

import argparse
import sys

from motif_video.models.checkpoint_io import CheckpointError
from motif_video_lab.eval_command import add_eval_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="motif-video-lab", description="The small Motif-Video model's lab.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_eval_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, CheckpointError) as err:
        print(f"motif-video-lab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
