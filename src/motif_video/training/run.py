"""Run a `Recipe`: its stages in order, each a resumable `train()` call, with metrics and a final export.

Layout of a run folder:
    recipe.json                      the resolved recipe (a different one is an error once a checkpoint exists;
                                     appending stages or lengthening the last one is not; fields added since take
                                     their defaults); checked with every file it names first (`preflight.py`)
    metrics.jsonl, tensorboard/      one row per log step, global step numbers (`metrics.py`)
    data/<stage>-<source>/           synthetic shards (only for `path = "synthetic"` sources), complete once their
                                     `synthetic.json` exists (else written again from the start)
    stages/NN-<name>/checkpoints/    that stage's checkpoints (`checkpoint.py`); complete at step == stage.steps
    final/transformer/               the last stage's EMA (or raw) weights in the official folder format

Stage boundaries (OUR CHOICES, documented): each stage starts from the previous stage's final weights and EMA;
the AdamW moments and the LR schedule restart (a new stage changes resolution, data mix and often the parameter
set); a stage that inserts Shared Cross-Attention does it after loading and before building the optimizer; the
REPA projector is carried over when the next stage's teacher has the same width, else made fresh. The per-rank
generator is seeded from (recipe seed + stage index, rank), and each source's reader from the same seed.

A recipe with a `text_encoder` (`text_tuning.py`) encodes every caption inside the step; stages with
`train_text_encoder` train its text half (under EMA like the rest), and a later stage that freezes it starts from
the previous stage's EMA of it.

Resume: stages whose final checkpoint exists are skipped; the stage in progress continues from its latest
complete checkpoint bit-exactly (`trainer.train`); a stage that has none starts from the previous stage's end.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from motif_video.core.shard_reader import ShardReader, decode_sample, read_tar, resolve_shards
from motif_video.core.shards import NULL_TEXT_FILE, complete_shards, parse_bucket
from motif_video.models.transformer import MotifVideoTransformer
from motif_video.training.checkpoint import latest_checkpoint, load_weights
from motif_video.training.flops import peak_flops_for, step_flops_fn
from motif_video.training.insert_cross_attention import insert_shared_cross_attention
from motif_video.training.interleave import InterleavedBatches
from motif_video.training.parallel import is_distributed, parallelize, world
from motif_video.training.preflight import check_recipe, model_config, write_recipe
from motif_video.training.recipe import SYNTHETIC, Recipe, Source, Stage
from motif_video.training.repa import REPAProjector
from motif_video.training.text_tuning import TEXT_PREFIX, load_text_encoder, set_text_trainable
from motif_video.training.train_module import TrainModule, unwrap
from motif_video.training.trainer import TrainConfig, train

logger = logging.getLogger(__name__)


def stage_dir(run_dir: Path, index: int, stage: Stage) -> Path:
    return Path(run_dir) / "stages" / f"{index:02d}-{stage.name}"


def stage_final(run_dir: Path, index: int, stage: Stage) -> Path | None:
    """The stage's final checkpoint if it finished, else None."""
    found = latest_checkpoint(stage_dir(run_dir, index, stage) / "checkpoints")
    if found is None:
        return None
    step = int(json.loads((found / "trainer.json").read_text())["step"])
    return found if step >= stage.steps else None


def resume_step(recipe: Recipe, run_dir: str | Path) -> int:
    """The global step a run in `run_dir` would continue from (0 for a new run)."""
    done = 0
    for index, stage in enumerate(recipe.stages):
        found = latest_checkpoint(stage_dir(Path(run_dir), index, stage) / "checkpoints")
        if found is None:
            return done
        step = int(json.loads((found / "trainer.json").read_text())["step"])
        done += step
        if step < stage.steps:
            return done
    return done


def final_checkpoint(recipe: Recipe, run_dir: str | Path) -> Path | None:
    """The last stage's final checkpoint once the whole recipe has run."""
    last = len(recipe.stages) - 1
    return stage_final(Path(run_dir), last, recipe.stages[last])


