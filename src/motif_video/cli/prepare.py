"""`motif-video prepare`: encode a manifest of videos/images into training shards (`data.prepare`).

Thin: parse the arguments, read torchrun's RANK / WORLD_SIZE / LOCAL_RANK (absent: rank 0 of 1), call `prepare`.
"""

from __future__ import annotations

import argparse
import logging

import torch

from motif_video.data.manifest import CaptionProbs, parse_buckets
from motif_video.data.prepare import prepare


def add_prepare_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `prepare` to a CLI's subparsers; it runs `run_prepare_command` (rank/world from torchrun's env)."""
    cmd = subparsers.add_parser(
        "prepare",
        help="encode a manifest of videos/images into training shards (VAE latents + text states)",
        description="Encode a .jsonl/.csv manifest (path, caption[, caption_short, key, fps]) into WebDataset shards. "
        "Under torchrun every process writes its own shards (RANK, WORLD_SIZE); rerunning resumes.",
    )
    cmd.add_argument("--manifest", required=True, help="a .jsonl or .csv manifest")
    cmd.add_argument("--model", required=True, help="release folder (vae/, text_encoder/, tokenizer/ are used)")
    cmd.add_argument("--out", required=True, help="output folder for shard-XXXXXX.tar + .index.json")
    cmd.add_argument("--buckets", required=True, help="FxHxW list, e.g. 1x64x64,17x64x64 (H, W multiples of 16)")
    cmd.add_argument("--samples-per-shard", type=int, default=256, help="manifest items per shard (default 256)")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the caption-variant draw (default 0)")
    cmd.add_argument("--dtype", default="bfloat16", help="storage dtype: bfloat16 or float32 (default bfloat16)")
    cmd.add_argument("--image-tokens", action="store_true", help="also store SigLIP tokens of the first frame")
    cmd.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    cmd.add_argument("--frame-stride", type=int, default=1, help="keep every Nth source frame (default 1)")
    cmd.add_argument(
        "--caption-probs", default="0.5,0.3,0.2", help="long,short,first_sentence probabilities (default 0.5,0.3,0.2)"
    )
    cmd.add_argument("--teacher", choices=["dinov2", "vjepa2"], help="also store REPA targets of this teacher")
    cmd.add_argument("--teacher-path", help="teacher folder or hub id (default: the teacher's official hub id)")
    cmd.add_argument("--max-text-tokens", type=int, default=512, help="text tokens kept per caption (default 512)")
    cmd.set_defaults(func=run_prepare_command)
    return cmd


def run_prepare_command(args: argparse.Namespace) -> int:
    """The `prepare` command: RANK / WORLD_SIZE from torchrun's environment (absent: 0 of 1), then `prepare`."""
    from motif_video.env import torchrun_env

    rank, world_size, local_rank = torchrun_env()
    if args.device == "auto" and torch.cuda.is_available():
        args.device = f"cuda:{local_rank}"  # one GPU per torchrun process
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = prepare(
        args.manifest,
        args.model,
        args.out,
        parse_buckets(args.buckets),
        samples_per_shard=args.samples_per_shard,
        rank=rank,
        world_size=world_size,
        seed=args.seed,
        caption_probs=CaptionProbs.parse(args.caption_probs),
        frame_stride=args.frame_stride,
        dtype=args.dtype,
        image_tokens=args.image_tokens,
        max_sequence_length=args.max_text_tokens,
        device=args.device,
        teacher=(args.teacher, args.teacher_path) if args.teacher else None,
    )
    print(report.summary())
    return 0
