"""`motif-video generate` as one of torchrun's processes (`torchrun --nproc_per_node N -m motif_video generate
... --parallel cp=P,cfg=G`; several nodes through torchrun's own --nnodes / --rdzv-* flags).

- Order: the settings are read and checked on every rank (`GenerateSettings.validate`, the layout against
  WORLD_SIZE among the rest) BEFORE the process group starts or any model loads; then the group starts (NCCL on
  cuda:LOCAL_RANK, gloo on the CPU), every rank builds the pipeline and runs it under `enable_parallel`, and
  rank 0 alone writes the video and its JSON record, prints the paths and shows the progress bar and logs.
  Ranks other than 0 never run the text encoder, so they keep its weights on the CPU (`--text-encoder-cpu`).
- One message per failure, no traceback. A refused setting is the same on every rank: rank 0 prints it, the
  others exit with the same status in silence. Later, the first rank to fail (a counter in the group's store)
  prints its error with its rank; a rank failing after it (a peer gone from a collective, `PeerFailed`, the same
  input error) exits silently. torchrun then stops the surviving ranks with SIGTERM, which here keeps its
  default action (end at once and silently: a rank blocked in a collective runs no Python handler).
- Files: nothing is written before the last collective; rank 0's writes are atomic, so a failure leaves no
  partial video.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist

from motif_video.cli.generate import GenerateSettings, run_pipeline, write_videos
from motif_video.env import torchrun_env
from motif_video.models.checkpoint_io import CheckpointError
from motif_video.pipeline.parallel import PeerFailed

NAME = "motif-video generate"
FAILURES_KEY = "motif_video/failures"
INPUT_ERRORS = (ValueError, TypeError, CheckpointError, OSError)  # exit 2, as `cli.main` answers them


@contextlib.contextmanager
def _default_sigterm() -> Iterator[None]:
    """SIGTERM ends the process at once and silently for the block (torchrun stopping the surviving ranks)."""
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _one_line(err: BaseException) -> str:
    from motif_video.cli.main import one_line  # the CLI's one error style (main imports this module's parent)

    return one_line(err)


def _first_failure() -> bool:
    """Whether this rank is the first of the launch to fail: a counter in the process group's store (torchrun's
    agent keeps it, so it outlives a rank that exits)."""
    try:
        return dist.distributed_c10d._get_default_store().add(FAILURES_KEY, 1) == 1
    except Exception:  # noqa: BLE001 - no group or store yet: this rank cannot know, so it speaks
        return True


def _report(err: Exception, rank: int) -> int:
    """Print `err` as one line when this rank failed first; returns the exit status."""
    status = 2 if isinstance(err, INPUT_ERRORS) else 1
    if not isinstance(err, PeerFailed) and _first_failure():  # PeerFailed: rank 0 failed first, and said so
        print(f"{NAME}: error: rank {rank}: {_one_line(err)}", file=sys.stderr)
    return status


def _start_group(settings: GenerateSettings, local_rank: int) -> GenerateSettings:
    """Start the default process group; returns the settings with this rank's device."""
    if settings.resolved_device().type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        return replace(settings, device=str(device))
    dist.init_process_group("gloo")
    return replace(settings, device="cpu")


def run_launched(make_settings: Callable[[], GenerateSettings]) -> int:
    """One rank of a torchrun launch: check, start the group, generate; rank 0 writes. Returns the exit status."""
    rank, _, local_rank = torchrun_env()
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.ERROR, format="%(message)s")
    try:
        settings = make_settings()
        if (
            settings.resolved_device().type == "cuda" and torch.cuda.is_available()
        ):  # this rank's GPU before anything touches CUDA (the memory
            torch.cuda.set_device(local_rank)  # check reads its free memory), not GPU 0 for every rank
        settings.validate()  # before any group or model: the same answer on every rank
    except INPUT_ERRORS as err:
        if rank == 0:
            print(f"{NAME}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    result: Any = None
    with _default_sigterm():
        try:
            settings = _start_group(settings, local_rank)
            if rank != 0:  # only rank 0 runs the text encoder (`pipeline.parallel`): the others keep it off the GPU
                settings = replace(settings, text_encoder_on_cpu=True)
            result = run_pipeline(settings)
        except Exception as err:  # noqa: BLE001 - every failure becomes one line (or silence, see _report)
            return _report(err, rank)
    if result.frames is not None:  # rank 0: after the last collective, under the CLI's own SIGTERM handling
        for path in write_videos(settings, result):
            print(path)
    dist.destroy_process_group()
    return 0
