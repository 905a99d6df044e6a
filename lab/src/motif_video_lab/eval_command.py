"""`motif-video-lab eval`: generate the fixed procedural prompt sets and print the prompt-following table.

Thin: arguments -> `EvalSettings` -> `run_eval` (evaluation.py). Exit 0, or 1 when `--min-accuracy` is given and
a held-out table's attribute accuracy is below it (the release gate of issue 5: at least 0.9).
"""

from __future__ import annotations

import argparse
import logging
import sys

from motif_video_lab.evaluation import (
    RESULTS_NAME,
    SPLITS,
    TABLE_NAME,
    EvalSettings,
    format_report,
    heldout_failures,
    run_eval,
)


def add_eval_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `eval` to a CLI's subparsers; it runs `run_eval_command`."""
    cmd = subparsers.add_parser(
        "eval",
        help="measure prompt following on procedural prompts (held-out attribute combinations) and print a table",
        description="Generate a fixed set of procedural prompts (shapes, colours, motion; 'heldout' prompts combine "
        "attributes never paired in training) and score every video from its pixels. Prints a markdown table: "
        "rows = attributes, columns = split x mode.",
    )
    cmd.add_argument("--model", help="release folder or hub id (default: the shipped small model)")
    cmd.add_argument("--split", choices=[*SPLITS, "both"], default="both", help="prompt set(s) (default both)")
    cmd.add_argument(
        "--mode",
        choices=["t2v", "i2v", "t2i", "both"],
        default="t2v",
        help="t2v; i2v from the scene's first frame; t2i still images (a spatial diagnostic); both = t2v and i2v",
    )
    cmd.add_argument("--num-prompts", type=int, default=48, help="prompts per split (default 48)")
    cmd.add_argument("--steps", type=int, help="denoising steps (default: the model's)")
    cmd.add_argument("--guidance-scale", type=float, help="guidance strength (default: the model's)")
    cmd.add_argument(
        "--guidance-stop", type=float, help="fraction of the steps guided, the noisiest first (default: the model's)"
    )
    cmd.add_argument("--shift", type=float, help="static sigma shift (default: the model's, per mode)")
    cmd.add_argument(
        "--noise-correlation", type=float, help="between latent frames of the starting noise (default: the model's)"
    )
    cmd.add_argument(
        "--prompt-seed",
        type=int,
        default=0,
        help="which fixed prompt set (default 0, the release gate's); another one re-checks a result on new prompts",
    )
    cmd.add_argument("--seed", type=int, default=0, help="video i of a split uses seed + i (default 0)")
    cmd.add_argument("--batch-size", type=int, default=8, help="prompts per pipeline call (default 8)")
    cmd.add_argument("--height", type=int, help="pixels, multiple of 16 (default: the model's)")
    cmd.add_argument("--width", type=int, help="pixels, multiple of 16 (default: the model's)")
    cmd.add_argument("--num-frames", type=int, help="frames, 4k+1 (default: the model's)")
    cmd.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default auto: cuda if available)")
    cmd.add_argument("--dtype", default="auto", help="float32, bfloat16 or float16 (default auto)")
    cmd.add_argument("--output", help=f"folder for <mode>/<key>.mp4, {RESULTS_NAME} and {TABLE_NAME}")
    cmd.add_argument(
        "--min-accuracy", type=float, help="exit 1 if a held-out attribute accuracy is below this fraction (e.g. 0.9)"
    )
    cmd.set_defaults(func=run_eval_command)
    return cmd


def run_eval_command(args: argparse.Namespace) -> int:
    if args.min_accuracy is not None:
        if not 0.0 <= args.min_accuracy <= 1.0:
            raise ValueError(f"--min-accuracy is a fraction in [0, 1] (0.9 = 90%), got {args.min_accuracy}")
        if args.split == "train":
            raise ValueError("--min-accuracy gates the held-out split: use --split heldout or both")
    if args.model is None:
        from motif_video.core.release import small_model_dir

        args.model = str(small_model_dir())
    settings = EvalSettings(
        model=args.model,
        splits=SPLITS if args.split == "both" else (args.split,),
        num_prompts=args.num_prompts,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        guidance_stop=args.guidance_stop,
        shift=args.shift,
        noise_correlation=args.noise_correlation,
        seed=args.seed,
        prompt_seed=args.prompt_seed,
        mode=args.mode,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        output=args.output,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run_eval(settings)
    print(format_report(report))
    if args.output:
        print(f"\nwrote {args.output}/{RESULTS_NAME}, {TABLE_NAME} and {len(report.videos)} videos")
    if args.min_accuracy is not None:
        failures = heldout_failures(report, args.min_accuracy)
        for line in failures:
            print(f"motif-video-lab eval: FAILED: {line}", file=sys.stderr)
        if failures:
            return 1
        print(f"passed: held-out attribute accuracy >= {100 * args.min_accuracy:.1f}%")
    return 0
