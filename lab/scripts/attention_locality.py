"""Where the video tokens of a trained transformer look: per block, the attention mass of video queries on keys in
the same latent frame, in other frames, at the same place in other frames, and on non-video keys (text, DDT
context), with a uniform-attention baseline, plus the mean of each query's largest weight.

    python lab/scripts/attention_locality.py --model runs/small/release --shards runs/small/shards/videos --t 0.3

A model whose video-key shares equal the uniform baseline and whose largest weight is about 1 / (keys in a frame)
treats every token of a frame alike: it cannot carry an object from frame to frame or keep a shape together (what
we measured on the small model before the frame-correlated noise prior, and why it was added).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

import motif_video.models.attention as attention_entry
from motif_video import MotifVideoTransformer
from motif_video.core.flow import to_model_timestep
from motif_video.core.shard_reader import first_samples


@contextmanager
def observe_attention(callback: Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], None]) -> Iterator[None]:
    """Inside the block, call `callback(q, k, key_mask)` before every attention call of the model (results are
    unchanged). The model keeps no observers: this swaps the one attention entry point, `models.attention.attention`,
    in every model module that imported it, and puts it back on exit."""
    original = attention_entry.attention

    def observed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None):
        callback(q, k, key_mask)
        return original(q, k, v, key_mask)

    users = [m for name, m in list(sys.modules.items())
             if name.startswith("motif_video.models.") and getattr(m, "attention", None) is original]  # fmt: skip
    for module in users:
        module.attention = observed
    try:
        yield
    finally:
        for module in users:
            module.attention = original


def token_masks(grid: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, N) bools for N = F*H*W video tokens (t-h-w order): same frame; same (h, w) place in another frame."""
    f, h, w = grid
    frame = torch.arange(f).repeat_interleave(h * w)
    place = torch.arange(h * w).repeat(f)
    same_frame = frame[:, None] == frame[None, :]
    return same_frame, (place[:, None] == place[None, :]) & ~same_frame


def shares(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None, n: int, masks) -> dict[str, float]:
    """Attention of the first n (video) queries: mass per key group and the mean largest weight."""
    logits = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask.bool()[:, None, None, :], float("-inf"))
    weights = logits.softmax(-1)[:, :, :n]  # (B, H, n, Lk)
    video = weights[..., :n]
    same_frame, same_place = masks
    return {
        "same frame": float((video * same_frame).sum(-1).mean()),
        "other frames": float((video * ~same_frame).sum(-1).mean()),
        "same place, other frame": float((video * same_place).sum(-1).mean()),
        "non-video": float(weights[..., n:].sum(-1).mean()),
        "largest weight": float(weights.max(-1).values.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a release folder (with transformer/) or a transformer folder")
    parser.add_argument("--shards", required=True, help="prepared video shards (motif-video prepare output)")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--t", type=float, default=0.3, help="noise level of the inputs (1 = pure noise)")
    args = parser.parse_args()
    folder = Path(args.model)
    model = MotifVideoTransformer.from_pretrained(str(folder / "transformer" if (folder / "transformer").is_dir()
                                                      else folder)).eval()  # fmt: skip
    clips = first_samples(args.shards, args.clips)
    x0 = torch.stack([c.tensors["latents"].float() for c in clips])
    text = torch.nn.utils.rnn.pad_sequence([c.tensors["text"].float() for c in clips], batch_first=True)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(c.tensors["text"]), dtype=torch.bool) for c in clips],
                                           batch_first=True)  # fmt: skip
    c = model.config
    b, _, f, h, w = x0.shape
    grid = (f // c.patch_size_t, h // c.patch_size, w // c.patch_size)
    n = grid[0] * grid[1] * grid[2]
    masks = token_masks(grid)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    xt = (1 - args.t) * x0 + args.t * eps
    rows: list[dict[str, float]] = []

    def record(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor | None) -> None:
        if q.shape[2] == k.shape[2] > n:  # joint self-attention over video + other tokens (not text-only cross)
            rows.append({"keys": k.shape[2], **shares(q, k, key_mask, n, masks)})

    cond = xt.new_zeros(b, c.in_channels - xt.shape[1], f, h, w)
    with torch.no_grad(), observe_attention(record):
        model(hidden_states=torch.cat([xt, cond], 1), timestep=to_model_timestep(torch.full((b,), args.t)),
              encoder_hidden_states=text, encoder_attention_mask=mask)  # fmt: skip
    per_frame = grid[1] * grid[2]
    print(f"{b} clips at t = {args.t}; {n} video tokens on a {grid} grid")
    print("| block | keys | same frame | other frames | same place, other frame | non-video | largest weight |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for i, row in enumerate(rows):
        print(f"| {i} | {row['keys']:.0f} | " + " | ".join(f"{row[k]:.3f}" for k in list(row)[1:]) + " |")
    keys = rows[0]["keys"] if rows else n
    print(f"| uniform | {keys:.0f} | {per_frame / keys:.3f} | {(n - per_frame) / keys:.3f} | "
          f"{(grid[0] - 1) / keys:.3f} | {(keys - n) / keys:.3f} | {1 / keys:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
