"""Overfit the small transformer on a handful of training clips, then sample their own captions and score them.

    python lab/scripts/overfit_small_model.py --work runs/overfit --clips 16 --steps 1500

A model that cannot reproduce clips it has memorised has a conditioning or architecture problem, not a budget
problem. Reads the clips and components of a reproduction (`lab/scripts/train_small_model.py --work runs/small`):
`<small>/data/videos/manifest.jsonl` and `<small>/release`. Prepares the first `--clips` videos with their long
captions only, trains one stage (full batch, no prompt dropout, T2V only; `--tread` adds the small recipe's route),
exports the raw weights into a copy of the release, samples every caption without guidance and prints the
evaluator's table; `<work>/frames.png` shows frames 0, 4, 8, 12, 16 of the first six videos.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from motif_video import MotifVideoPipeline
from motif_video.data.manifest import CaptionProbs, read_manifest
from motif_video.data.prepare import prepare
from motif_video.training.export import export_transformer
from motif_video.training.objective import ObjectiveConfig
from motif_video.training.parallel import ParallelConfig
from motif_video.training.recipe import ModelSource, Recipe, Source, Stage
from motif_video.training.run import final_checkpoint, run_recipe
from motif_video.training.trainer import RouteConfig
from motif_video_lab.procedural.evaluate import format_table, score_prompts, score_video
from motif_video_lab.small_model.components import finish_release


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/overfit")
    parser.add_argument("--small", default="runs/small", help="a reproduction's work folder (data and release)")
    parser.add_argument("--clips", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--tread", action="store_true", help="train with the small recipe's TREAD route")
    parser.add_argument("--shift", type=float, default=2.0, help="sampling shift")
    args = parser.parse_args()
    work, small = Path(args.work), Path(args.small)
    manifest = small / "data" / "videos" / "manifest.jsonl"
    if not manifest.is_file() or not (small / "release" / "vae").is_dir():
        raise SystemExit(f"{small} holds no reproduction: run scripts/train_small_model.py --work {small} first")
    work.mkdir(parents=True, exist_ok=True)
    lines = manifest.read_text().splitlines()[: args.clips]
    media = str(manifest.parent.resolve()) + "/"
    (work / "clips.jsonl").write_text("\n".join(line.replace('"media/', f'"{media}media/') for line in lines) + "\n")
    prepare(work / "clips.jsonl", small / "release", work / "shards", "17x64x64", samples_per_shard=args.clips,
            dtype="float32", image_tokens=True, device="auto", caption_probs=CaptionProbs(1.0, 0.0, 0.0))  # fmt: skip
    stage = Stage("overfit", args.steps, {"video": Source(str(work / "shards"), batch_size=args.clips)}, lr=args.lr,
                  warmup_steps=50, route=RouteConfig(1, 6, 0.5) if args.tread else None,
                  objective=ObjectiveConfig(i2v_ratio=0.0, prompt_dropout=0.0))  # fmt: skip
    recipe = Recipe(ModelSource(preset="motif-video-small"), (stage,), log_every=100, checkpoint_every=500,
                    ema_decay=None, parallel=ParallelConfig(param_dtype="float32"), tensorboard=False)  # fmt: skip
    for row in run_recipe(recipe, work / "run"):
        print(f"step {row['step']}  loss {row['loss']:.4f}", flush=True)
    export_transformer(final_checkpoint(recipe, work / "run"), work / "transformer", use_ema=False)
    release = work / "release"
    shutil.rmtree(release, ignore_errors=True)
    shutil.copytree(small / "release", release, ignore=shutil.ignore_patterns("transformer", "model_index.json"))
    shutil.copy(small / "release" / "model_index.json", release / "model_index.json")
    finish_release(release, work / "transformer")

    pipe = MotifVideoPipeline.from_pretrained(str(release))
    pipe.set_progress_bar_config(disable=True)
    captions = [item.caption for item in read_manifest(work / "clips.jsonl")]
    generators = [torch.Generator().manual_seed(i) for i in range(len(captions))]
    frames = pipe(prompt=captions, guidance="none", shift=args.shift, generator=generators, output_type="np").frames
    print(format_table({"memorised captions": score_prompts([score_video(f, c) for f, c in zip(frames, captions)])}))
    strips = [np.concatenate([f[i] for i in (0, 4, 8, 12, 16)], axis=1) for f in np.asarray(frames[:6])]
    Image.fromarray((np.concatenate(strips, axis=0) * 255).round().astype(np.uint8)).save(work / "frames.png")


if __name__ == "__main__":
    main()
