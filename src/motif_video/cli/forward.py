"""A forward pass of the transformer on random inputs: the CLI's `forward` command and a quick check."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from motif_video import bounds, safe_read
from motif_video.core.devices import check_device
from motif_video.models.checkpoint_io import CheckpointError
from motif_video.models.config import PRESETS, MotifVideoConfig, get_preset
from motif_video.models.transformer import MotifVideoTransformer
from motif_video.pipeline.footprint import check_memory

VAE_SPATIAL, VAE_TEMPORAL = 8, 4  # Wan2.1 VAE compression
MAX_TEXT_TOKENS = 8192


def run_forward(
    preset: str = "tiny",
    model: str | None = None,
    height: int = 64,
    width: int = 96,
    num_frames: int = 9,
    text_tokens: int = 16,
    image: bool = False,
    seed: int = 0,
    device: str = "cpu",
    dtype: str = "float32",
) -> str:
    """Build (or load) a transformer, run one forward on random inputs, and describe the result. Every argument, the
    model's config and the memory the size needs are checked first."""
    if bounds.integer("--height", height) < 16 or bounds.integer("--width", width) < 16 or height % 16 or width % 16:
        raise ValueError(f"--height and --width must be positive multiples of 16, got {height}x{width}")
    if bounds.integer("--num-frames", num_frames) < 1 or (num_frames - 1) % VAE_TEMPORAL:
        raise ValueError(f"--num-frames must be of the form 4k+1 (1, 5, 9, ...), got {num_frames}")
    bounds.integer("--text-tokens", text_tokens, 1, MAX_TEXT_TOKENS)
    bounds.seed("--seed", seed)
    check_device(device)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype {dtype!r}: choose float32, bfloat16 or float16")
    torch_dtype = getattr(torch, dtype)
    config = get_preset(preset) if model is None else _stored_config(model)
    if config is not None:
        check_memory(config, height, width, num_frames, 1, guided=False, dtype_bytes=torch_dtype.itemsize,
                     device=device, decode=False)  # fmt: skip
    torch.manual_seed(seed)
    if model is not None:
        net = MotifVideoTransformer.from_pretrained(model, torch_dtype=torch_dtype, device=device)
    else:
        net = MotifVideoTransformer.from_preset(preset).to(device=device, dtype=torch_dtype).eval()
        net.fuse_qkv_projections()
    c = net.config
    g = torch.Generator().manual_seed(seed)
    grid = ((num_frames - 1) // VAE_TEMPORAL + 1, height // VAE_SPATIAL, width // VAE_SPATIAL)
    latents = torch.randn(1, c.in_channels, *grid, generator=g)
    padded = max(text_tokens, 32)
    text = torch.randn(1, padded, c.text_embed_dim, generator=g)
    mask = (torch.arange(padded) < text_tokens).long()[None]
    image_embeds = None
    if image:
        if c.image_embed_dim is None:
            raise ValueError("--image needs a model with an image embedder (image_embed_dim)")
        image_embeds = torch.randn(1, 16, c.image_embed_dim, generator=g).to(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = net(
            latents.to(device),
            torch.tensor([500.0], device=device),
            text.to(device),
            mask.to(device),
            image_embeds=image_embeds,
        ).sample
    seconds = time.perf_counter() - start
    name = model or preset
    return (
        f"model {name}: {net.num_parameters():,} parameters, {c.cross_attention_layout} cross-attention layout\n"
        f"input latents {tuple(latents.shape)} (video {num_frames}x{height}x{width}), "
        f"{text_tokens} text tokens{', 16 image tokens' if image else ''}\n"
        f"output velocity {tuple(out.shape)} {str(out.dtype).removeprefix('torch.')}, "
        f"std {out.float().std().item():.4f}, {seconds * 1000:.1f} ms on {device}"
        + ("\n(a freshly initialised model predicts zero velocity by design: AdaLN-Zero)" if model is None else "")
    )


def _stored_config(model: str) -> MotifVideoConfig | None:
    """A local transformer folder's config.json, checked (types, bounds) before the load; None for a hub id."""
    path = Path(model) / "config.json"
    if not path.is_file():
        return None
    try:
        return MotifVideoConfig.from_dict(safe_read.read_json(path, "config"))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: {err}") from None


def add_forward_parser(sub: argparse._SubParsersAction) -> None:
    """`motif-video forward`: one transformer forward on random inputs."""
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


def _forward(args: argparse.Namespace) -> int:
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
