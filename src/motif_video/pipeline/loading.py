"""Read and write the official release layout: `model_index.json` plus one folder per component.

    model_index.json     {"_class_name": "MotifVideoPipeline", "<component>": [library, class], ...}
    transformer/         our `MotifVideoTransformer`, whatever class the index names (the official index
                         says diffusers' `MotifVideoTransformer3DModel`; the weights are the same)
    text_encoder/        transformers `T5Gemma2Encoder` (with the SigLIP vision tower)
    tokenizer/           transformers tokenizer (Gemma)
    vae/                 diffusers `AutoencoderKLWan`
    scheduler/           a diffusers flow scheduler
    guider/              optional: diffusers `AdaptiveProjectedGuidance` / `ClassifierFreeGuidance` config,
                         read into our `GuidanceConfig`
    feature_extractor/   transformers `SiglipImageProcessor` (I2V)

Classes are looked up by name only inside the `diffusers` and `transformers` packages. A hub id is fetched with
`huggingface_hub.snapshot_download` (cache and offline mode apply). `save_pipeline` writes the same layout,
which diffusers' `MotifVideoPipeline.from_pretrained` also loads, plus our generation defaults under the
index key `_motif_video_defaults` (diffusers ignores keys that start with `_`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

from motif_video.models.checkpoint_io import CheckpointError
from motif_video.pipeline.guidance import GuidanceConfig

INDEX = "model_index.json"
DEFAULTS_KEY = "_motif_video_defaults"
GUIDER_FILES = ("guider_config.json", "config.json")
REQUIRED = ("transformer", "vae", "scheduler")
TRANSFORMER_CLASS = ["diffusers", "MotifVideoTransformer3DModel"]


def resolve_folder(
    path_or_hub_id: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> Path:
    """A local folder as is; otherwise a hub id resolved to its snapshot folder."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_hub_id)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"{text} is not a folder (nor a hub id of the form owner/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                text, revision=revision, cache_dir=cache_dir, local_files_only=bool(local_files_only), token=token
            )
        )
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"{text} is not in the local hub cache and cannot be downloaded here; download it first or pass a "
            f"folder ({err.__class__.__name__})"
        ) from None
    except Exception as err:  # network, auth, missing repo: one clear line
        raise CheckpointError(f"cannot fetch {text} from the hub: {err}") from None


