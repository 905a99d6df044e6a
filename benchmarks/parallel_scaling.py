"""Parallel generation on paper: per rank per guided denoising step, compute and communication of each layout.

Analytic, nothing is run or measured. For 2, 4 and 8 GPUs and each video size, one guided step (cond + uncond)
of Motif-Video 2B under these layouts (`core/context_parallel.py`, `pipeline/guidance_parallel.py`):

- `ulysses P`: context parallelism, Ulysses over all P ranks (P must divide the 12 heads), batch [cond; uncond];
- `ring P`: ring attention over all P ranks (any P), batch [cond; uncond];
- `U x R`: the default split where Ulysses alone cannot cover P (U = gcd(12, P), ring over R);
- `cfg 2 x cp P/2`: guidance parallelism (cond on one half of the ranks, uncond on the other), each half a
  context group of P/2 ranks with its default split (at P = 2: guidance alone).

Compute per rank is `training/flops.py`'s matmul count: the video-token work divided by the context degree, the
context stream (text, image tokens, timestep) replicated on every rank. Communication per rank per forward
(elements; B = batch of the forward, N video tokens, D hidden, Lc context tokens, P = U x R; S = N in the 28
encoder blocks, S = 2N in the 8 DDT decoder blocks):

  Ulysses all-to-alls (in: q, k, v; out: o)      4 B S D (U - 1) / (P U)   per joint attention, bf16
  ring K/V passes (R - 1 of S/R tokens, D/U)     2 B S D (R - 1) / P       per joint attention, bf16
  context output, R = 1 (all-gather over heads)   B Lc D (P - 1) / P        per encoder block, bf16
  context output, R > 1 (partials + LSE, fp32)   B Lc (D/U)(1 + 1/Dh)(P - 1) per encoder block, fp32
  head all-gather of the decoder tokens          B N D (P - 1) / P         once, bf16
  guidance all-gather of the velocity            16 F' H/8 W/8             once per step, bf16

Times are bytes / link bandwidth (NVLink 4: 450 GB/s per direction; PCIe 4 x16: 25 GB/s), with no overlap;
the ring's transfers are issued before each block's compute and can hide behind it, the all-to-alls cannot.
Compute time assumes an H200 at 989 TFLOP/s dense bf16 and 40% MFU.

    python benchmarks/parallel_scaling.py [--text-len 256] [--image-len 0] [--mfu 0.4]
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from motif_video import get_preset
from motif_video.core.cp_mesh import split_degree
from motif_video.models.config import MotifVideoConfig
from motif_video.training.flops import PEAK_BF16_FLOPS, forward_flops

VIDEOS = ((832, 480, 49), (848, 480, 121), (1280, 736, 121))  # (width, height, frames)
GPUS = (2, 4, 8)
NVLINK, PCIE = 450e9, 25e9  # bytes/s per direction
BF16, FP32 = 2, 4


@dataclass(frozen=True)
class Layout:
    name: str
    batch: int  # rows in each forward
    cp: int  # context-parallel degree
    ulysses: int
    ring: int
    guidance: bool


def layouts(heads: int, gpus: int) -> list[Layout]:
    out = []
    if heads % gpus == 0:
        out.append(Layout(f"ulysses {gpus}", 2, gpus, gpus, 1, False))
    out.append(Layout(f"ring {gpus}", 2, gpus, 1, gpus, False))
    u, r = split_degree(heads, gpus)
    if u > 1 and r > 1:
        out.append(Layout(f"{u} x {r}", 2, gpus, u, r, False))
    half = gpus // 2
    u, r = split_degree(heads, half)
    inner = "" if half == 1 else f" x cp {half}" + ("" if r == 1 else f" ({u} x {r})")
    out.append(Layout(f"cfg 2{inner}", 1, half, u, r, True))
    return out


def grid(width: int, height: int, frames: int, config: MotifVideoConfig) -> tuple[int, int, int, int]:
    """(latent frames, latent height, latent width, video tokens N)."""
    f, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    p = config.patch_size
    return f, h, w, (f // config.patch_size_t) * (h // p) * (w // p)


def flops_per_rank(config: MotifVideoConfig, lay: Layout, f: int, h: int, w: int, text: int, image: int) -> float:
    """Matmul FLOPs of one rank's forward: video-token work / cp, the context stream replicated."""
    kw = dict(batch=lay.batch, latent_frames=f, latent_height=h, text_len=text, image_len=image)
    full = forward_flops(config, latent_width=w, **kw)
    double = forward_flops(config, latent_width=2 * w, **kw)  # twice the video tokens, same context
    replicated = 2 * full.linear - double.linear  # the linear part's constant term: context stream, timestep
    return replicated + (full.linear - replicated + full.attention) / lay.cp


