"""Build our pipeline from a release folder (or hub id), and save one back in the same layout.

The release folder itself (layout, hub ids, the index, generation defaults, the component reader and writer) is
owned by `core.release` / `core.release_writer`; this module only turns the components into a pipeline: the guider
config becomes our `GuidanceConfig`, and `save_pipeline` writes what diffusers' `MotifVideoPipeline.from_pretrained`
also loads, plus our generation defaults in the index.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from motif_video.core.release import (
    DEFAULTS_KEY,
    GUIDER_FILES,
    INDEX,
    REQUIRED,
    TRANSFORMER_CLASS,
    load_components,
    read_index,
    resolve_folder,
)
from motif_video.core.release_writer import library_entry, new_index, open_release, write_guider, write_index
from motif_video.pipeline.guidance import GuidanceConfig

SAVED_COMPONENTS = ("vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor")  # besides transformer


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
    loaded = load_components(
        path_or_hub_id,
        given=components,
        torch_dtype=torch_dtype,
        vae_dtype=vae_dtype,
        text_encoder_dtype=text_encoder_dtype,
        fuse_qkv=fuse_qkv,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        token=token,
    )
    defaults = loaded.pop("defaults")
    guidance = as_guidance(loaded.pop("guider"))
    return pipeline_cls(**loaded, guidance=guidance, defaults=defaults, source=str(path_or_hub_id))


def as_guidance(guider: Any) -> GuidanceConfig | None:
    """Our GuidanceConfig from a guider config dict, a diffusers guider object, or a GuidanceConfig."""
    if guider is None or isinstance(guider, GuidanceConfig):
        return guider
    if isinstance(guider, dict):
        return GuidanceConfig.from_diffusers_config(guider)
    return GuidanceConfig.from_diffusers_config({"_class_name": type(guider).__name__, **guider.config})


def save_pipeline(pipe: Any, directory: str | os.PathLike, max_shard_size: int | str = "5GB") -> Path:
    """Write `pipe` in the release layout. Component folders are written before the index, so a folder whose
    `model_index.json` exists is complete."""
    root = open_release(directory)
    pipe.transformer.save_pretrained(str(root / "transformer"), max_shard_size=max_shard_size)
    entries: dict[str, list[str | None]] = {"transformer": list(TRANSFORMER_CLASS)}
    for name in SAVED_COMPONENTS:
        component = getattr(pipe, name)
        if component is None:
            entries[name] = [None, None]
            continue
        component.save_pretrained(str(root / name))
        entries[name] = library_entry(component)
    guider = pipe.guidance.to_diffusers_config()
    write_guider(root / "guider", guider)
    entries["guider"] = ["diffusers", guider["_class_name"]]
    write_index(root, new_index(entries, asdict(pipe.defaults)))
    return root


__all__ = [  # the layout names are re-exported for callers that still import them from here
    "DEFAULTS_KEY",
    "GUIDER_FILES",
    "INDEX",
    "REQUIRED",
    "TRANSFORMER_CLASS",
    "as_guidance",
    "load_pipeline",
    "read_index",
    "resolve_folder",
    "save_pipeline",
]
