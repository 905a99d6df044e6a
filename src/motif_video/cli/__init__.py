"""The `motif-video` command line: every subcommand is registered in `main.build_parser`."""

from motif_video.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
