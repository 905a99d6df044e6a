"""`motif-video` command line. Thin: parse arguments, build a config, call one library function."""

from __future__ import annotations

import argparse
import sys

from motif_video.models.checkpoint_io import CheckpointError
from motif_video.models.config import PRESETS


def _forward(args: argparse.Namespace) -> int:
    from motif_video.smoke import run_forward

    report = run_forward(
        preset=args.preset,
        model=args.model,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        text_tokens=args.text_tokens,
        image=args.image,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
    )
    print(report)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="motif-video", description="Motif-Video 2B: text/image-to-video.")
    sub = parser.add_subparsers(dest="command", required=True)
    fwd = sub.add_parser(
        "forward",
        help="run one transformer forward pass on random inputs and print the output shape",
        description="One forward pass of the transformer on random latents and text embeddings.",
    )
    source = fwd.add_mutually_exclusive_group()
    source.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="fresh model (default: tiny)")
    source.add_argument("--model", help="a transformer/ folder or hub id to load instead of a preset")
    fwd.add_argument("--height", type=int, default=64, help="video height in pixels, multiple of 16 (default 64)")
    fwd.add_argument("--width", type=int, default=96, help="video width in pixels, multiple of 16 (default 96)")
    fwd.add_argument("--num-frames", type=int, default=9, help="video frames, of the form 4k+1 (default 9)")
    fwd.add_argument("--text-tokens", type=int, default=16, help="valid text tokens (default 16)")
    fwd.add_argument("--image", action="store_true", help="add I2V image tokens")
    fwd.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    fwd.add_argument("--device", default="cpu", help="torch device (default cpu)")
    fwd.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="(default float32)")
    fwd.set_defaults(func=_forward)
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
