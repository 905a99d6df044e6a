"""A training recipe: the model to start from, run-wide settings and a curriculum of stages, as typed data.

Motif-Video 2B (arXiv 2604.16503, §4) trains in stages: 144p images -> 144p video -> 360p -> 480p -> SFT ->
720p -> 360p with Shared Cross-Attention inserted -> 720p + SFT, images and videos interleaved, REPA to DINOv2
(images) then V-JEPA (video), switched off from stage 4. A `Recipe` expresses that: each `Stage` names its data
sources (prepared shard folders or sampler plans, one per kind: e.g. `image` and `video`), the interleave pattern,
steps, learning rate and warmup, the TREAD route, REPA (on/off, teacher), objective settings, and whether Shared
Cross-Attention is inserted at its start.

Files: TOML or JSON with the same fields (`load_recipe`, bounded in size and nesting); unknown keys are errors that
list the known ones, and every value is checked against its field's type and bounds (`lr = "fast"`, `steps = 2.5`,
`checkpoint_every = 0` are errors naming the field). A
`[stage_defaults]` table fills every stage's missing fields (nested tables merge one level). Presets are Python
data (`RECIPE_PRESETS`): `cpu-tiny` (a CPU run of a minute on synthetic shards, every feature on) and
`motif-video-2b` (the report's curriculum at full size; its data paths and step counts are placeholders to edit,
as the report publishes GPU hours, not steps). `motif-video train --preset NAME --print-config` writes a preset as
JSON to start a file from.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser from PyPI
    import tomli as tomllib

from motif_video import bounds, safe_read
from motif_video.core.shards import parse_bucket
from motif_video.training.objective import ObjectiveConfig
from motif_video.training.parallel import ParallelConfig
from motif_video.training.repa import REPAConfig
from motif_video.training.trainer import RouteConfig

SYNTHETIC = "synthetic"  # a source path that makes synthetic shards in the run folder (tests, smoke runs)
MAX_SEED = 2**40  # the per-rank generators are seeded with seed * 100_003 + rank, which must fit in 64 bits
MAX_STEPS = 10**9
MAX_RECIPE_BYTES = 2**20


@dataclass(frozen=True)
class ModelSource:
    """Exactly one of: a preset name, a transformer config.json, a pretrained transformer/ or release folder."""

    preset: str | None = None
    config: str | None = None
    pretrained: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # MotifVideoConfig fields (not with `pretrained`)

    def __post_init__(self) -> None:
        given = [n for n in ("preset", "config", "pretrained") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError(f"[model] needs exactly one of preset, config, pretrained; got {given or 'none'}")
        if self.pretrained and self.overrides:
            raise ValueError("[model] overrides apply to a preset or config, not to pretrained weights")


@dataclass(frozen=True)
class Source:
    """One data source of a stage: a folder of prepared shards, or a plan folder (`motif-video plan`)."""

    path: str
    batch_size: int | dict[str, int] = 1  # one for all buckets, or per bucket name "FxHxW"
    shuffle_window: int = 4096
    buckets: tuple[str, ...] = ()  # only for path = "synthetic": the buckets to make, e.g. ("1x32x32",)
    synthetic_shards: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "buckets", tuple(self.buckets))
        if self.path == SYNTHETIC and not self.buckets:
            raise ValueError('a synthetic source needs buckets, e.g. buckets = ["1x32x32"]')
        for bucket in self.buckets:
            try:
                parse_bucket(bucket)
            except ValueError:
                raise ValueError(f"bucket {bucket!r} must be FRAMESxHEIGHTxWIDTH, e.g. 17x64x64") from None
        bounds.integer("synthetic_shards", self.synthetic_shards, 1, 100_000)
        bounds.integer("shuffle_window", self.shuffle_window, 0)
        sizes = self.batch_size.values() if isinstance(self.batch_size, dict) else [self.batch_size]
        if any(int(s) < 1 for s in sizes):
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class Stage:
    name: str
    steps: int
    sources: dict[str, Source]
    interleave: tuple[str, ...] = ()  # e.g. ("image", "video", "video"); empty = the sources in name order
    lr: float = 1e-4
    warmup_steps: int = 0
    decay_steps: int = 0  # the stage's last steps decay the lr linearly to decay_to x lr (warmup-stable-decay)
    decay_to: float = 0.0
    route: RouteConfig | None = None
    repa: REPAConfig | None = None
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    insert_cross_attention: bool = False  # insert Shared Cross-Attention (zero-init output) at the stage start
    train_text_encoder: bool = False  # train the recipe's text encoder's text half too (needs Recipe.text_encoder)
    text_lr: float | None = None  # its lr (with the same warmup); None: the stage's lr

    def __post_init__(self) -> None:
        object.__setattr__(self, "interleave", tuple(self.interleave) or tuple(sorted(self.sources)))
        if bounds.integer(f"stage {self.name!r}: steps", self.steps) < 1:
            raise ValueError(f"stage {self.name!r}: steps must be >= 1, got {self.steps}")
        bounds.integer(f"stage {self.name!r}: steps", self.steps, 1, MAX_STEPS)
        bounds.real(f"stage {self.name!r}: lr", self.lr, 0.0, 10.0, lo_open=True)
        bounds.integer(f"stage {self.name!r}: warmup_steps", self.warmup_steps, 0)
        if self.text_lr is not None:
            bounds.real(f"stage {self.name!r}: text_lr", self.text_lr, 0.0, 10.0, lo_open=True)
        if not self.sources:
            raise ValueError(f"stage {self.name!r} has no data sources")
        if not self.name or "/" in self.name:
            raise ValueError(f"stage name {self.name!r} must be non-empty and contain no '/'")
        if not 0 <= self.decay_steps <= self.steps or not 0.0 <= self.decay_to <= 1.0:
            raise ValueError(f"stage {self.name!r}: decay_steps must be in [0, steps={self.steps}] and decay_to in "
                             f"[0, 1], got {self.decay_steps}, {self.decay_to}")  # fmt: skip
        if self.text_lr is not None and not self.train_text_encoder:
            raise ValueError(f"stage {self.name!r}: text_lr is the tuned text encoder's lr: set train_text_encoder")


@dataclass(frozen=True)
class Recipe:
    model: ModelSource
    stages: tuple[Stage, ...]
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    ema_decay: float | None = 0.9999
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    vae: str | None = None  # release folder (vae/ inside) for online REPA targets
    null_text: str | None = None  # null_text.safetensors; None = the first source folder's, else zeros
    tensorboard: bool = True
    wandb: str | None = None  # a wandb project name turns wandb logging on
    lora: dict[str, Any] | None = None  # training.lora.LoRAConfig fields: train LoRA adapters only
    # training.text_tuning: a release (or text_encoder/) folder whose encoder encodes every caption in the step
    text_encoder: str | None = None
    text_layers_added: int = 0  # full-attention layers appended to that encoder, identity at the start

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))
        object.__setattr__(self, "betas", tuple(self.betas))
        if not self.stages:
            raise ValueError("a recipe needs at least one stage")
        bounds.integer("seed", self.seed, 0, MAX_SEED)
        bounds.integer("log_every", self.log_every, 1)
        bounds.integer("checkpoint_every", self.checkpoint_every, 1)
        bounds.integer("keep_checkpoints", self.keep_checkpoints, 0)
        if self.ema_decay is not None:
            bounds.real("ema_decay", self.ema_decay, 0.0, 1.0, hi_open=True)
        bounds.real("grad_clip", self.grad_clip, 0.0, lo_open=True, allow_inf=True)
        bounds.real("weight_decay", self.weight_decay, 0.0)
        if len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers, got {list(self.betas)}")
        for beta in self.betas:
            bounds.real("betas", beta, 0.0, 1.0, hi_open=True)
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if sum(s.insert_cross_attention for s in self.stages) > 1:
            raise ValueError("Shared Cross-Attention can be inserted in one stage only")
        tuned = [s.name for s in self.stages if s.train_text_encoder]
        if tuned and self.text_encoder is None:
            raise ValueError(f"stage(s) {tuned} train the text encoder: set text_encoder to a release folder")
        if self.text_layers_added and self.text_encoder is None:
            raise ValueError("text_layers_added grows the recipe's text_encoder: set text_encoder too")
        if self.text_layers_added < 0:
            raise ValueError(f"text_layers_added must be >= 0, got {self.text_layers_added}")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))


# --------------------------------------------------------------------------------------------- reading files


def _build(cls: type, data: Any, where: str) -> Any:
    """A dataclass from a dict, recursively, with errors naming the bad key and the known ones."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table/object, got {type(data).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; known: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        nested = _NESTED.get((cls, name))
        if nested is not None and value is not None:
            if name in ("sources", "stages") and not isinstance(value, dict if name == "sources" else list):
                raise ValueError(f"{where}.{name} must be a {'table' if name == 'sources' else 'list'}")
            if name == "sources":
                value = {k: _build(Source, v, f"{where}.sources.{k}") for k, v in value.items()}
            elif name == "stages":
                value = [_build(Stage, v, f"stages[{i}]") for i, v in enumerate(value)]
            else:
                value = _build(nested, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        bounds.check_fields(cls, kwargs, where)
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{where}: {err}" if not str(err).startswith(where) else str(err)) from None
    except ValueError as err:
        raise ValueError(f"{where}: {err}" if not str(err).startswith(where) else str(err)) from None


_NESTED: dict[tuple[type, str], type] = {
    (Recipe, "model"): ModelSource,
    (Recipe, "stages"): Stage,
    (Recipe, "parallel"): ParallelConfig,
    (Stage, "sources"): Source,
    (Stage, "route"): RouteConfig,
    (Stage, "repa"): REPAConfig,
    (Stage, "objective"): ObjectiveConfig,
}


def recipe_from_dict(data: dict[str, Any], where: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a table/object of recipe fields, got {type(data).__name__}")
    data = dict(data)
    defaults = data.pop("stage_defaults", {}) or {}
    if not isinstance(defaults, dict) or not isinstance(data.get("stages", []), list):
        raise ValueError(f"{where}: stage_defaults must be a table and stages a list of tables")
    stages = []
    for stage in data.get("stages", []):
        if not isinstance(stage, dict):
            raise ValueError(f"{where}: every stage must be a table, got {type(stage).__name__}")
        merged = dict(defaults)
        for key, value in stage.items():
            both = isinstance(value, dict) and isinstance(merged.get(key), dict)
            merged[key] = {**merged[key], **value} if both else value
        stages.append(merged)
    data["stages"] = stages
    return _build(Recipe, data, where)


def load_recipe(path: str | Path) -> Recipe:
    """Read a .toml or .json recipe; relative data/model paths are resolved against the file's folder."""
    path = Path(path)
    text = safe_read.read_text(path, "recipe", MAX_RECIPE_BYTES)
    if path.suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError) as err:
            raise ValueError(f"recipe {path} is not valid toml: {err}") from None
    else:
        data = safe_read.parse_json(text, f"recipe {path}", kind=None)
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path} must hold a table/object of recipe fields, got {type(data).__name__}")
    if "preset" in data:
        base = get_recipe_preset(data.pop("preset")).to_dict()
        data = {**base, **data}
    return _resolve_paths(recipe_from_dict(data, str(path)), path.parent)


