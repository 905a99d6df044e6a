"""Where a trained transformer loses prompt following: flow loss per timestep on prepared shards, three ways.

    python lab/scripts/diagnose_small_model.py --model runs/small/release --shards runs/small/shards/videos

For each t it prints the flow-matching loss of T2V samples (v = eps - x0, the training target):
  - `full`: every token through every block, as at inference;
  - `tread`: with a TREAD route (the training forward; `--route START END RATIO`);
  - `other text`: full, but each clip gets another clip's caption (how much the text is used);
  - `cross-frame`: the change of the x0 prediction on latent frames 1.. when latent frame 0 of the input is
    replaced by another clip's, relative to the change on frame 0 itself (how much time is modelled: a model that
    treats frames independently gives ~0, one that tracks objects gives a clearly positive share);
  - `later T2V / I2V / I2V other`: the loss on latent frames 1.. only, as T2V, as I2V conditioned on the clip's own
    clean first frame (latent + SigLIP tokens, as the pipeline does), and as I2V on another clip's first frame. The
    first frame fixes every object, so a model that carries it forward has a much lower I2V loss there, and a
    higher one with the wrong frame; equal columns mean the condition is ignored after frame 0.
A model that is good only under `tread` was trained routed and runs unrouted: train a final stage without it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from motif_video import MotifVideoTransformer
from motif_video.core.flow import to_model_timestep
from motif_video.core.latent_space import condition_channels
from motif_video.core.shard_reader import first_samples
from motif_video.models.routing import random_route


@torch.no_grad()
def velocity(model, xt, t, text, route=None, first=None) -> torch.Tensor:
    """The model's v; `first` = (first-frame latent (B, C, 1, h, w), SigLIP tokens or None) makes it I2V."""
    latent, tokens = first if first is not None else (None, None)
    cond = condition_channels(latent, tuple(xt.shape), xt.device, xt.dtype)  # as the pipeline builds them
    kwargs = {"image_embeds": tokens} if tokens is not None and model.image_embedder is not None else {}
    timestep = to_model_timestep(torch.full((xt.shape[0],), t))
    return model(hidden_states=torch.cat([xt, cond], 1), timestep=timestep, encoder_hidden_states=text,
                 route=route, **kwargs).sample  # fmt: skip


def first_frame(clip) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A clip's I2V condition as `motif-video prepare` stored it (else latent frame 0 of the clip)."""
    latent = clip.tensors.get("first_frame", clip.tensors["latents"][:, :1]).float()[None]
    tokens = clip.tensors.get("image_tokens")
    return latent, (None if tokens is None else tokens.float()[None])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="release folder (transformer/ inside) or a transformer folder")
    parser.add_argument("--shards", required=True, help="prepared video shards (motif-video prepare output)")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--route", type=float, nargs=3, default=(1, 6, 0.5), metavar=("START", "END", "RATIO"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    folder = Path(args.model)
    model = MotifVideoTransformer.from_pretrained(str(folder / "transformer" if (folder / "transformer").is_dir()
                                                      else folder)).eval()  # fmt: skip
    clips = first_samples(args.shards, args.clips)
    if len(clips) < 2:
        raise SystemExit(f"need at least 2 clips in {args.shards}, found {len(clips)}")
    start, end, ratio = int(args.route[0]), int(args.route[1]), args.route[2]
    print(f"{len(clips)} clips from {args.shards}; TREAD route blocks [{start}, {end}) at ratio {ratio}")
    print("|    t | full | tread | other text | cross-frame | later T2V | later I2V | later I2V other |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(args.seed)
    for t in (0.1, 0.3, 0.5, 0.7, 0.9, 0.97):
        sums = dict(full=0.0, tread=0.0, other=0.0, later=0.0, first=0.0, t2v=0.0, i2v=0.0, i2v_other=0.0)
        for i, clip in enumerate(clips):
            x0 = clip.tensors["latents"].float()[None]
            text = clip.tensors["text"].float()[None]
            other = clips[(i + 1) % len(clips)]
            eps = torch.randn(x0.shape, generator=g)
            xt = (1 - t) * x0 + t * eps
            target = eps - x0
            v = velocity(model, xt, t, text)
            sums["full"] += (v - target).square().mean().item()
            sums["t2v"] += (v - target)[:, :, 1:].square().mean().item()
            for key, source in (("i2v", clip), ("i2v_other", other)):
                v_i2v = velocity(model, xt, t, text, first=first_frame(source))
                sums[key] += (v_i2v - target)[:, :, 1:].square().mean().item()
            route = random_route(1, model_tokens(model, x0), ratio, start, end, g)
            sums["tread"] += (velocity(model, xt, t, text, route) - target).square().mean().item()
            v_other = velocity(model, xt, t, other.tensors["text"].float()[None])
            sums["other"] += (v_other - target).square().mean().item()
            swapped = xt.clone()
            swapped[:, :, 0] = (1 - t) * other.tensors["latents"].float()[None, :, 0] + t * eps[:, :, 0]
            change = (xt - t * v) - (swapped - t * velocity(model, swapped, t, text))  # x0 predictions
            sums["first"] += change[:, :, :1].abs().mean().item()
            sums["later"] += change[:, :, 1:].abs().mean().item()
        n = len(clips)
        share = sums["later"] / max(sums["first"], 1e-12)
        later = " | ".join(f"{sums[k] / n:.4f}" for k in ("t2v", "i2v", "i2v_other"))
        print(f"| {t:.2f} | {sums['full'] / n:.4f} | {sums['tread'] / n:.4f} | {sums['other'] / n:.4f} | {share:.3f} | "
              f"{later} |")  # fmt: skip
    return 0


def model_tokens(model, x0: torch.Tensor) -> int:
    c = model.config
    return (x0.shape[2] // c.patch_size_t) * (x0.shape[3] // c.patch_size) * (x0.shape[4] // c.patch_size)


if __name__ == "__main__":
    raise SystemExit(main())
