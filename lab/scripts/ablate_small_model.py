"""Ablate the small model with the real trainer: T2I from scratch on still images, or T2V fine-tunes of the release.

    python lab/scripts/ablate_small_model.py --work runs/small --out runs/ablate --steps 2000 \\
        --variant base --variant "lr3:lr=3e-3" --variant "theta10:rope_theta=10;lr=3e-3" \\
        --variant "p1:patch_size=1;lr=3e-3" --variant "w256:attention_head_dim=64;rope_axes_dim=(16,24,24)"

    python lab/scripts/ablate_small_model.py --work runs/small --out runs/finetune --from-release --steps 1500 \\
        --variant base --variant "diff:temporal_difference_weight=2.0;spatial_difference_weight=1.0"

`--work` is a reproduction folder (`lab/scripts/train_small_model.py`): its shards are the data and its release gives
the frozen text encoder, VAE and scheduler (and, with `--from-release`, the starting transformer).

- Default: every variant trains from scratch on the image shards (one images-only stage: no TREAD, logit-normal t,
  prompt dropout 0.1, warmup 100) and is scored on T2I (`motif-video-lab eval --mode t2i`). Still images are the
  cheap, spatial half of the task (16 tokens at patch 2 against 80 for a clip; the same colour, shape, size and
  layout attributes), so a config change that cannot make better images will not make better videos.
- `--from-release`: every variant continues the release's transformer on the video shards with the objective, lr
  and video batch of the reproduction's last stage (read from `<work>/run/recipe.json`, else `small_recipe`'s:
  joint T2V / I2V, frame-correlated noise), without TREAD, warmup 50,
  and is scored on T2V. Words a model learns late (shape, direction, speed) only show after the early ones
  (background, colour, size), which a short run from scratch never reaches.

A variant is `name[:key=value;key=value...]`, each value a Python literal. `lr`, `batch` and `steps` set the stage
(`decay_steps` / `decay_to`: its last steps decay the lr linearly to decay_to x lr);
`train_text_encoder=True` (with `--from-release`) trains the release's text encoder with the transformer,
`text_layers_added=N` first appends N identity full-attention layers to it (`training.text_tuning`), `text_lr` is
its lr, and the variant's release gets the tuned encoder; `text_pretrain_steps=N` (either mode) swaps the release's
random text encoder for one pretrained on captions for N steps (`small_model.text_pretraining`, frozen; captions are
encoded in the training step, so the same shards serve); `repa_teacher_steps=N` (either mode) aligns block
`repa_tap_block` (default 3) to a scene teacher trained for N steps (`small_model.scene_teacher`, written once to
`<out>/<name>/teacher`) with weight `repa_weight` (default 0.5), online targets through the release's VAE; an
`ObjectiveConfig` field (noise_correlation, temporal_difference_weight, shift, ...) changes the objective; any other
key is a `MotifVideoConfig` field (`ModelSource.overrides`; not with `--from-release`, which keeps the release's
architecture). A variant that trains on the shards' text states (no caption encoding in the step) is refused when
they come from another encoder than the release's, which it is sampled with (`check_shard_text`). All variants use
seed 0 and EMA 0.999. Each writes `<out>/<name>/` (run/, transformer/, release/,
eval/) and resumes there, so a finished variant is only re-scored. The table printed at the end (also
`<out>/ablation.md`): rows = variants; the mean flow loss of the last 10% of steps, and the attributes correct on
held-out and train prompts (the release's sampling defaults unless `--guidance-scale` / `--guidance-stop`). Strong
guidance (the official APG 8 on every step) lowers the scores of undertrained variants; compare at one setting.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from motif_video.training.export import export_transformer
from motif_video.training.metrics import MetricsWriter
from motif_video.training.objective import ObjectiveConfig
from motif_video.training.parallel import ParallelConfig
from motif_video.training.recipe import ModelSource, Recipe, Source, Stage, recipe_from_dict
from motif_video.training.run import final_checkpoint, resume_step, run_recipe
from motif_video.training.text_tuning import export_text_encoder, load_text_encoder
from motif_video_lab.evaluation import EvalSettings, run_eval
from motif_video_lab.small_model.components import finish_release
from motif_video_lab.small_model.reproduce import SmallModelPlan, small_recipe

STAGE_KEYS = ("lr", "batch", "steps", "decay_steps", "decay_to")  # decay: the stage's last steps, lr -> decay_to x lr
# training.text_tuning: tune the release's text encoder (with --from-release)
TEXT_KEYS = ("train_text_encoder", "text_layers_added", "text_lr")
PRETRAIN_KEY = "text_pretrain_steps"  # small_model.text_pretraining: a caption-pretrained encoder, in either mode
# REPA to the procedural scene teacher (small_model.scene_teacher), trained for `repa_teacher_steps` steps; online
# targets (the release's VAE decodes each batch's clean latents); `small_repa`'s tap block and weight unless given.
REPA_KEYS = ("repa_teacher_steps", "repa_weight", "repa_tap_block")


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """ "name:key=value;key=value" -> (name, {key: literal}); a bad entry is a ValueError saying what to write."""
    name, _, rest = text.partition(":")
    if not name or "/" in name:
        raise ValueError(f"variant {text!r}: start with a folder name, e.g. 'lr3:lr=3e-3'")
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in rest.split(";"))):
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"variant {text!r}: {item!r} is not key=value")
        try:
            values[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            raise ValueError(f"variant {text!r}: {raw.strip()!r} is not a Python literal") from None
    return name, values


def _split(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A variant's (objective overrides, model overrides); lists become tuples (config fields are tuples)."""
    import dataclasses

    objective_fields = {f.name for f in dataclasses.fields(ObjectiveConfig)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()
              if k not in (*STAGE_KEYS, *TEXT_KEYS, PRETRAIN_KEY, *REPA_KEYS)}  # fmt: skip
    objective = {k: v for k, v in values.items() if k in objective_fields}
    return objective, {k: v for k, v in values.items() if k not in objective}


