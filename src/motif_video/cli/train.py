"""`motif-video train`: run a recipe (a TOML/JSON file or a preset) in one process or under torchrun.

Thin: parse, check the recipe, its files and the run folder (`training.preflight`: a refused command writes
nothing), set up the process group from torchrun's environment, hold the run folder (`core.run_folder.run_lock`: a
second `train` on it is refused, naming the first's PID), remove temporaries of killed writes, run
`run.run_recipe` with a `MetricsWriter`, export the final EMA weights to `<output>/final/transformer/`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from motif_video.core.devices import check_device
from motif_video.env import torchrun_env


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    cmd = subparsers.add_parser(
        "train",
        help="train or fine-tune with a curriculum recipe (flow matching, TREAD, REPA, FSDP2 under torchrun)",
        description="Run the stages of a recipe file (TOML or JSON) or a preset. Rerunning the same command "
        "resumes from the last complete checkpoint. Under torchrun every process trains one FSDP2 shard.",
    )
    source = cmd.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="recipe file (.toml or .json)")
    source.add_argument("--preset", help="recipe preset: cpu-tiny (a one-minute CPU run) or motif-video-2b")
    cmd.add_argument("--output", help="run folder: checkpoints, metrics, final/transformer (required to train)")
    cmd.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto; torchrun: cuda:LOCAL_RANK)")
    cmd.add_argument("--no-resume", action="store_true", help="refuse to continue an existing run folder")
    cmd.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard event files")
    cmd.add_argument("--wandb", metavar="PROJECT", help="also log to this Weights & Biases project (needs wandb)")
    cmd.add_argument("--no-export", action="store_true", help="skip writing final/transformer at the end")
    cmd.add_argument("--print-config", action="store_true", help="print the resolved recipe as JSON and exit")
    cmd.set_defaults(func=run_train_command)
    return cmd


def run_train_command(args: argparse.Namespace) -> int:
    from motif_video.atomic import remove_stale
    from motif_video.core.run_folder import run_lock
    from motif_video.core.shard_reader import ShardReadError
    from motif_video.training.preflight import check_recipe
    from motif_video.training.recipe import get_recipe_preset, load_recipe

    recipe = load_recipe(args.config) if args.config else get_recipe_preset(args.preset)
    if args.print_config:
        print(json.dumps(recipe.to_dict(), indent=2))
        return 0
    if not args.output:
        raise ValueError("--output is required: the run folder for checkpoints, metrics and the final model")
    output = Path(args.output)
    if args.device != "auto":
        check_device(args.device)
    if args.no_resume and (output / "recipe.json").exists():
        raise ValueError(f"{output} already holds a run and --no-resume was given: choose a new --output")
    check_recipe(recipe, output, resume=not args.no_resume)  # every file it names and the folder: nothing written yet
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = _setup_distributed(args.device)
    rank = dist.get_rank() if dist.is_initialized() else 0
    try:
        with run_lock(output) if rank == 0 else contextlib.nullcontext():
            if rank == 0:
                remove_stale(output, recursive=True)  # temporaries of writes a kill interrupted
            try:
                return _train(recipe, output, device, args)
            except BaseException:  # Ctrl-C, SIGTERM, an error: no half-written checkpoint is left behind
                if rank == 0:
                    from motif_video.training.checkpoint import remove_partial

                    remove_partial(output)
                raise
    except ShardReadError as err:
        raise ValueError(str(err)) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _train(recipe, output: Path, device: str, args: argparse.Namespace) -> int:
    from motif_video.training.metrics import MetricsWriter
    from motif_video.training.run import final_checkpoint, resume_step, run_recipe

    rank = dist.get_rank() if dist.is_initialized() else 0
    start = resume_step(recipe, output) if (output / "recipe.json").exists() else None
    wandb_init = {"project": args.wandb or recipe.wandb, "config": recipe.to_dict(), "name": output.name}
    with MetricsWriter(
        output,
        resume_step=start,
        tensorboard=recipe.tensorboard and not args.no_tensorboard,
        wandb=bool(args.wandb or recipe.wandb),
        wandb_init=wandb_init,
    ) as writer:
        run_recipe(recipe, output, device=device, on_log=writer.log)
    final = final_checkpoint(recipe, output)
    if rank == 0 and final is not None and not args.no_export:
        from motif_video.training.export import export_transformer

        result = export_transformer(final, output / "final" / "transformer", use_ema=recipe.ema_decay is not None)
        print(f"final model ({'EMA' if result.used_ema else 'raw'} weights): {result.transformer_dir}")
    return 0


def _setup_distributed(device: str) -> str:
    rank, world_size, local_rank = torchrun_env()
    if world_size > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available() and device != "cpu"
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo")
        if device == "auto":
            device = f"cuda:{local_rank}" if cuda else "cpu"
    return device