def bytes_per_rank(config: MotifVideoConfig, lay: Layout, n: int, lc: int, velocity: int) -> float:
    b, p, u, r, d = lay.batch, lay.cp, lay.ulysses, lay.ring, config.hidden_size
    dh = config.attention_head_dim
    sent = 0.0
    if p > 1:
        blocks = ((config.num_encoder_blocks, n), (config.num_decoder_layers, 2 * n))
        for count, s in blocks:
            sent += count * BF16 * 4 * b * s * d * (u - 1) / (p * u)  # Ulysses all-to-alls
            sent += count * BF16 * 2 * b * s * d * (r - 1) / p  # ring passes
        if r == 1:
            sent += config.num_encoder_blocks * BF16 * b * lc * d * (p - 1) / p
        else:
            sent += config.num_encoder_blocks * FP32 * b * lc * (d / u) * (1 + 1 / dh) * (p - 1)
        sent += BF16 * b * n * d * (p - 1) / p  # head
    if lay.guidance:
        sent += BF16 * velocity
    return sent


def table(text: int, image: int, mfu: float) -> str:
    config = get_preset("motif-video-2b")
    peak = PEAK_BF16_FLOPS["H200"] * mfu
    rows = [
        f"Analytic, per rank per guided denoising step (cond + uncond), Motif-Video 2B, text {text} + image "
        f"{image} context tokens; compute at {PEAK_BF16_FLOPS['H200'] / 1e12:.0f} TFLOP/s x {mfu:.0%} MFU (H200 "
        "bf16, assumed); links: NVLink 4 450 GB/s, PCIe 4 x16 25 GB/s per direction, no overlap",
        "",
        "| Video | N | GPUs | Layout | TFLOP | compute | GB sent | NVLink | PCIe |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for width, height, frames in VIDEOS:
        f, h, w, n = grid(width, height, frames, config)
        one = flops_per_rank(config, Layout("1", 2, 1, 1, 1, False), f, h, w, text, image)
        rows.append(
            f"| {width}x{height}x{frames} | {n:,} | 1 | - | {one / 1e12:.0f} | {one / peak * 1e3:,.0f} ms | 0 | - | - |"
        )
        for gpus in GPUS:
            for lay in layouts(config.num_attention_heads, gpus):
                fl = flops_per_rank(config, lay, f, h, w, text, image)
                sent = bytes_per_rank(config, lay, n, text + image, 16 * f * h * w)
                rows.append(
                    f"| {width}x{height}x{frames} | {n:,} | {gpus} | {lay.name} | {fl / 1e12:.0f} | "
                    f"{fl / peak * 1e3:,.0f} ms | {sent / 1e9:.2f} | {sent / NVLINK * 1e3:,.0f} ms | "
                    f"{sent / PCIE * 1e3:,.0f} ms |"
                )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-len", type=int, default=256, help="text tokens after padding trimming")
    parser.add_argument("--image-len", type=int, default=0, help="SigLIP image tokens (I2V)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOPs utilisation")
    args = parser.parse_args()
    if args.text_len < 1 or args.image_len < 0 or not 0 < args.mfu <= 1 or math.isnan(args.mfu):
        parser.error("need --text-len >= 1, --image-len >= 0 and 0 < --mfu <= 1")
    print(table(args.text_len, args.image_len, args.mfu))


if __name__ == "__main__":
    main()
