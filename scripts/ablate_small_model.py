"""Ablate the small model on still images: train each variant from scratch with the real trainer, score its T2I.

    python scripts/ablate_small_model.py --work runs/small --out runs/ablate --steps 2000 \\
        --variant base --variant "lr3:lr=3e-3" --variant "theta10:rope_theta=10;lr=3e-3" \\
        --variant "p1:patch_size=1;lr=3e-3" --variant "w256:attention_head_dim=64;rope_axes_dim=(16,24,24)"

Still images are the cheap, spatial half of the task (16 tokens at patch 2 against 80 for a clip; the same colour,
shape, size and layout attributes), so a recipe or config change that cannot make better images will not make better
videos. `--work` is a reproduction folder (`scripts/train_small_model.py`): its image shards are the data and its
release gives the frozen text encoder, VAE and scheduler.

A variant is `name[:key=value;key=value...]`. `lr`, `batch` and `steps` set the one images-only stage (no TREAD,
logit-normal t, prompt dropout 0.1, EMA 0.999, warmup 100, seed 0); every other key is a `MotifVideoConfig` field
(`ModelSource.overrides`), its value a Python literal. Each variant writes `<out>/<name>/` (run/, transformer/,
release/, eval/) and resumes there, so a finished variant is only re-scored. The table printed at the end (also
`<out>/ablation.md`): rows = variants; the mean flow loss of the last 10% of steps, and the T2I attributes correct
(`motif-video eval --mode t2i`, the release's sampling defaults unless `--guidance-scale`) on held-out and train
prompts. Strong guidance (the release's APG 8) lowers the scores of undertrained variants; compare at one setting.
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from motif_video.evaluation import EvalSettings, run_eval
from motif_video.small_model.components import finish_release
from motif_video.training.export import export_transformer
from motif_video.training.metrics import MetricsWriter
from motif_video.training.objective import ObjectiveConfig
from motif_video.training.parallel import ParallelConfig
from motif_video.training.recipe import ModelSource, Recipe, Source, Stage
from motif_video.training.run import final_checkpoint, resume_step, run_recipe

STAGE_KEYS = ("lr", "batch", "steps")


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


def check_variant(name: str, values: dict[str, Any]) -> None:
    """Unknown keys and invalid configs are a ValueError before anything trains."""
    import dataclasses

    from motif_video.models.config import MotifVideoConfig, get_preset

    fields = {f.name for f in dataclasses.fields(MotifVideoConfig)}
    unknown = sorted(set(values) - fields - set(STAGE_KEYS))
    if unknown:
        raise ValueError(f"variant {name!r}: unknown key(s) {unknown}; use {', '.join(STAGE_KEYS)} or a "
                         "MotifVideoConfig field (patch_size, rope_theta, attention_head_dim, ...)")  # fmt: skip
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k not in STAGE_KEYS}
    try:
        dataclasses.replace(get_preset("motif-video-small"), **overrides)
    except (TypeError, ValueError) as error:
        raise ValueError(f"variant {name!r}: {error}") from None


def variant_recipe(shards: Path, values: dict[str, Any], steps: int, batch: int, lr: float) -> Recipe:
    overrides = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k not in STAGE_KEYS}
    images = Source(str(shards), batch_size=int(values.get("batch", batch)), shuffle_window=2048)
    stage = Stage("images", int(values.get("steps", steps)), {"image": images}, lr=float(values.get("lr", lr)),
                  warmup_steps=100, route=None, objective=ObjectiveConfig(prompt_dropout=0.1))  # fmt: skip
    return Recipe(
        model=ModelSource(preset="motif-video-small", overrides=overrides),
        stages=(stage,),
        seed=0,
        log_every=25,
        checkpoint_every=250,
        ema_decay=0.999,
        parallel=ParallelConfig(param_dtype="float32", activation_checkpointing=False),
        tensorboard=False,
    )


def tail_loss(metrics: Path, steps: int) -> float:
    """Mean logged flow loss over the last 10% of steps."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    tail = [r["flow_loss"] for r in rows if "flow_loss" in r and r["step"] > 0.9 * steps] or [rows[-1]["loss"]]
    return sum(tail) / len(tail)


def run_variant(work: Path, out: Path, name: str, values: dict[str, Any], args: argparse.Namespace) -> dict:
    folder = out / name
    recipe = variant_recipe(work / "shards" / "images", values, args.steps, args.batch, args.lr)
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
    finish_release(release, folder / "transformer")
    settings = EvalSettings(str(release), mode="t2i", num_prompts=args.num_prompts, device=args.device,
                            guidance_scale=args.guidance_scale, output=str(folder / "eval"))  # fmt: skip
    report = run_eval(settings, progress=False)
    steps = recipe.stages[0].steps
    return dict(name=name, values=values, steps=steps, loss=tail_loss(run / "metrics.jsonl", steps),
                heldout=report.table("heldout", "t2i").overall, train=report.table("train", "t2i").overall)  # fmt: skip


def format_rows(rows: list[dict], args: argparse.Namespace) -> str:
    lines = [
        "| variant | changes | steps | flow loss (last 10%) | held-out T2I | train T2I |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        changes = "; ".join(f"{k}={v}" for k, v in r["values"].items()) or "none"
        lines.append(f"| {r['name']} | {changes} | {r['steps']} | {r['loss']:.4f} | {100 * r['heldout']:.1f}% | "
                     f"{100 * r['train']:.1f}% |")  # fmt: skip
    guidance = "the release's guidance" if args.guidance_scale is None else f"guidance scale {args.guidance_scale:g}"
    lines += ["", f"Unless a variant says otherwise: {args.steps} steps, batch {args.batch}, lr {args.lr:g}, seed 0; "
                  f"{args.num_prompts} T2I prompts per split, {guidance}."]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/small", help="reproduction folder (shards/images, release/)")
    parser.add_argument("--out", default="runs/ablate", help="one folder per variant is written here")
    parser.add_argument("--variant", action="append", default=[], help="name[:key=value;...] (repeatable)")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--num-prompts", type=int, default=48, help="T2I prompts per split")
    parser.add_argument("--guidance-scale", type=float, help="sampling guidance (default: the release's, APG 8)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    work, out = Path(args.work), Path(args.out)
    try:
        variants = [parse_variant(v) for v in (args.variant or ["base"])]
        for name, values in variants:
            check_variant(name, values)
    except ValueError as error:
        parser.error(str(error))
    if len({name for name, _ in variants}) != len(variants):
        parser.error("variant names must differ")
    missing = [p for p in (work / "shards" / "images", work / "release" / "vae") if not p.is_dir()]
    if missing:
        parser.error(f"{work} is not a reproduction folder (missing {', '.join(map(str, missing))}); "
                     "run scripts/train_small_model.py first")  # fmt: skip
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = [run_variant(work, out, name, values, args) for name, values in variants]
    table = format_rows(rows, args)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ablation.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
