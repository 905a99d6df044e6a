"""`motif-video` command line. Thin: parse arguments, build a config, call one library function."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from motif_video.models.checkpoint_io import CheckpointError
from motif_video.models.config import PRESETS


def _forward(args: argparse.Namespace) -> int:
    from motif_video.cli.forward import run_forward

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


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        try:
            lines = Path(args.prompt_file).read_text(encoding="utf-8").splitlines()
        except OSError as err:
            raise ValueError(f"cannot read --prompt-file {args.prompt_file}: {err.strerror or err}") from None
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        if not prompts:
            raise ValueError(f"--prompt-file {args.prompt_file} holds no prompt (one per line; # starts a comment)")
    return prompts


def _generate(args: argparse.Namespace) -> int:
    from motif_video.cli.generate import GenerateSettings, generate

    settings = GenerateSettings(
        prompts=_read_prompts(args),
        output=args.output,
        model=args.model,
        preset=args.preset,
        image=args.image,
        negative_prompt=args.negative_prompt,
        height=args.height,
        width=args.width,
        num_frames=args.num_frames,
        steps=args.steps,
        seed=args.seed,
        num_videos_per_prompt=args.num_videos_per_prompt,
        guidance_scale=args.guidance_scale,
        guidance=args.guidance,
        apg_eta=args.apg_eta,
        shift=args.shift,
        noise_correlation=args.noise_correlation,
        sampler=args.sampler,
        fps=args.fps,
        offload=args.offload,
        fp8=args.fp8,
        vae_tiling=args.vae_tiling,
        text_encoder_on_cpu=args.text_encoder_cpu,
        dtype=args.dtype,
        device=args.device,
    )
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in generate(settings):
        print(path)
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from motif_video.cli.generate import OFFICIAL_MODEL, OFFLOAD_MODES, SAMPLERS

    gen = sub.add_parser(
        "generate",
        help="generate videos from text (or an image and text) and write them as mp4",
        description="Text-to-video, or image-to-video with --image. Unset sizes, frames, steps and fps come from "
        "the model (official: 1280x736, 121 frames, 50 steps, 24 fps). Each video is written with a JSON "
        "of the resolved settings beside it. Without --model it uses the small model shipped in the package "
        f"(offline, 64x64) when the package has one, else {OFFICIAL_MODEL}.",
    )
    gen.add_argument("--prompt", action="append", help="text prompt; repeat for several prompts")
    gen.add_argument("--prompt-file", help="file with one prompt per line (blank lines and # comments skipped)")
    gen.add_argument("--image", help="first frame for image-to-video (png/jpg); used for every prompt")
    gen.add_argument(
        "--negative-prompt", help="what to steer away from (default: the model's; official: the Motif-Video one)"
    )
    src = gen.add_mutually_exclusive_group()
    src.add_argument(
        "--model", help=f"release folder or hub id (default: the shipped small model if any, else {OFFICIAL_MODEL})"
    )
    src.add_argument("--preset", choices=["tiny"], help="tiny: random tiny components built in memory (no download)")
    gen.add_argument("--height", type=int, help="pixels, multiple of 16 (default: the model's, official 736)")
    gen.add_argument("--width", type=int, help="pixels, multiple of 16 (default: the model's, official 1280)")
    gen.add_argument("--num-frames", type=int, help="frames, of the form 4k+1 (default: the model's, official 121)")
    gen.add_argument("--steps", type=int, help="denoising steps (default: the model's, official 50)")
    gen.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same video (default 0)")
    gen.add_argument("--num-videos-per-prompt", type=int, default=1, help="videos per prompt (default 1)")
    gen.add_argument("--guidance-scale", type=float, help="guidance strength (default: the model's guider, official 8)")
    gen.add_argument("--guidance", choices=["apg", "cfg", "none"], help="guidance method (default: the model's, apg)")
    gen.add_argument("--apg-eta", type=float, help="APG parallel-component weight (default: the model's guider, 1)")
    gen.add_argument(
        "--shift",
        type=float,
        help="static sigma shift (default: the model's; official 15, or 8 with --image)",
    )
    gen.add_argument(
        "--noise-correlation",
        type=float,
        help="correlation in [0, 1] between latent frames of the starting noise (default: the model's; official 0)",
    )
    gen.add_argument("--sampler", choices=SAMPLERS, default="euler", help="flow sampler (default euler)")
    gen.add_argument("--fps", type=int, help="frames per second of the file (default: the model's, official 24)")
    gen.add_argument(
        "--offload",
        default="none",
        help=f"memory mode, one of {', '.join(OFFLOAD_MODES)}: none = all on the GPU; model = one component on the "
        "GPU at a time; block = transformer blocks streamed from CPU (default none)",
    )
    gen.add_argument("--fp8", action="store_true", help="FP8 weight-only transformer (needs torchao)")
    gen.add_argument("--vae-tiling", action="store_true", help="decode the VAE in tiles (lower peak memory)")
    gen.add_argument("--text-encoder-cpu", action="store_true", help="keep the text encoder on the CPU")
    gen.add_argument(
        "--dtype", default="auto", help="float32, bfloat16 or float16 (default auto: bf16 on GPU, fp32 on CPU)"
    )
    gen.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default auto: cuda if available)")
    gen.add_argument(
        "--output", default="video.mp4", help="file (.mp4, .gif, .webm) or folder/ for PNG frames (default video.mp4)"
    )
    gen.set_defaults(func=_generate)


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
    _add_generate(sub)
    from motif_video.data.prepare import add_prepare_parser

    add_prepare_parser(sub)
    from motif_video.cli.plan import add_plan_parser

    add_plan_parser(sub)
    from motif_video.training.export import add_export_parser

    add_export_parser(sub)
    from motif_video.cli.train import add_train_parser

    add_train_parser(sub)
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
