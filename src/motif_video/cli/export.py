"""`motif-video export`: write a training checkpoint as the official transformer/ folder (`training.export`)."""

from __future__ import annotations

import argparse

from motif_video.training.export import DTYPES, export_transformer


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `export` to a CLI's subparsers; it runs `run_export_command`."""
    cmd = subparsers.add_parser(
        "export",
        help="write a training checkpoint as the official transformer/ folder (or a whole release with --base)",
        description="Read the model (EMA by default) weights of a training checkpoint and write config.json + "
        "safetensors that MotifVideoTransformer and diffusers load. LoRA runs are merged.",
    )
    cmd.add_argument("--checkpoint", required=True, help="a run folder (its latest complete checkpoint) or a step-N/")
    cmd.add_argument("--output", required=True, help="output folder (the transformer folder, or a release with --base)")
    cmd.add_argument("--no-ema", action="store_true", help="export the trained weights instead of their EMA")
    cmd.add_argument(
        "--base", help="release folder or hub id to copy the other components (vae/, text_encoder/...) from"
    )
    cmd.add_argument(
        "--model-config", help="the run's model: a preset name, a config.json, or a release/transformer folder"
    )
    cmd.add_argument("--lora-alpha", type=float, help="LoRA runs: the adapters' alpha (the rank if it was unset)")
    cmd.add_argument("--dtype", choices=sorted(DTYPES), help="cast the weights (default: as stored, float32)")
    cmd.set_defaults(func=run_export_command)
    return cmd


def run_export_command(args: argparse.Namespace) -> int:
    result = export_transformer(
        args.checkpoint,
        args.output,
        use_ema=not args.no_ema,
        model_config=args.model_config,
        lora_alpha=args.lora_alpha,
        base=args.base,
        dtype=DTYPES[args.dtype] if args.dtype else None,
    )
    weights = "EMA" if result.used_ema else "model (no EMA)" if not args.no_ema else "model"
    print(f"step {result.step}, {weights} weights -> {result.release_dir or result.transformer_dir}")
    return 0
