"""`motif-video` command line. Thin: parse arguments, build a config, call one library function.

One error style: a refused input is one line on stderr naming the flag, file or field and what to change, exit 2
(ValueError, TypeError, CheckpointError, and OSError such as a full disk, naming the path). Ctrl-C and SIGTERM end
the command with one line and exit 130 / 143; the writers remove their partial files on the way out (atomic
writes, checkpoints), so the same command run again resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import signal
import sys
from collections.abc import Iterator

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


class Terminated(BaseException):
    """SIGTERM, raised in the main thread like KeyboardInterrupt so that every cleanup on the way out runs."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def one_line(err: BaseException) -> str:
    """An exception as one line; an OSError names its path (a full disk says which file it was writing)."""
    if isinstance(err, OSError) and err.strerror:
        where = f" -> {err.filename2}" if err.filename2 else ""
        text = f"{err.strerror}: {err.filename}{where}" if err.filename else err.strerror
        if err.errno == errno.ENOSPC:
            text += " (free some space, then run the same command again to resume)"
    else:
        text = str(err) or type(err).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    name = f"motif-video {args.command}"
    with _sigterm_raises():
        try:
            return args.func(args)
        except KeyboardInterrupt:
            print(f"{name}: interrupted (Ctrl-C); partial files removed, run it again to resume", file=sys.stderr)
            return 130
        except Terminated:
            print(f"{name}: terminated (SIGTERM); partial files removed, run it again to resume", file=sys.stderr)
            return 143
        except (ValueError, TypeError, CheckpointError, OSError) as err:
            print(f"{name}: error: {one_line(err)}", file=sys.stderr)
            return 2
        except (MemoryError, RuntimeError) as err:  # RuntimeError: only torch's out-of-memory errors are answered
            if not isinstance(err, MemoryError) and "out of memory" not in str(err) and "allocate" not in str(err):
                raise
            print(f"{name}: error: out of memory: lower the size, frames or batch", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
