"""A recipe checked against the files it names and against its run folder before anything is written.

`check_recipe(recipe, run_dir, resume)` is everything `train` can know without training: the model source (a
preset, a config.json or pretrained weights: read, typed and bounded, pickles refused), every data source folder, the
null text, the VAE and text-encoder folders, the run folder itself (not a file, writable) and whether the recipe
continues the run already there (`recipe_status`). A refused command therefore leaves its folder as it found it, and
a run folder that never reached a checkpoint takes a corrected recipe instead of calling it "a different recipe".
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch.distributed as dist

from motif_video import atomic, safe_read
from motif_video.core.model_files import check_component_folder
from motif_video.core.run_folder import check_output_folder
from motif_video.models.checkpoint_io import CheckpointError
from motif_video.models.config import MotifVideoConfig, get_preset
from motif_video.training.checkpoint import COMPLETE
from motif_video.training.parallel import is_distributed
from motif_video.training.recipe import SYNTHETIC, Recipe, recipe_from_dict

logger = logging.getLogger(__name__)
RECIPE_FILE = "recipe.json"


def check_recipe(recipe: Recipe, run_dir: str | Path | None = None, resume: bool = True) -> str | None:
    """Refuse (ValueError naming the field or file) a recipe that cannot run; with `run_dir`, also a run folder that
    cannot hold it. Returns `recipe_status` (None without `run_dir`). Writes nothing."""
    model_config(recipe)
    for stage in recipe.stages:
        for name, source in stage.sources.items():
            if source.path != SYNTHETIC and not Path(source.path).is_dir():
                raise ValueError(
                    f"stage {stage.name!r} source {name!r}: {source.path} is not a folder of shards or a plan"
                )
    if recipe.null_text and not Path(recipe.null_text).is_file():
        raise ValueError(f"null_text {recipe.null_text} does not exist")
    for field, path in (("vae", recipe.vae), ("text_encoder", recipe.text_encoder)):
        if path is not None and not Path(path).is_dir():
            raise ValueError(f"{field} {path} is not a release folder")
    if run_dir is None:
        return None
    check_output_folder(run_dir, "--output")
    return recipe_status(recipe, Path(run_dir), resume)


def model_config(recipe: Recipe) -> MotifVideoConfig:
    """The starting transformer's config as the recipe describes it, read and checked without building the model."""
    source = recipe.model
    try:
        if source.preset:
            config = get_preset(source.preset)
        elif source.config:
            config = MotifVideoConfig.from_dict(safe_read.read_json(source.config, "model config"))
        else:
            folder = Path(source.pretrained)
            folder = folder / "transformer" if (folder / "transformer").is_dir() else folder
            if not (folder / "config.json").is_file():
                raise ValueError(f"[model] pretrained {source.pretrained} holds no transformer config.json")
            check_component_folder(folder, "transformer")
            config = MotifVideoConfig.from_dict(safe_read.read_json(folder / "config.json", "config"))
        return config.replace(**source.overrides) if source.overrides else config
    except CheckpointError:
        raise
    except (TypeError, ValueError) as err:
        raise ValueError(f"[model]: {err}") from None


# ---------------------------------------------------------------------------------------------------- run folder


def recipe_status(recipe: Recipe, run_dir: Path, resume: bool) -> str:
    """ "new" (no recipe.json yet, or not resuming), "same", "extends" (stages appended or the last one lengthened)
    or "replaces" (a different recipe, but the run never reached a checkpoint); ValueError for a different recipe
    of a run that has checkpoints."""
    path = run_dir / RECIPE_FILE
    if not path.is_file() or not resume:
        return "new"
    payload = recipe.to_dict()
    saved = _current_form(safe_read.read_json(path, "run recipe"))
    if saved == payload:
        return "same"
    if _extends(saved, payload):
        return "extends"
    if not any(run_dir.glob(f"stages/*/checkpoints/step-*/{COMPLETE}")):
        return "replaces"
    changed = sorted(k for k in set(saved) | set(payload) if saved.get(k) != payload.get(k))
    raise ValueError(
        f"{run_dir} holds a run of a different recipe (fields {changed} differ): resume with the same "
        "recipe (more stages may be appended, or the last one lengthened), or give a new --output folder"
    )


def write_recipe(recipe: Recipe, run_dir: Path, rank: int, resume: bool) -> None:
    """Record the recipe in the run folder (rank 0) unless it is already the one there."""
    status = recipe_status(recipe, run_dir, resume)
    if status == "extends":
        logger.info("the recipe extends the run in %s", run_dir)
    if status == "replaces":
        logger.info("%s never reached a checkpoint: its recipe is replaced", run_dir)
    if status != "same" and rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic.write_text(run_dir / RECIPE_FILE, json.dumps(recipe.to_dict(), indent=2, sort_keys=True))
    if is_distributed():
        dist.barrier()


def _current_form(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved recipe as this code writes it: a field added since (with its default) is not a change of recipe."""
    try:
        return recipe_from_dict(saved).to_dict()
    except (TypeError, ValueError, KeyError):
        return saved  # not loadable as it is: compared raw, and reported as a different recipe


def _extends(saved: dict[str, Any], payload: dict[str, Any]) -> bool:
    """True when `payload` continues the run of `saved`: the same recipe with more stages appended and/or more steps
    for its last stage (learning rates are constant after warmup, so either equals having planned it so; a last stage
    that decays its lr has already taken decayed steps, so it cannot be lengthened)."""
    same = {k: v for k, v in saved.items() if k != "stages"} == {k: v for k, v in payload.items() if k != "stages"}
    old, new = saved.get("stages", []), payload.get("stages", [])
    if not same or not old or len(new) < len(old) or new[: len(old) - 1] != old[:-1]:
        return False
    last, grown = old[-1], new[len(old) - 1]
    if last == grown:
        return len(new) > len(old)
    rest = lambda stage: {k: v for k, v in stage.items() if k != "steps"}  # noqa: E731
    longer = grown.get("steps", 0) > last.get("steps", 0)
    return rest(last) == rest(grown) and longer and not last.get("decay_steps", 0)


__all__ = ["RECIPE_FILE", "check_recipe", "model_config", "recipe_status", "write_recipe"]