def build_transformer(recipe: Recipe) -> MotifVideoTransformer:
    """The starting transformer (fp32, CPU) of a recipe: a preset, a config.json, or pretrained weights."""
    source = recipe.model
    if source.pretrained:
        folder = Path(source.pretrained)
        if (folder / "transformer").is_dir():
            folder = folder / "transformer"
        return MotifVideoTransformer.from_pretrained(str(folder), torch_dtype=torch.float32, fuse_qkv=False)
    model = MotifVideoTransformer(model_config(recipe))
    model.init_weights(generator=torch.Generator().manual_seed(recipe.seed))
    return model


def run_recipe(
    recipe: Recipe,
    run_dir: str | Path,
    *,
    device: str | torch.device = "auto",
    resume: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    on_step_end: Callable[[int, dict[str, Any] | None], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every unfinished stage; returns the log rows of this call (global step numbers, on rank 0).

    on_log / on_step_end: `trainer.train`'s callbacks, with global step numbers and the stage's name in the rows."""
    run_dir = Path(run_dir)
    rank, world_size = world()
    check_recipe(recipe, run_dir, resume)  # every file the recipe names, before anything is written
    device = _device(device)
    write_recipe(recipe, run_dir, rank, resume)
    rows: list[dict[str, Any]] = []
    for index, stage in enumerate(recipe.stages):
        if stage_final(run_dir, index, stage) is not None:
            continue
        begin = sum(earlier.steps for earlier in recipe.stages[:index])  # global step = begin + the stage's step
        model, ema_init = _stage_model(recipe, run_dir, index, device)
        reader = _reader(recipe, run_dir, index, stage, model.config.text_embed_dim, rank, world_size)
        config = _train_config(recipe, index, stage)
        teacher = _online_teacher(recipe, stage, model, device)
        logger.info("stage %d/%d %s: %d steps", index + 1, len(recipe.stages), stage.name, stage.steps)

        def globally(row: dict[str, Any], begin: int = begin, name: str = stage.name) -> dict[str, Any]:
            return {**row, "step": row["step"] + begin, "stage": name}

        def log(row: dict[str, Any], globally: Callable = globally) -> None:
            rows.append(globally(row))
            if on_log is not None:
                on_log(rows[-1])

        def step_end(step: int, row: dict[str, Any] | None, globally: Callable = globally, begin: int = begin) -> None:
            on_step_end(begin + step, None if row is None else globally(row))

        train(
            config,
            model,
            reader,
            stage_dir(run_dir, index, stage),
            null_text=_null_text(recipe, stage),
            resume=resume,
            on_log=log,
            on_step_end=None if on_step_end is None else step_end,
            teacher=teacher,
            ema_init=ema_init,
            extra_state={"model_config": unwrap(model).config.to_dict(), "lora": recipe.lora, "stage": stage.name},
            step_flops=step_flops_fn(model.config),  # model FLOPs (no recompute), the MFU convention
            peak_flops=peak_flops_for(device),
        )
    return rows


def _device(device: str | torch.device) -> torch.device:
    if str(device) != "auto":
        return torch.device(device)
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _stage_model(recipe: Recipe, run_dir: Path, index: int, device: torch.device) -> tuple[TrainModule, Any]:
    """The stage's TrainModule, parallelised: earlier insertions replayed, previous weights loaded, own insertion."""
    stage = recipe.stages[index]
    transformer = build_transformer(recipe)
    for earlier in recipe.stages[:index]:
        if earlier.insert_cross_attention:
            insert_shared_cross_attention(transformer)
    projector = _projector(recipe, run_dir, index, transformer, *world())
    if recipe.lora:  # before loading: a previous stage's checkpoint holds the adapters under peft's names
        from motif_video.core.lora import LoRAConfig, add_lora

        add_lora(transformer, LoRAConfig(**recipe.lora))
    text_encoder = tokenizer = None
    if recipe.text_encoder is not None:
        text_encoder, tokenizer = load_text_encoder(recipe.text_encoder, recipe.text_layers_added)
        set_text_trainable(text_encoder, stage.train_text_encoder)
    model = TrainModule(transformer, projector, text_encoder, tokenizer)
    ema_init = None
    own = latest_checkpoint(stage_dir(run_dir, index, stage) / "checkpoints")
    if own is None and index > 0:
        previous = stage_final(run_dir, index - 1, recipe.stages[index - 1])
        if previous is None:
            raise ValueError(f"stage {stage.name!r} needs the end of stage {recipe.stages[index - 1].name!r} first")
        ema_init, fresh = load_weights(previous, model, ema=recipe.ema_decay is not None)
        logger.info("stage %s starts from %s (%d fresh tensors)", stage.name, previous, len(fresh))
        if text_encoder is not None and not stage.train_text_encoder:
            _freeze_at_ema(model, ema_init)
    if stage.insert_cross_attention:
        g = torch.Generator().manual_seed(recipe.seed + index)
        insert_shared_cross_attention(transformer, generator=g)
    model.to(device)
    parallelize(model, recipe.parallel, device.type)
    return model, ema_init


@torch.no_grad()
def _freeze_at_ema(model: TrainModule, ema: dict[str, torch.Tensor] | None) -> None:
    """A stage that keeps the text encoder frozen uses the previous stage's EMA of it (what a release ships)."""
    params = dict(model.named_parameters())
    for name, value in (ema or {}).items():
        if name.startswith(TEXT_PREFIX):
            params[name].copy_(value)


def _projector(
    recipe: Recipe, run_dir: Path, index: int, transformer: MotifVideoTransformer, rank: int, world_size: int
) -> REPAProjector | None:
    repa = recipe.stages[index].repa
    if repa is None or not repa.enabled:
        return None
    if repa.feature_source == "shards":
        dim = _teacher_dim(recipe, run_dir, index, rank, world_size)
    else:
        from motif_video.core.teachers import load_teacher

        dim = load_teacher(repa.teacher, repa.teacher_source, torch.float32, "cpu", **repa.teacher_options()).dim
    g = torch.Generator().manual_seed(recipe.seed + 7919 * (index + 1))
    projector = REPAProjector(transformer.config.hidden_size, dim, repa.projector_width)
    for module in projector.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(module.weight, generator=g)
            torch.nn.init.zeros_(module.bias)
    return projector


def _teacher_dim(recipe: Recipe, run_dir: Path, index: int, rank: int, world_size: int) -> int:
    stage = recipe.stages[index]
    for name, source in stage.sources.items():
        shards = resolve_shards(_shards(run_dir, index, stage, name, source, recipe, rank, world_size), rank)
        for item in read_tar(shards[0]):
            tensors = decode_sample(shards[0], 0, *item).tensors
            if "teacher" not in tensors:
                break
            return int(tensors["teacher"].shape[-1])
    raise ValueError(
        f"stage {stage.name!r}: REPA feature_source='shards' but its shards hold no 'teacher' tensor: run "
        "`motif-video prepare --teacher ...`, or set repa.feature_source = 'online'"
    )


def _shards(
    run_dir: Path, index: int, stage: Stage, name: str, source: Source, recipe: Recipe, rank: int, world_size: int
) -> list[Path] | Path:
    if source.path == SYNTHETIC:
        folder = Path(run_dir) / "data" / f"{stage.name}-{name}"
        if rank == 0:  # written whole or again from the start, so a kill mid-write resumes on the same data
            from motif_video.core.synthetic_shards import ensure_synthetic_shards

            ensure_synthetic_shards(
                folder, max(source.synthetic_shards, world_size), [parse_bucket(b) for b in source.buckets],
                seed=recipe.seed + index, image_tokens=False, text_dim=model_config(recipe).text_embed_dim,
            )  # fmt: skip
        if is_distributed():
            dist.barrier()
        return complete_shards(folder)[rank::world_size]
    folder = Path(source.path)
    if not folder.is_dir():
        raise ValueError(f"stage {stage.name!r} source {name!r}: {folder} is not a folder of shards or a plan")
    if (folder / "plan.json").is_file() or world_size == 1:
        return folder  # ShardReader reads this rank's plan, or every complete shard
    shards = complete_shards(folder)[rank::world_size]
    if not shards:
        raise ValueError(f"{folder} has fewer complete shards than the {world_size} ranks: plan it or add shards")
    logger.warning("%s: no sampler plan, ranks take every %d-th shard (run `motif-video plan` to balance)", folder,
                   world_size)  # fmt: skip
    return shards


def _reader(
    recipe: Recipe, run_dir: Path, index: int, stage: Stage, text_dim: int, rank: int, world_size: int
) -> InterleavedBatches:
    readers = {}
    for name, source in stage.sources.items():
        sizes = source.batch_size
        if isinstance(sizes, dict):
            sizes = {parse_bucket(k): int(v) for k, v in sizes.items()}
        shards = _shards(run_dir, index, stage, name, source, recipe, rank, world_size)
        readers[name] = ShardReader(shards, rank, sizes, seed=recipe.seed + index, shuffle_window=source.shuffle_window)
    return InterleavedBatches(readers, stage.interleave)


def _train_config(recipe: Recipe, index: int, stage: Stage) -> TrainConfig:
    return TrainConfig(
        steps=stage.steps,
        lr=stage.lr,
        warmup_steps=stage.warmup_steps,
        decay_steps=stage.decay_steps,
        decay_to=stage.decay_to,
        weight_decay=recipe.weight_decay,
        betas=recipe.betas,
        grad_clip=recipe.grad_clip,
        ema_decay=recipe.ema_decay,
        seed=recipe.seed + index,
        checkpoint_every=recipe.checkpoint_every,
        keep_checkpoints=recipe.keep_checkpoints,
        log_every=recipe.log_every,
        route=stage.route,
        objective=stage.objective,
        repa=stage.repa if stage.repa is not None and stage.repa.enabled else None,
        text_lr=stage.text_lr,
    )


def _online_teacher(recipe: Recipe, stage: Stage, model: TrainModule, device: torch.device) -> Any:
    repa = stage.repa
    if repa is None or not repa.enabled or repa.feature_source != "online":
        return None
    if recipe.vae is None:
        raise ValueError(f"stage {stage.name!r}: online REPA decodes latents: set `vae` to a release folder")
    from diffusers import AutoencoderKLWan

    from motif_video.core.model_files import check_component_folder
    from motif_video.core.teachers import load_teacher
    from motif_video.training.repa_online import OnlineTargets

    folder = Path(recipe.vae)
    folder = folder / "vae" if (folder / "vae").is_dir() else folder
    check_component_folder(folder, "vae")
    vae = AutoencoderKLWan.from_pretrained(str(folder), use_safetensors=True)
    teacher = load_teacher(repa.teacher, repa.teacher_source, torch.float32, device, **repa.teacher_options())
    c = unwrap(model).config
    return OnlineTargets(vae.to(device), teacher, c.patch_size, c.patch_size_t)


def _null_text(recipe: Recipe, stage: Stage) -> tuple[torch.Tensor, torch.Tensor] | None:
    from safetensors.torch import load_file

    candidates = [recipe.null_text] if recipe.null_text else [
        str(Path(s.path) / NULL_TEXT_FILE) for s in stage.sources.values() if s.path != SYNTHETIC
    ]  # fmt: skip
    for path in candidates:
        if Path(path).is_file():
            text = load_file(path)["text"].float()
            return text, torch.ones(text.shape[0], dtype=torch.bool)
    if recipe.null_text:
        raise ValueError(f"null_text {recipe.null_text} does not exist")
    return None  # zeros of the text width (trainer default)


__all__ = ["build_transformer", "final_checkpoint", "resume_step", "run_recipe", "stage_dir", "stage_final"]
