"""The release folder: the official diffusers layout, and the one reader of it (writing: `core.release_writer`).

    model_index.json     {"_class_name": "MotifVideoPipeline", "<component>": [library, class], ...,
                          "_motif_video_defaults": {GenerationDefaults fields}}  (diffusers ignores `_` keys)
    transformer/         our `MotifVideoTransformer`, whatever class the index names (the official index says
                         diffusers' `MotifVideoTransformer3DModel`; the weights are the same)
    vae/                 diffusers `AutoencoderKLWan`
    text_encoder/        transformers `T5Gemma2Encoder` (with the SigLIP vision tower)
    tokenizer/           transformers tokenizer (Gemma)
    scheduler/           a diffusers flow scheduler
    guider/              optional: a diffusers guider config, read as a plain dict
    feature_extractor/   transformers `SiglipImageProcessor` (I2V)

- Sources: a local folder, or a hub id `owner/name` (the one rule: `is_hub_id`) fetched with
  `huggingface_hub.snapshot_download`, so its cache and offline mode apply.
- Classes come from an allow-list (`core.model_files`), and every component folder is checked before a library
  reads it: no remote code, no pickled weights, bounded files, shard paths inside their folder.
- `load_components` is the one reader: the pipeline, data preparation and the CLI take what they need from its dict.
- The shipped small model: `small_model_dir` looks inside the installed package (`_weights/`, for a wheel that
  bundles it), then in the repository checkout (`models/`, for the editable install from src/).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from motif_video import safe_read
from motif_video.bounds import check_types
from motif_video.core.flow import DEFAULT_SHIFT_I2V, DEFAULT_SHIFT_T2V
from motif_video.core.model_files import ALLOWED_CLASSES, check_component_folder, check_index_entries
from motif_video.models.checkpoint_io import CheckpointError, is_hub_id
from motif_video.models.config import MotifVideoConfig

INDEX = "model_index.json"
DEFAULTS_KEY = "_motif_video_defaults"
GUIDER_FILES = ("guider_config.json", "config.json")
REQUIRED = ("transformer", "vae", "scheduler")
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor", "guider")
LIBRARIES = ("diffusers", "transformers")
PIPELINE_CLASS = "MotifVideoPipeline"
TRANSFORMER_CLASS = ["diffusers", "MotifVideoTransformer3DModel"]

OFFICIAL_NEGATIVE_PROMPT = (
    "text overlay, graphic overlay, watermark, logo, subtitles, timestamp, broadcast graphics, UI elements, "
    "random letters, frozen pose, rigid, static expression, jerky motion, mechanical motion, discontinuous "
    "motion, flat framing, depthless, dull lighting, monotone, crushed shadows, blown-out highlights, shifting "
    "background, fading background, poor continuity, identity drift, deformation, flickering, ghosting, "
    "smearing, duplication, mutated proportions, inconsistent clothing, flat colors, desaturated, tonally "
    "compressed, poor background separation, exposure shift, uneven brightness, color balance shift"
)


@dataclass(frozen=True)
class GenerationDefaults:
    """What a call uses when it does not say; official: 1280x736, 121 frames at 24 fps, 50 steps, shift 15 (T2V) /
    8 (I2V), the official negative prompt. A release stores its own (the small model: 64x64, shift 3, no negative)."""

    height: int = 736
    width: int = 1280
    num_frames: int = 121
    fps: int = 24
    num_inference_steps: int = 50
    shift_t2v: float = DEFAULT_SHIFT_T2V
    shift_i2v: float = DEFAULT_SHIFT_I2V
    negative_prompt: str = OFFICIAL_NEGATIVE_PROMPT
    noise_correlation: float = 0.0  # between latent frames of the starting noise (`latents.correlate_frames`)
    # How fast the encoder's output moves along t, measured on this model (`pipeline.step_cache.calibrate`):
    # {"t": [...], "cond": [...], "uncond": [...]}; the "calibrated:T" step-reuse rule reads it. None: not measured.
    step_cache: dict[str, list[float]] | None = None


def read_defaults(index: Mapping[str, Any]) -> GenerationDefaults:
    """The index's stored defaults over the official ones (unknown keys from newer writers are ignored)."""
    stored = index.get(DEFAULTS_KEY) or {}
    if not isinstance(stored, dict):
        raise CheckpointError(f"{INDEX}: {DEFAULTS_KEY} must be an object, got {type(stored).__name__}")
    known = {f.name for f in fields(GenerationDefaults)}
    defaults = GenerationDefaults(**{k: v for k, v in stored.items() if k in known})
    try:
        check_types(defaults, f"{INDEX} {DEFAULTS_KEY}")
    except TypeError as err:
        raise CheckpointError(str(err)) from None
    return defaults