def _resolve_paths(recipe: Recipe, root: Path) -> Recipe:
    def fix(p: str | None) -> str | None:
        if p is None or p == SYNTHETIC or Path(p).is_absolute() or not (root / p).exists():
            return p  # hub ids and not-yet-existing paths stay as written
        return str((root / p).resolve())

    stages = tuple(
        dataclasses.replace(s, sources={k: dataclasses.replace(v, path=fix(v.path)) for k, v in s.sources.items()})
        for s in recipe.stages
    )
    model = recipe.model
    model = dataclasses.replace(model, config=fix(model.config), pretrained=fix(model.pretrained))
    return dataclasses.replace(recipe, stages=stages, model=model, vae=fix(recipe.vae), null_text=fix(recipe.null_text),
                               text_encoder=fix(recipe.text_encoder))  # fmt: skip


# ------------------------------------------------------------------------------------------------- presets


def _cpu_tiny() -> Recipe:
    image = Source(SYNTHETIC, batch_size=4, shuffle_window=64, buckets=("1x32x32",))
    video = Source(SYNTHETIC, batch_size=2, shuffle_window=64, buckets=("9x32x32",))
    repa = REPAConfig(enabled=True, feature_source="shards", tap_block=2, projector_width=32)
    route = RouteConfig(start=1, end=5, ratio=0.5)
    return Recipe(
        model=ModelSource(preset="tiny", overrides={"enable_text_cross_attention_single": False}),
        stages=(
            Stage("images", 8, {"image": image}, lr=2e-3, warmup_steps=2, repa=repa),
            Stage("joint", 8, {"image": image, "video": video}, ("image", "video", "video"), lr=2e-3, route=route,
                  repa=repa),
            Stage("cross-attention", 8, {"image": image, "video": video}, ("image", "video", "video"), lr=1e-3,
                  route=route, insert_cross_attention=True),
        ),
        log_every=2,
        checkpoint_every=4,
        ema_decay=0.99,
        parallel=ParallelConfig(param_dtype="float32", activation_checkpointing=False),
    )  # fmt: skip