def read_index(folder: Path, supplied: tuple[str, ...] = ()) -> dict[str, Any]:
    """The folder's model_index.json; every REQUIRED component must be there unless `supplied` by the caller."""
    index_path = folder / INDEX
    if not index_path.is_file():
        raise CheckpointError(f"{folder} is not a Motif-Video release folder: {INDEX} is missing")
    try:
        index = json.loads(index_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {index_path}: {err}") from None
    for name in REQUIRED:
        if name in supplied:
            continue
        entry = index.get(name)
        if not isinstance(entry, list) or None in entry:
            raise CheckpointError(f"{index_path} has no {name!r} component")
        if not (folder / name).is_dir():
            raise CheckpointError(f"{folder} is incomplete: the {name}/ folder named in {INDEX} is missing")
    return index


def _library_class(name: str, entry: list[str]) -> type:
    library, class_name = entry
    if library not in ("diffusers", "transformers"):
        raise CheckpointError(f"component {name}: library {library!r} is not diffusers or transformers")
    module = __import__(library)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise CheckpointError(f"component {name}: {library} {module.__version__} has no class {class_name}")
    return cls


def load_pipeline(
    pipeline_cls: type,
    path_or_hub_id: str | os.PathLike,
    torch_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    text_encoder_dtype: torch.dtype | None = None,
    fuse_qkv: bool = True,
    components: dict[str, Any] | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> Any:
    """Build a pipeline from a release folder or hub id. `components` overrides loading of named parts."""
    from motif_video.models.transformer import MotifVideoTransformer

    folder = resolve_folder(path_or_hub_id, revision, cache_dir, local_files_only, token)
    given = dict(components or {})
    index = read_index(folder, tuple(given))
    loaded: dict[str, Any] = {}

    def load(name: str, fn) -> None:
        if name in given:
            loaded[name] = given.pop(name)
            return
        entry = index.get(name)
        if not isinstance(entry, list) or None in entry or not (folder / name).is_dir():
            loaded[name] = None
            return
        try:
            loaded[name] = fn(entry)
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"cannot load {name} from {folder / name}: {err}") from None

    load(
        "transformer",
        lambda e: MotifVideoTransformer.from_pretrained(
            str(folder), subfolder="transformer", torch_dtype=torch_dtype, fuse_qkv=fuse_qkv
        ),
    )
    load(
        "vae",
        lambda e: (
            _library_class("vae", e).from_pretrained(str(folder / "vae"), torch_dtype=vae_dtype or torch_dtype).eval()
        ),
    )
    load(
        "text_encoder",
        lambda e: (
            _library_class("text_encoder", e)
            .from_pretrained(str(folder / "text_encoder"), dtype=text_encoder_dtype or torch_dtype)
            .eval()
        ),
    )
    load("tokenizer", lambda e: _load_tokenizer(folder / "tokenizer"))
    load("scheduler", lambda e: _library_class("scheduler", e).from_pretrained(str(folder / "scheduler")))
    load(
        "feature_extractor",
        lambda e: _library_class("feature_extractor", e).from_pretrained(str(folder / "feature_extractor")),
    )
    load("guider", lambda e: _read_guider(folder / "guider"))
    if given:
        raise ValueError(f"unknown components {sorted(given)}")
    if loaded["tokenizer"] is not None and loaded["text_encoder"] is None:
        raise CheckpointError(f"{folder} has a tokenizer but no text_encoder/")

    guidance = loaded.pop("guider")
    if guidance is not None and not isinstance(guidance, GuidanceConfig):
        guidance = GuidanceConfig.from_diffusers_config({"_class_name": type(guidance).__name__, **guidance.config})
    pipe = pipeline_cls(**loaded, guidance=guidance, defaults=_read_defaults(index), source=str(path_or_hub_id))
    return pipe


def _load_tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _read_guider(path: Path) -> GuidanceConfig:
    for name in GUIDER_FILES:
        if (path / name).is_file():
            return GuidanceConfig.from_diffusers_config(json.loads((path / name).read_text()))
    raise CheckpointError(f"{path} has none of {GUIDER_FILES}")


def _read_defaults(index: dict[str, Any]) -> Any:
    from motif_video.pipeline.pipeline import GenerationDefaults

    stored = index.get(DEFAULTS_KEY) or {}
    known = {f.name for f in fields(GenerationDefaults)}
    return GenerationDefaults(**{k: v for k, v in stored.items() if k in known})


def save_pipeline(pipe: Any, directory: str | os.PathLike, max_shard_size: int | str = "5GB") -> Path:
    """Write `pipe` in the release layout. Component folders are written before the index, so a folder whose
    `model_index.json` exists is complete."""
    import diffusers

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"_class_name": "MotifVideoPipeline", "_diffusers_version": diffusers.__version__}
    stale = root / INDEX
    if stale.exists():
        stale.unlink()

    pipe.transformer.save_pretrained(str(root / "transformer"), max_shard_size=max_shard_size)
    index["transformer"] = TRANSFORMER_CLASS
    for name in ("vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor"):
        component = getattr(pipe, name)
        if component is None:
            index[name] = [None, None]
            continue
        component.save_pretrained(str(root / name))
        index[name] = [_library_of(component), type(component).__name__]
    guider = pipe.guidance.to_diffusers_config()
    (root / "guider").mkdir(exist_ok=True)
    payload = {**guider, "_diffusers_version": diffusers.__version__}
    (root / "guider" / GUIDER_FILES[0]).write_text(json.dumps(payload, indent=2) + "\n")
    index["guider"] = ["diffusers", guider["_class_name"]]
    index[DEFAULTS_KEY] = asdict(pipe.defaults)
    tmp = root / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, root / INDEX)
    return root


def _library_of(component: Any) -> str:
    top = type(component).__module__.split(".")[0]
    if top not in ("diffusers", "transformers"):
        raise ValueError(f"cannot save a {type(component).__name__}: only diffusers/transformers components")
    return top
