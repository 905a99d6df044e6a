"""Which caption words a trained model reads: swap one attribute word and measure how much the prediction moves.

    python lab/scripts/text_sensitivity.py --model runs/small/release            # a clip caption (5 latent frames)
    python lab/scripts/text_sensitivity.py --model runs/small/release --image    # an image caption (1 frame)

For each attribute (colour, shape, size, background; direction and speed for clips) the caption is re-encoded with
that one word swapped (red -> blue, square -> circle, ...), and the transformer's velocity on the same noisy inputs
(random latents noised to t) is compared with the original caption's: the RMS difference, per noise level t. The
`prompt` row is the difference between the caption and no caption (all text masked), the whole conditioning. A word
whose row is near 0 at every t is not read: the model cannot follow it, whatever the sampler does. (Measured on
the small model at 16,300 steps: colour 0.59 and background 0.92 at t = 0.9, direction 0.007 and speed 0.004.)
"""

from __future__ import annotations

import argparse

import torch

CLIP = "A large red square moves to the left slowly on a gray background."
IMAGE = "A simple picture: a large red square over a plain gray background."
SWAPS = {
    "colour": ("red", "blue"),
    "shape": ("square", "circle"),
    "size": ("large", "small"),
    "background": ("gray", "black"),
    "direction": ("left", "right"),
    "speed": ("slowly", "quickly"),
}


def sensitivity(pipe, caption: str, frames: int, ts: tuple[float, ...], samples: int = 8, seed: int = 0) -> dict:
    """{row: {t: RMS velocity difference}}; rows = "prompt" and every SWAPS attribute whose word is in `caption`."""
    from motif_video.core.encoders import encode_text
    from motif_video.core.flow import to_model_timestep

    rows = {name: caption.replace(a, b) for name, (a, b) in SWAPS.items() if f" {a} " in f" {caption[:-1]} "}
    device, dtype = pipe.device, pipe.transformer.dtype
    embeds, mask = encode_text(pipe.tokenizer, pipe.text_encoder, [caption, *rows.values()], 512, device, dtype)
    g = torch.Generator().manual_seed(seed)
    size = (pipe.defaults.height // 8, pipe.defaults.width // 8)  # the VAE's 8x
    shape = (samples, pipe.transformer.config.out_channels, frames, *size)
    x0, noise = torch.randn(shape, generator=g) * 0.5, torch.randn(shape, generator=g)
    extra = torch.zeros(samples, pipe.transformer.config.in_channels - shape[1], *shape[2:])
    table: dict[str, dict[float, float]] = {"prompt": {}, **{name: {} for name in rows}}
    for t in ts:
        x = torch.cat([(1 - t) * x0 + t * noise, extra], 1).to(device, dtype)
        step = torch.full((samples,), to_model_timestep(t), device=device)

        def velocity(i: int, use_text: bool = True, x: torch.Tensor = x, step: torch.Tensor = step) -> torch.Tensor:
            keep = mask[i : i + 1] if use_text else torch.zeros_like(mask[i : i + 1])
            with torch.no_grad():
                return pipe.transformer(
                    hidden_states=x,
                    timestep=step,
                    encoder_hidden_states=embeds[i : i + 1].expand(samples, -1, -1),
                    encoder_attention_mask=keep.expand(samples, -1),
                ).sample.float()

        base = velocity(0)
        table["prompt"][t] = (base - velocity(0, use_text=False)).pow(2).mean().sqrt().item()
        for i, name in enumerate(rows, start=1):
            table[name][t] = (velocity(i) - base).pow(2).mean().sqrt().item()
    return table


def format_table(table: dict, caption: str) -> str:
    ts = list(next(iter(table.values())))
    lines = [
        f"Caption: {caption!r}",
        "",
        "| swapped | " + " | ".join(f"t = {t:g}" for t in ts) + " |",
        "|---|" + "---:|" * len(ts),
    ]
    for name, values in table.items():
        label = "prompt (vs none)" if name == "prompt" else f"{name} ({' -> '.join(SWAPS[name])})"
        lines.append(f"| {label} | " + " | ".join(f"{values[t]:.3f}" for t in ts) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="release folder or hub id")
    parser.add_argument("--image", action="store_true", help="an image caption and one latent frame")
    parser.add_argument("--caption", help=f"the caption to probe (default {CLIP!r}, or an image one)")
    parser.add_argument("--t", type=float, nargs="+", default=[0.9, 0.6, 0.3], help="noise levels")
    parser.add_argument("--samples", type=int, default=8)
    args = parser.parse_args(argv)
    from motif_video import MotifVideoPipeline

    pipe = MotifVideoPipeline.from_pretrained(args.model)
    caption = args.caption or (IMAGE if args.image else CLIP)
    frames = 1 if args.image else (pipe.defaults.num_frames - 1) // 4 + 1
    print(format_table(sensitivity(pipe, caption, frames, tuple(args.t), args.samples), caption))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