def check_variant(name: str, values: dict[str, Any], from_release: bool = False) -> None:
    """Unknown keys, architecture changes of a fine-tune and invalid configs are a ValueError before training."""
    import dataclasses

    from motif_video.models.config import MotifVideoConfig, get_preset

    objective, model = _split(values)
    unknown = sorted(set(model) - {f.name for f in dataclasses.fields(MotifVideoConfig)})
    if unknown:
        raise ValueError(f"variant {name!r}: unknown key(s) {unknown}; use {', '.join(STAGE_KEYS)}, an ObjectiveConfig "
                         "field (temporal_difference_weight, noise_correlation, ...) or a MotifVideoConfig field "
                         "(patch_size, rope_theta, attention_head_dim, ...)")  # fmt: skip
    if any(k in values for k in TEXT_KEYS) and not from_release:
        raise ValueError(f"variant {name!r}: {[k for k in TEXT_KEYS if k in values]} tune the release's text "
                         "encoder: add --from-release")  # fmt: skip
    pretrain = values.get(PRETRAIN_KEY)
    if PRETRAIN_KEY in values and (not isinstance(pretrain, int) or pretrain < 1):
        raise ValueError(f"variant {name!r}: {PRETRAIN_KEY} is a number of steps >= 1, got {pretrain!r}")
    repa = {k: values[k] for k in REPA_KEYS if k in values}
    if repa and "repa_teacher_steps" not in repa:
        raise ValueError(f"variant {name!r}: {sorted(repa)} tune REPA: add repa_teacher_steps=N to turn it on")
    teacher_steps, tap = repa.get("repa_teacher_steps", 1), repa.get("repa_tap_block", 0)
    if not isinstance(teacher_steps, int) or teacher_steps < 1 or not isinstance(tap, int) or tap < 0:
        raise ValueError(f"variant {name!r}: repa_teacher_steps is a number of steps >= 1 and repa_tap_block a "
                         f"block index >= 0, got {teacher_steps!r} and {tap!r}")  # fmt: skip
    if not isinstance(repa.get("repa_weight", 0.0), (int, float)) or repa.get("repa_weight", 0.0) < 0:
        raise ValueError(f"variant {name!r}: repa_weight must be a number >= 0, got {repa['repa_weight']!r}")
    if from_release and model:
        raise ValueError(f"variant {name!r}: {sorted(model)} change the architecture; a --from-release fine-tune "
                         "keeps the release's transformer (drop --from-release to train from scratch)")  # fmt: skip
    try:
        dataclasses.replace(ObjectiveConfig(), **objective)
        dataclasses.replace(get_preset("motif-video-small"), **model)
    except (TypeError, ValueError) as error:
        raise ValueError(f"variant {name!r}: {error}") from None