# ---------------------------------------------------------------------------------------------------- locating

SMALL_MODEL_NAME = "motif-video-small"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # src/motif_video
SMALL_MODEL_CANDIDATES: tuple[Path, ...] = (
    _PACKAGE_DIR / "_weights" / SMALL_MODEL_NAME,
    _PACKAGE_DIR.parents[1] / "models" / SMALL_MODEL_NAME,  # src/motif_video -> the repository root
)


def small_model_dir(candidates: Sequence[Path] | None = None) -> Path:
    """The first candidate folder holding a release (`model_index.json`); CheckpointError when none does."""
    folders = tuple(SMALL_MODEL_CANDIDATES if candidates is None else candidates)
    for folder in folders:
        if (folder / INDEX).is_file():
            return folder
    looked = " or ".join(str(f) for f in folders)
    raise CheckpointError(
        f"the small model is not trained/shipped yet: no release folder ({INDEX}) at {looked}; "
        "train and export it there, or pass --model FOLDER"
    )


def resolve_folder(
    path_or_hub_id: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> Path:
    """A local folder as is; a hub id resolved to its snapshot folder (downloaded unless cached)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_hub_id)
    if not is_hub_id(text):
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


def read_index(folder: Path, supplied: Iterable[str] = ()) -> dict[str, Any]:
    """The folder's model_index.json; every REQUIRED component must be there unless `supplied` by the caller."""
    index_path = folder / INDEX
    if not index_path.is_file():
        raise CheckpointError(f"{folder} is not a Motif-Video release folder: {INDEX} is missing")
    try:
        index = safe_read.read_json(index_path, "release index")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    check_index_entries(index, index_path)
    supplied = set(supplied)
    for name in REQUIRED:
        if name in supplied:
            continue
        entry = index.get(name)
        if not isinstance(entry, list) or None in entry:
            raise CheckpointError(f"{index_path} has no {name!r} component")
        if not (folder / name).is_dir():
            raise CheckpointError(f"{folder} is incomplete: the {name}/ folder named in {INDEX} is missing")
    return index


def read_component_config(folder: Path, name: str) -> dict[str, Any] | None:
    """`<name>/config.json` of a release as a dict (no weights read); None when the component has none."""
    path = folder / name / "config.json"
    if not path.is_file():
        return None
    try:
        return safe_read.read_json(path, "config")
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def check_release(folder: Path, names: Iterable[str] = COMPONENTS) -> tuple[dict[str, Any], MotifVideoConfig | None]:
    """Everything about a local release that needs no model load: the index and its classes, the folders of the
    components `names` (`model_files`), and the transformer's config.json (types and bounds). -> (index, config)."""
    names = set(names)
    index = read_index(folder, [n for n in REQUIRED if n not in names])
    for name in COMPONENTS:
        if name in names and name != "guider" and isinstance(index.get(name), list) and (folder / name).is_dir():
            check_component_folder(folder / name, name)
    if "transformer" not in names:
        return index, None
    stored = read_component_config(folder, "transformer")
    if stored is None:
        return index, None
    try:
        return index, MotifVideoConfig.from_dict(stored)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / 'transformer' / 'config.json'}: {err}") from None


# ---------------------------------------------------------------------------------------------------- loading