def _motif_video_2b() -> Recipe:
    """The report's curriculum at full size. Paths and steps are placeholders (the report gives no step counts)."""
    dino = REPAConfig(enabled=True, teacher="dinov2", feature_source="shards")
    vjepa = REPAConfig(enabled=True, teacher="vjepa2", feature_source="shards")
    route = RouteConfig(start=2, end=26, ratio=0.5)
    pattern = ("image", "video", "video")

    def src(name: str, batch: int) -> Source:
        return Source(f"data/{name}", batch_size=batch)

    def joint(res: str, frames: str, img_batch: int, vid_batch: int) -> dict[str, Source]:
        return {"image": src(f"images-{res}", img_batch), "video": src(f"videos-{res}-{frames}", vid_batch)}

    stages = (
        Stage("s01-144p-images", 40_000, {"image": src("images-144p", 64)}, lr=1e-4, warmup_steps=2000, route=route,
              repa=dino),
        Stage("s02-144p-video", 30_000, joint("144p", "33-65f", 64, 16), pattern, lr=1e-4, route=route, repa=vjepa),
        Stage("s03-360p", 30_000, joint("360p", "33-65f", 32, 4), pattern, lr=1e-4, route=route, repa=vjepa),
        Stage("s04-480p-65f", 20_000, joint("480p", "65f", 16, 2), pattern, lr=5e-5, route=route),
        Stage("s05-480p-121f", 15_000, joint("480p", "121f", 16, 1), pattern, lr=5e-5, route=route),
        Stage("s06-480p-sft", 5_000, {"video": src("sft-480p", 1)}, lr=2e-5, route=route),
        Stage("s07-720p-121f", 10_000, joint("720p", "121f", 8, 1), pattern, lr=2e-5, route=route),
        Stage("s08-360p-cross-attention", 10_000, joint("360p", "33-65f", 32, 4), pattern, lr=5e-5, route=route,
              insert_cross_attention=True),
        Stage("s09-720p", 5_000, joint("720p", "121f", 8, 1), pattern, lr=2e-5, route=route),
        Stage("s10-720p-sft", 2_000, {"video": src("sft-720p", 1)}, lr=1e-5, route=route),
    )  # fmt: skip
    return Recipe(
        model=ModelSource(preset="motif-video-2b", overrides={"enable_text_cross_attention_single": False}),
        stages=stages,
        log_every=10,
        checkpoint_every=1000,
        ema_decay=0.9999,
        parallel=ParallelConfig(),
    )


RECIPE_PRESETS = {"cpu-tiny": _cpu_tiny, "motif-video-2b": _motif_video_2b}


def get_recipe_preset(name: str) -> Recipe:
    if name not in RECIPE_PRESETS:
        raise ValueError(f"unknown recipe preset {name!r}; choose one of {sorted(RECIPE_PRESETS)}")
    return RECIPE_PRESETS[name]()


__all__ = [
    "RECIPE_PRESETS",
    "SYNTHETIC",
    "ModelSource",
    "Recipe",
    "Source",
    "Stage",
    "get_recipe_preset",
    "load_recipe",
    "recipe_from_dict",
]