def reproduction_recipe(work: Path) -> Recipe:
    """The recipe the reproduction in `work` was trained with (its run/recipe.json), else the default plan's."""
    saved = work / "run" / "recipe.json"
    if saved.is_file():
        return recipe_from_dict(json.loads(saved.read_text()))
    return small_recipe(work, SmallModelPlan())


def variant_recipe(work: Path, values: dict[str, Any], steps: int, batch: int | None, lr: float | None,
                   from_release: bool = False, text_encoder: Path | None = None,
                   teacher: Path | None = None) -> Recipe:  # fmt: skip
    """The one-stage recipe of a variant; batch / lr None: the mode's default (images 32 / 1e-3; a fine-tune the
    reproduction's last-stage video batch and lr). `text_encoder`: a folder (text_encoder/ + tokenizer/) whose
    encoder replaces the release's (captions encoded in the step). `teacher`: a scene-teacher folder to align to
    (REPA, online targets through the release's VAE)."""
    import dataclasses

    from motif_video_lab.small_model.scene_teacher import small_repa

    objective, model = _split(values)
    steps = int(values.get("steps", steps))
    decay = dict(decay_steps=int(values.get("decay_steps", 0)), decay_to=float(values.get("decay_to", 0.0)))
    extra: dict[str, Any] = {}  # Recipe fields: the text encoder, the VAE
    if from_release:
        last = reproduction_recipe(work).stages[-1]
        saved_batch = last.sources["video"].batch_size if "video" in last.sources else None
        default_batch = saved_batch if isinstance(saved_batch, int) else SmallModelPlan().video_batch
        videos = Source(str(work / "shards" / "videos"), batch_size=int(values.get("batch", batch or default_batch)),
                        shuffle_window=2048)  # fmt: skip
        stage = Stage("videos", steps, {"video": videos}, lr=float(values.get("lr", lr or last.lr)), warmup_steps=50,
                      route=None, **decay, objective=dataclasses.replace(last.objective, **objective),
                      train_text_encoder=bool(values.get("train_text_encoder", False)),
                      text_lr=values.get("text_lr"))  # fmt: skip
        source = ModelSource(pretrained=str(work / "release"))
        if any(k in values for k in TEXT_KEYS):
            extra = dict(text_encoder=str(work / "release"), text_layers_added=int(values.get("text_layers_added", 0)))
    else:
        images = Source(str(work / "shards" / "images"), batch_size=int(values.get("batch", batch or 32)),
                        shuffle_window=2048)  # fmt: skip
        base = ObjectiveConfig(prompt_dropout=0.1)
        stage = Stage("images", steps, {"image": images}, lr=float(values.get("lr", lr or 1e-3)), warmup_steps=100,
                      route=None, **decay, objective=dataclasses.replace(base, **objective))  # fmt: skip
        source = ModelSource(preset="motif-video-small", overrides=model)
    if text_encoder is not None:
        extra = dict(text_encoder=str(text_encoder), text_layers_added=int(values.get("text_layers_added", 0)))
    if teacher is not None:
        given = {key[len("repa_") :]: values[key] for key in ("repa_tap_block", "repa_weight") if key in values}
        stage = dataclasses.replace(stage, repa=small_repa(teacher, **given))  # small_repa's defaults otherwise
        extra["vae"] = str(work / "release")
    return Recipe(
        model=source,
        stages=(stage,),
        seed=0,
        log_every=25,
        checkpoint_every=250,
        ema_decay=0.999,
        parallel=ParallelConfig(param_dtype="float32", activation_checkpointing=False),
        tensorboard=False,
        **extra,
    )


