"""`motif-video` command line. Thin: parse arguments, build a config, call one library function."""

from __future__ import annotations

import argparse
import sys

from motif_video.cli.export import add_export_parser
from motif_video.cli.forward import add_forward_parser
from motif_video.cli.generate import add_generate_parser
from motif_video.cli.plan import add_plan_parser
from motif_video.cli.prepare import add_prepare_parser
from motif_video.cli.serve import add_serve_parser
from motif_video.cli.train import add_train_parser
from motif_video.models.checkpoint_io import CheckpointError

# Every subcommand, registered here and nowhere else; each module's `add_*_parser` sets `func` for its command.
SUBCOMMANDS = (
    add_forward_parser,
    add_generate_parser,
    add_prepare_parser,
    add_plan_parser,
    add_train_parser,
    add_export_parser,
    add_serve_parser,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="motif-video", description="Motif-Video 2B: text/image-to-video.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser in SUBCOMMANDS:
        add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, CheckpointError) as err:
        print(f"motif-video {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
