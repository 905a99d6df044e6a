"""From which noise level can a trained model still finish a real clip? Where generation goes wrong, by t.

    python lab/scripts/completion_by_noise.py --model runs/small/release --shards runs/small/shards/videos
    python lab/scripts/completion_by_noise.py --model runs/small/release --shards runs/small/shards/images --objects 2

Each prepared clip (its clean latents, its own caption) is noised to t0 (x = (1 - t0) x0 + t0 eps, eps drawn as the
release samples: with its frame correlation) and the pipeline samples from there with the release's schedule cut
at t0 (T2V, the release's guidance). The result is scored against the clip's own scene, as `motif-video-lab eval`
scores a prompt. t0 = 1 is plain generation; a small t0 only finishes details the noisy input still shows.
The table gives, per t0, the attributes correct and each attribute's accuracy. The t0 where a row rises is where
the model stops needing to decide that attribute itself: e.g. the small model at 16,300 steps completes
two-object still images to 90% from t0 = 0.5 but only 40% from t0 = 0.8, so it fails to lay out two objects
from noise, not to draw them.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

T0S = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.3)


def complete(pipe, clips, t0: float, seed: int = 0, batch_size: int = 8) -> list:
    """Score each clip's completion from t0 (clip i's noise from seed + i); VideoScores in clip order."""
    from motif_video.core.flow import flow_sigmas
    from motif_video.core.latent_space import initial_noise
    from motif_video_lab.procedural.evaluate import score_video
    from motif_video_lab.procedural.scene import SceneSpec

    defaults = pipe.defaults
    schedule = flow_sigmas(defaults.num_inference_steps, defaults.shift_t2v)
    sigmas = [t0] + [float(s) for s in schedule if s < t0 - 1e-6]
    starts = []
    for index, clip in enumerate(clips):
        x0 = clip.tensors["latents"].float()[None]
        correlation = defaults.noise_correlation if x0.shape[2] > 1 else 0.0
        eps = initial_noise(tuple(x0.shape), torch.Generator().manual_seed(seed + index), torch.device("cpu"),
                            correlation)  # fmt: skip
        starts.append((1 - t0) * x0 + t0 * eps)
    scores: dict[int, object] = {}
    buckets: dict[tuple, list[int]] = {}
    for index, clip in enumerate(clips):  # one pipeline call per size and batch
        buckets.setdefault(tuple(clip.meta.bucket), []).append(index)
    for (frames, height, width), members in buckets.items():
        for first in range(0, len(members), batch_size):
            chunk = members[first : first + batch_size]
            videos = pipe(
                prompt=[clips[i].meta.caption for i in chunk],
                height=height,
                width=width,
                num_frames=frames,
                sigmas=sigmas,
                latents=torch.cat([starts[i] for i in chunk]),
                output_type="np",
            ).frames
            for i, video in zip(chunk, videos):
                spec = SceneSpec.from_dict(clips[i].meta.extra["manifest"]["scene"])
                scores[i] = score_video(np.asarray(video), spec)
    return [scores[i] for i in range(len(clips))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="release folder")
    parser.add_argument("--shards", required=True, help="prepared shards of procedural clips (videos or images)")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--objects", type=int, choices=(1, 2), help="only clips with this many objects")
    parser.add_argument("--t0", type=float, nargs="+", default=list(T0S))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if any(not 0 < t <= 1 for t in args.t0):
        parser.error(f"--t0 values must lie in (0, 1], got {args.t0}")
    from motif_video import MotifVideoPipeline
    from motif_video.core.shard_reader import first_samples
    from motif_video_lab.procedural.evaluate import ATTRIBUTES, score_prompts

    clips = [c for c in first_samples(args.shards, 50 * args.clips) if "scene" in c.meta.extra.get("manifest", {})]
    if args.objects:
        clips = [c for c in clips if len(c.meta.extra["manifest"]["scene"]["objects"]) == args.objects]
    clips = clips[: args.clips]
    if not clips:
        parser.error(f"{args.shards} holds no procedural clips (with {args.objects} objects)")
    pipe = MotifVideoPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    tables = {t0: score_prompts(complete(pipe, clips, t0, args.seed)) for t0 in sorted(args.t0, reverse=True)}
    shown = [a for a in ATTRIBUTES if any(a in t.counts for t in tables.values())]
    print("| t0 | attributes correct | " + " | ".join(shown) + " |")
    print("|---:|---:|" + "---:|" * len(shown))
    for t0, table in tables.items():
        cells = " | ".join("-" if a not in table.counts else f"{100 * table.accuracy(a):.0f}%" for a in shown)
        print(f"| {t0:g} | {100 * table.overall:.1f}% | {cells} |")
    print(f"\n{len(clips)} clips of {args.shards}, their own captions; the release's steps, shift and guidance.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