def load_components(
    path_or_hub_id: str | os.PathLike,
    names: Iterable[str] = COMPONENTS,
    *,
    given: Mapping[str, Any] | None = None,
    torch_dtype: torch.dtype | None = None,
    vae_dtype: torch.dtype | None = None,
    text_encoder_dtype: torch.dtype | None = None,
    fuse_qkv: bool = True,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
) -> dict[str, Any]:
    """Load a release's components into a dict: each of `names` (None when the release has none), the `guider` as
    its raw diffusers config dict, and `defaults` (GenerationDefaults).

    `given` entries are returned as they are instead of being loaded (None skips a component). The VAE and the text
    encoder load in their own dtype when one is given, else in `torch_dtype`, as every other model."""
    given = dict(given or {})
    asked = {*names, *given}
    unknown = sorted(asked - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown components {unknown}")
    wanted = [n for n in COMPONENTS if n in asked]
    folder = resolve_folder(path_or_hub_id, revision, cache_dir, local_files_only, token)
    index = read_index(folder, [n for n in REQUIRED if n in given or n not in asked])
    dtypes = dict(transformer=torch_dtype, vae=vae_dtype or torch_dtype, text_encoder=text_encoder_dtype or torch_dtype)
    loaded: dict[str, Any] = {}
    for name in wanted:
        entry = index.get(name)
        if name in given:
            loaded[name] = given[name]
        elif not isinstance(entry, list) or None in entry or not (folder / name).is_dir():
            loaded[name] = None
        else:
            try:
                loaded[name] = _load_one(name, entry, folder, dtypes.get(name), fuse_qkv)
            except CheckpointError:
                raise
            except Exception as err:
                raise CheckpointError(f"cannot load {name} from {folder / name}: {err}") from None
    if loaded.get("tokenizer") is not None and "text_encoder" in loaded and loaded["text_encoder"] is None:
        raise CheckpointError(f"{folder} has a tokenizer but no text_encoder/")
    loaded["defaults"] = read_defaults(index)
    return loaded


def _load_one(name: str, entry: list[str], folder: Path, dtype: torch.dtype | None, fuse_qkv: bool) -> Any:
    path = folder / name
    check_component_folder(path, name)
    if name == "transformer":
        from motif_video.models.transformer import MotifVideoTransformer

        return MotifVideoTransformer.from_pretrained(str(path), torch_dtype=dtype, fuse_qkv=fuse_qkv)
    if name == "guider":
        return read_guider(path)
    if name == "tokenizer":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    cls = _library_class(name, entry)
    if name == "vae":
        return cls.from_pretrained(str(path), torch_dtype=dtype, use_safetensors=True).eval()
    if name == "text_encoder":
        return cls.from_pretrained(str(path), dtype=dtype, use_safetensors=True, trust_remote_code=False).eval()
    return cls.from_pretrained(str(path))


def _library_class(name: str, entry: list[str]) -> type:
    library, class_name = entry
    if library not in LIBRARIES or class_name not in ALLOWED_CLASSES.get(name, {}).get(library, set()):
        raise CheckpointError(f"component {name}: {library}.{class_name} is not a class motif-video loads")
    module = __import__(library)
    cls = getattr(module, class_name, None)
    if cls is None:
        raise CheckpointError(f"component {name}: {library} {module.__version__} has no class {class_name}")
    return cls


def read_guider(path: Path) -> dict[str, Any]:
    """The guider folder's diffusers config (`_class_name` and the guider's settings) as a dict."""
    for name in GUIDER_FILES:
        if (path / name).is_file():
            try:
                return safe_read.read_json(path / name, "guider config")
            except ValueError as err:
                raise CheckpointError(str(err)) from None
    raise CheckpointError(f"{path} has none of {GUIDER_FILES}")


__all__ = [
    "COMPONENTS",
    "DEFAULTS_KEY",
    "GUIDER_FILES",
    "INDEX",
    "OFFICIAL_NEGATIVE_PROMPT",
    "REQUIRED",
    "SMALL_MODEL_CANDIDATES",
    "TRANSFORMER_CLASS",
    "GenerationDefaults",
    "check_release",
    "is_hub_id",
    "load_components",
    "read_component_config",
    "read_defaults",
    "read_guider",
    "read_index",
    "resolve_folder",
    "small_model_dir",
]