def tail_loss(metrics: Path, steps: int) -> float:
    """Mean logged flow loss over the last 10% of steps."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    tail = [r["flow_loss"] for r in rows if "flow_loss" in r and r["step"] > 0.9 * steps] or [rows[-1]["loss"]]
    return sum(tail) / len(tail)


def pretrained_text_folder(work: Path, folder: Path, steps: int) -> Path:
    """`folder` with tokenizer/ (the release's) and text_encoder/ pretrained on captions for `steps` steps; written
    once (the text encoder folder last), then reused."""
    from transformers import AutoTokenizer

    from motif_video_lab.small_model.components import build_text_encoder

    if not (folder / "text_encoder" / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(work / "release" / "tokenizer", folder / "tokenizer")
        encoder = build_text_encoder(AutoTokenizer.from_pretrained(str(folder / "tokenizer")), 0, steps)
        encoder.save_pretrained(str(folder / "text_encoder.tmp"))
        (folder / "text_encoder.tmp").rename(folder / "text_encoder")
    return folder


def check_shard_text(shards: Path, release: Path) -> None:
    """A variant that trains on the shards' text states (no caption encoding in the step) must get the states of the
    encoder it will be sampled with, the release's: the shards' null_text.safetensors (the empty prompt's encoding,
    written by `prepare`) must equal that encoder's. ValueError saying what to do otherwise."""
    import torch
    from safetensors.torch import load_file

    from motif_video.core.encoders import encode_text
    from motif_video.pipeline import MotifVideoPipeline

    stored = load_file(str(shards / "null_text.safetensors"))["text"]
    skip = {"transformer": None, "scheduler": None, "vae": None}  # only the tokenizer and text encoder are needed
    pipe = MotifVideoPipeline.from_pretrained(str(release), components=skip)
    embeds, mask = encode_text(pipe.tokenizer, pipe.text_encoder, [""], 512, torch.device("cpu"), torch.float32)
    ours = embeds[0][mask[0]]
    if ours.shape != stored.shape or not torch.allclose(ours, stored, atol=1e-4, rtol=1e-4):
        raise ValueError(
            f"{shards} holds text states of another text encoder than {release}'s (their empty-prompt encodings "
            "differ): training on them would not match sampling. Encode captions in the step with the release's "
            "encoder (variant key train_text_encoder=False, with --from-release), or prepare the shards again"
        )


def run_variant(work: Path, out: Path, name: str, values: dict[str, Any], args: argparse.Namespace) -> dict:
    folder = out / name
    text_folder = teacher = None
    if PRETRAIN_KEY in values:
        text_folder = pretrained_text_folder(work, folder / "text", values[PRETRAIN_KEY])
    if "repa_teacher_steps" in values:
        from motif_video_lab.small_model.scene_teacher import scene_teacher_folder

        teacher = scene_teacher_folder(folder / "teacher", values["repa_teacher_steps"])
    recipe = variant_recipe(work, values, args.steps, args.batch, args.lr, args.from_release, text_folder, teacher)
    run = folder / "run"
    start = resume_step(recipe, run) if (run / "recipe.json").is_file() else None
    with MetricsWriter(run, resume_step=start, tensorboard=False) as writer:
        run_recipe(recipe, run, on_log=writer.log, device=args.device)
    release = folder / "release"
    if not (release / "model_index.json").is_file():
        shutil.rmtree(release, ignore_errors=True)
        shutil.copytree(work / "release", release, ignore=shutil.ignore_patterns("transformer"))
    # always re-exported (a few MB): a variant rerun with more --steps lengthens its run
    export_transformer(final_checkpoint(recipe, run), folder / "transformer", use_ema=True)
    # A tuned encoder replaces the release's copy, and so does a caption-pretrained one; the release's own encoder
    # left frozen (grown by identity layers or not) gives the release's states, so that copy stands.
    if any(s.train_text_encoder for s in recipe.stages):
        encoder, _ = load_text_encoder(recipe.text_encoder, recipe.text_layers_added)
        export_text_encoder(encoder, final_checkpoint(recipe, run), release / "text_encoder", use_ema=True)
    elif text_folder is not None:
        shutil.rmtree(release / "text_encoder")
        shutil.copytree(text_folder / "text_encoder", release / "text_encoder")
    stage = recipe.stages[0]
    finish_release(release, folder / "transformer", defaults={"noise_correlation": stage.objective.noise_correlation})
    mode = "t2v" if args.from_release else "t2i"
    settings = EvalSettings(str(release), mode=mode, num_prompts=args.num_prompts, device=args.device,
                            guidance_scale=args.guidance_scale, guidance_stop=args.guidance_stop,
                            output=str(folder / "eval"))  # fmt: skip
    report = run_eval(settings, progress=False)
    return dict(name=name, values=values, steps=stage.steps, loss=tail_loss(run / "metrics.jsonl", stage.steps),
                heldout=report.table("heldout", mode).overall, train=report.table("train", mode).overall)  # fmt: skip


def format_rows(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"| variant | changes | steps | flow loss (last 10%) | held-out {args.mode_name} | train {args.mode_name} |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        changes = "; ".join(f"{k}={v}" for k, v in r["values"].items()) or "none"
        lines.append(f"| {r['name']} | {changes} | {r['steps']} | {r['loss']:.4f} | {100 * r['heldout']:.1f}% | "
                     f"{100 * r['train']:.1f}% |")  # fmt: skip
    guidance = "the release's guidance" if args.guidance_scale is None else f"guidance scale {args.guidance_scale:g}"
    if args.guidance_stop is not None:
        guidance += f" on the first {100 * args.guidance_stop:.0f}% of steps"
    start = "fine-tuned from the release on videos" if args.from_release else "from scratch on images"
    batch = "the reproduction's batch" if args.from_release and args.batch is None else f"batch {args.batch or 32}"
    lr = "its last stage's lr" if args.from_release and args.lr is None else f"lr {args.lr or 1e-3:g}"
    lines += ["", f"Unless a variant says otherwise: {start}, {args.steps} steps, {batch}, {lr}, seed 0; "
                  f"{args.num_prompts} {args.mode_name} prompts per split, {guidance}."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/small", help="reproduction folder (shards/images, release/)")
    parser.add_argument("--out", default="runs/ablate", help="one folder per variant is written here")
    parser.add_argument("--variant", action="append", default=[], help="name[:key=value;...] (repeatable)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, help="default: 32 images; a fine-tune the reproduction's video batch")
    parser.add_argument("--lr", type=float, help="default: 1e-3; a fine-tune the reproduction's last-stage lr")
    parser.add_argument(
        "--from-release",
        action="store_true",
        help="fine-tune the work folder's release on videos and score T2V (default: T2I from scratch)",
    )
    parser.add_argument("--num-prompts", type=int, default=48, help="prompts per split")
    parser.add_argument("--guidance-scale", type=float, help="sampling guidance (default: the release's)")
    parser.add_argument("--guidance-stop", type=float, help="fraction of steps guided (default: the release's)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    try:
        variants = [parse_variant(v) for v in (args.variant or ["base"])]
        for name, values in variants:
            check_variant(name, values, args.from_release)
    except ValueError as error:
        parser.error(str(error))
    if len({name for name, _ in variants}) != len(variants):
        parser.error("variant names must differ")
    args.mode_name = "T2V" if args.from_release else "T2I"
    needed = [work / "shards" / ("videos" if args.from_release else "images"), work / "release" / "vae"]
    needed += [work / "release" / "transformer"] if args.from_release else []
    missing = [p for p in needed if not p.is_dir()]
    if missing:
        parser.error(f"{work} is not a reproduction folder (missing {', '.join(map(str, missing))}); "
                     "run scripts/train_small_model.py first")  # fmt: skip
    shards = needed[0]
    if any(not any(k in values for k in (*TEXT_KEYS, PRETRAIN_KEY)) for _, values in variants):
        try:  # some variant trains on the shards' text states
            check_shard_text(shards, work / "release")
        except ValueError as error:
            parser.error(str(error))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = [run_variant(work, out, name, values, args) for name, values in variants]
    table = format_rows(rows, args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
