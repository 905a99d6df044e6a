"""Writing a release folder (the layout is in `core.release`): the one writer of `model_index.json`.

- A write starts with `open_release`, which removes the index, and ends with `write_index`, which writes it
  atomically and last: a folder holding a `model_index.json` is complete, an interrupted write leaves none.
- Every file and folder of a release gets the ordinary mode of the umask (0644 / 0755 under umask 022) before the
  index is written, whatever wrote or copied it (`tempfile` makes 0600 files, `shutil.copy2` keeps the source's).
- `copy_release` makes a release from a base release and new transformer weights, after `check_fits` has checked
  (from the base's config.json files, no weights read) that the base's VAE, text encoder and SigLIP tower feed the
  new transformer; a base that does not fit is refused before anything is written.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from motif_video.atomic import write_json
from motif_video.core.release import (
    DEFAULTS_KEY,
    GUIDER_FILES,
    INDEX,
    LIBRARIES,
    PIPELINE_CLASS,
    TRANSFORMER_CLASS,
    read_component_config,
    read_index,
    resolve_folder,
)
from motif_video.models.config import MotifVideoConfig

# I2V transformer input = [noisy latent | first-frame latent | mask]: 2 * latent channels + 1 (core.latent_space)
CONDITION_MASK_CHANNELS = 1


def new_index(entries: Mapping[str, list[str | None]], defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The model_index.json dict: the pipeline class, diffusers' version, `entries` ({component: [library, class]})
    and our generation defaults when given."""
    import diffusers

    index: dict[str, Any] = {"_class_name": PIPELINE_CLASS, "_diffusers_version": diffusers.__version__}
    index.update({name: list(entry) for name, entry in entries.items()})
    if defaults is not None:
        index[DEFAULTS_KEY] = dict(defaults)
    return index


def library_entry(component: Any) -> list[str]:
    """[library, class] of a diffusers / transformers component, as the index lists it."""
    library = type(component).__module__.split(".")[0]
    if library not in LIBRARIES:
        raise ValueError(f"cannot save a {type(component).__name__}: only diffusers/transformers components")
    return [library, type(component).__name__]


def open_release(directory: str | os.PathLike) -> Path:
    """Make the folder and remove its index: until `write_index` puts one back, the folder reads as incomplete."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    (root / INDEX).unlink(missing_ok=True)
    return root


def write_guider(folder: Path, config: Mapping[str, Any]) -> Path:
    """A guider's diffusers config (with `_class_name`) as `guider/guider_config.json`."""
    import diffusers

    folder.mkdir(parents=True, exist_ok=True)
    return write_json(folder / GUIDER_FILES[0], {**config, "_diffusers_version": diffusers.__version__}, indent=2)


def write_index(directory: str | os.PathLike, index: Mapping[str, Any]) -> Path:
    """Give every file under the folder its ordinary mode, then write `model_index.json` atomically (last)."""
    root = Path(directory)
    ordinary_modes(root)
    return write_json(root / INDEX, dict(index), indent=2, sort_keys=True)


def ordinary_modes(root: Path) -> None:
    """Files under `root` get 0666 and folders 0777, less the umask (what a plain `open` / `mkdir` gives)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(root, 0o777 & ~mask)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o666 & ~mask)


def check_fits(folder: Path, transformer_config: MotifVideoConfig | Mapping[str, Any]) -> None:
    """Refuse (ValueError naming every mismatch) a release whose components cannot feed this transformer: VAE latent
    channels vs out_channels and in_channels, text width vs text_embed_dim, SigLIP width vs image_embed_dim, and the
    release transformer's patch (the release's default sizes were chosen for it)."""
    config = transformer_config.to_dict() if isinstance(transformer_config, MotifVideoConfig) else transformer_config
    ours = {**MotifVideoConfig().to_dict(), **config}
    problems = []
    vae = read_component_config(folder, "vae") or {}
    latent = vae.get("z_dim", vae.get("latent_channels"))
    if latent is not None:
        if ours["out_channels"] != latent:
            problems.append(f"VAE latent channels {latent} vs transformer out_channels {ours['out_channels']}")
        if ours["in_channels"] != 2 * latent + CONDITION_MASK_CHANNELS:
            problems.append(
                f"transformer in_channels {ours['in_channels']} vs 2 x {latent} VAE latent channels + 1 mask = "
                f"{2 * latent + CONDITION_MASK_CHANNELS}"
            )
    encoder = read_component_config(folder, "text_encoder") or {}
    text = encoder.get("text_config") or encoder
    width, dim = text.get("hidden_size"), ours["text_embed_dim"]
    if width is not None and width != dim:
        problems.append(f"text encoder width {width} vs transformer text_embed_dim {dim}")
    width, dim = (encoder.get("vision_config") or {}).get("hidden_size"), ours["image_embed_dim"]
    if None not in (width, dim) and width != dim:
        problems.append(f"SigLIP width {width} vs transformer image_embed_dim {dim}")
    theirs = read_component_config(folder, "transformer") or {}
    for key in ("patch_size", "patch_size_t"):
        if key in theirs and theirs[key] != ours[key]:
            problems.append(f"release transformer {key} {theirs[key]} vs {ours[key]}")
    if problems:
        raise ValueError(f"the release {folder} does not fit this transformer: {'; '.join(problems)}")


def copy_release(
    base: str | os.PathLike,
    out: str | os.PathLike,
    write_transformer: Callable[[Path], Any],
    transformer_config: MotifVideoConfig | Mapping[str, Any],
) -> Path:
    """A release at `out`: every component of the release `base` (folder or hub id) but its transformer, then
    `write_transformer(out / "transformer")`, then the base's index naming the transformer as the official release
    does. `base` must fit `transformer_config` (`check_fits`); nothing is written when it does not."""
    folder = resolve_folder(base)
    index = read_index(folder)
    out = Path(out)
    if out.exists() and out.resolve() == folder.resolve():
        raise ValueError(f"the output {out} is the base release itself: choose a new folder")
    check_fits(folder, transformer_config)
    open_release(out)
    for entry in sorted(folder.iterdir()):
        if entry.name in ("transformer", INDEX) or entry.name.startswith("."):
            continue
        if entry.is_dir():
            shutil.copytree(entry, out / entry.name, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, out / entry.name)
    write_transformer(out / "transformer")
    index["transformer"] = list(TRANSFORMER_CLASS)
    write_index(out, index)
    return out


__all__ = [
    "check_fits",
    "copy_release",
    "library_entry",
    "new_index",
    "open_release",
    "ordinary_modes",
    "write_guider",
    "write_index",
]
