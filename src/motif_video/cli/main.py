"""`motif-video` command line. Thin: parse arguments, build a config, call one library function."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path
from typing import Any

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
    prompts = list(args.prompts or [])
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

    settings = _settings_from_args(GenerateSettings, args, prompts=_read_prompts(args))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for path in generate(settings):
        print(path)
    return 0


def _add_generate(sub: argparse._SubParsersAction) -> None:
    from motif_video.cli.generate import OFFICIAL_MODEL, GenerateSettings

    gen = sub.add_parser(
        "generate",
        help="generate videos from text (or an image and text) and write them as mp4",
        description="Text-to-video, or image-to-video with --image. Unset sizes, frames, steps and fps come from "
        "the model (official: 1280x736, 121 frames, 50 steps, 24 fps). Each video is written with a JSON "
        "of the resolved settings beside it. Without --model it uses the small model shipped in the package "
        f"(offline, 64x64) when the package has one, else {OFFICIAL_MODEL}.",
    )
    gen.add_argument("--prompt-file", help="file with one prompt per line (blank lines and # comments skipped)")
    _add_settings_flags(gen, GenerateSettings, {})
    gen.set_defaults(func=_generate)


# A settings dataclass field becomes a flag when its metadata has "help" (`pipeline.settings.option`): named
# --field-name (or metadata "flag"), typed and defaulted by the field; bools are switches, lists repeat, metadata
# "choices" and "group" (mutually exclusive) pass to argparse; a nested settings dataclass adds its own flags.
def _add_settings_flags(parser: argparse.ArgumentParser, cls: type, groups: dict[str, Any]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            _add_settings_flags(parser, hints[f.name], groups)
            continue
        if "help" not in f.metadata:
            continue
        meta = f.metadata
        kind = _flag_type(hints[f.name])
        kwargs: dict[str, Any] = dict(dest=f.name, help=meta["help"])
        if kind is bool:
            kwargs["action"] = "store_true"
        elif kind is list:
            kwargs["action"] = "append"
        else:
            kwargs.update(type=kind, default=f.default)
        flag = meta.get("flag", "--" + f.name.replace("_", "-"))
        if kind is not bool and "choices" not in meta:
            kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
        if "choices" in meta:
            kwargs["choices"] = list(meta["choices"])
        target = parser
        if "group" in meta:
            if meta["group"] not in groups:
                groups[meta["group"]] = parser.add_mutually_exclusive_group()
            target = groups[meta["group"]]
        target.add_argument(flag, **kwargs)


def _flag_type(hint: Any) -> type:
    """`int | None` -> int, `list[str]` -> list, `bool` -> bool."""
    if typing.get_origin(hint) is list:
        return list
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def _settings_from_args(cls: type, args: argparse.Namespace, **given: Any) -> Any:
    """The dataclass `cls` from the flags `_add_settings_flags` made; `given` fields are taken as they are."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in given:
            values[f.name] = given[f.name]
        elif dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = _settings_from_args(hints[f.name], args)
        elif "help" in f.metadata:
            values[f.name] = getattr(args, f.name)
    return cls(**values)


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
    from motif_video.cli.prepare import add_prepare_parser

    add_prepare_parser(sub)
    from motif_video.cli.plan import add_plan_parser

    add_plan_parser(sub)
    from motif_video.cli.export import add_export_parser

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
