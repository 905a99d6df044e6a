"""Reading and writing the official `transformer/` folder: `config.json` + safetensors (single or sharded).

- Sources: a local folder or a Hugging Face hub id (through `huggingface_hub`, so its cache, `HF_HOME`,
  `HF_HUB_OFFLINE` and token settings apply), with an optional `subfolder`.
- Layout: the Shared Cross-Attention layout (`shared` or `diffusers`) is detected from the keys; a
  `config.json` that names a different one, or that enables cross-attention the weights do not have, is an
  error.
- Strict: a missing, unexpected or mis-shaped tensor is an error naming the key. Only safetensors are read;
  pickle (`.bin`, `.pt`) is never loaded. Checked before anything is allocated: `config.json` (bounded, typed),
  every shard's header (`safetensors_header`) against the model the config describes, and shard names of a sharded
  index (they must stay inside the folder).
- Writes go to temporary names first and are renamed into place, so an interrupted save never leaves a
  folder that looks complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from motif_video import safe_read
from motif_video.atomic import atomic_path
from motif_video.models.config import MotifVideoConfig
from motif_video.models.safetensors_header import PICKLE_SUFFIXES, pickle_refusal, read_header

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
PICKLE_NAMES = tuple(
    f"{stem}{suffix}" for stem in ("diffusion_pytorch_model", "pytorch_model") for suffix in PICKLE_SUFFIXES
)


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded as it is; the message says what is wrong and where."""


# ----------------------------------------------------------------------------------------------------
# Locating files
# ----------------------------------------------------------------------------------------------------
def is_hub_id(text: str | os.PathLike) -> bool:
    """The one hub-id rule: `owner/name` and nothing else; not an existing path, nothing that starts like one."""
    text = str(text)
    if text.startswith((".", "/", "~")) or Path(text).exists():
        return False
    owner, _, name = text.partition("/")
    return bool(owner) and bool(name) and "/" not in name


def _resolve_file(source: str, subfolder: str | None, filename: str, required: bool, **hub: Any) -> Path | None:
    local = Path(source)
    if local.is_dir():
        path = local / subfolder / filename if subfolder else local / filename
        if path.is_file():
            return path
        if required:
            raise CheckpointError(f"{path} not found: is {local} a `transformer/` folder of the release?")
        return None
    if not is_hub_id(source):
        raise CheckpointError(f"{source} is not a folder: give a `transformer/` folder or a hub id like 'org/name'")
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(huggingface_hub.hf_hub_download(source, filename, subfolder=subfolder, **hub))
    except LocalEntryNotFoundError as err:  # offline, or the network failed, and the file is not cached
        if not required:
            return None
        raise CheckpointError(
            f"{source!r} is not a local folder and could not be fetched from the hub ({err}). "
            "Check the id, your network, or HF_HUB_OFFLINE and the hub cache"
        ) from None
    except EntryNotFoundError:
        if required:
            raise CheckpointError(f"hub repo {source!r} has no {subfolder or '.'}/{filename}") from None
        return None
    except HfHubHTTPError as err:  # unknown repo, gated repo, bad revision, ...
        raise CheckpointError(f"could not read {filename} of hub repo {source!r}: {err}") from None


def _weight_files(source: str, subfolder: str | None, **hub: Any) -> list[Path]:
    single = _resolve_file(source, subfolder, WEIGHTS_NAME, required=False, **hub)
    if single is not None:
        return [single]
    index = _resolve_file(source, subfolder, INDEX_NAME, required=False, **hub)
    if index is not None:
        try:
            weight_map = safe_read.read_json(index, "weight index").get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise ValueError(f"weight index {index} has no weight_map of file names")
            names = sorted(set(weight_map.values()))
            for name in names:  # inside the index's folder: never a path that leads elsewhere
                safe_read.inside(index.parent, name, "weight shard")
        except ValueError as err:
            raise CheckpointError(str(err)) from None
        return [_resolve_file(source, subfolder, name, True, **hub) for name in names]
    for name in PICKLE_NAMES:
        found = _resolve_file(source, subfolder, name, required=False, **hub)
        if found is not None:
            raise CheckpointError(pickle_refusal(found, WEIGHTS_NAME))
    raise CheckpointError(f"{source}: neither {WEIGHTS_NAME} nor {INDEX_NAME} found")


def read_headers(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """{key: shape} over the shards' headers, read without allocating a tensor; duplicates are an error."""
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        try:
            header = read_header(file)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
        for key, info in header.items():
            if key in shapes:
                raise CheckpointError(f"tensor {key!r} appears in more than one shard ({file.name})")
            shapes[key] = info.shape
    return shapes


def read_state_dict(files: list[Path], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key in state:
                        raise CheckpointError(f"tensor {key!r} appears in more than one shard ({file.name})")
                    tensor = f.get_tensor(key)
                    state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        except CheckpointError:
            raise
        except Exception as err:  # safetensors' SafetensorError, OSError: a corrupt or unreadable file
            raise CheckpointError(f"cannot read {file}: {err}") from None
    return state


# ----------------------------------------------------------------------------------------------------
# Layout detection and strict checks
# ----------------------------------------------------------------------------------------------------
def detect_cross_attention_layout(keys: list[str] | set[str]) -> str | None:
    """'shared', 'diffusers', or None when the weights hold no cross-attention."""
    shared = any(".cross_attn_query_proj." in k for k in keys)
    diffusers = any(".cross_attn.to_q." in k for k in keys)
    if shared and diffusers:
        raise CheckpointError("the weights mix both cross-attention layouts (cross_attn_query_proj and cross_attn.*)")
    return "shared" if shared else "diffusers" if diffusers else None


def reconcile_config(config_dict: dict[str, Any], keys: set[str], where: str = "config.json") -> MotifVideoConfig:
    """Config from `config.json` (named `where` in errors), with the cross-attention layout taken from (and checked
    against) the keys."""
    layout = detect_cross_attention_layout(keys)
    declared = config_dict.get("cross_attention_layout")
    if layout is not None and declared is not None and declared != layout:
        raise CheckpointError(f"{where} says cross_attention_layout={declared!r} but the weights are {layout!r}")
    data = dict(config_dict)
    if layout is not None:
        data["cross_attention_layout"] = layout
    try:
        config = MotifVideoConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{where}: {err}") from None
    enabled = config.enable_text_cross_attention_dual or (
        config.enable_text_cross_attention_single and config.num_encoder_single_layers > 0
    )
    if enabled and layout is None:
        raise CheckpointError(
            f"{where} enables text cross-attention (enable_text_cross_attention_*), "
            "but the weights hold no cross-attention tensors"
        )
    if layout is not None and not enabled:
        raise CheckpointError(f"the weights hold cross-attention tensors, but {where} enables no cross-attention")
    return config


def check_state_dict(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> None:
    """Raise naming every missing, unexpected and mis-shaped key (the first few of each)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(found[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    problems = []
    for title, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        if items:
            shown = ", ".join(items[:5]) + (f", ... ({len(items) - 5} more)" if len(items) > 5 else "")
            problems.append(f"{len(items)} {title} tensor(s): {shown}")
    if problems:
        raise CheckpointError(
            "weights do not match config.json: " + "; ".join(problems) + ". Is config.json from the same release?"
        )


# ----------------------------------------------------------------------------------------------------
# Load and save
# ----------------------------------------------------------------------------------------------------
def load_transformer(
    cls: type,
    path_or_hub_id: str | os.PathLike,
    subfolder: str | None = None,
    torch_dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    fuse_qkv: bool = True,
    revision: str | None = None,
    cache_dir: str | None = None,
    local_files_only: bool | None = None,
    token: str | bool | None = None,
):
    """Load a model exactly as stored. `fuse_qkv` fuses q/k/v projections for inference speed."""
    source = str(path_or_hub_id)
    hub = {k: v for k, v in dict(revision=revision, cache_dir=cache_dir, token=token).items() if v is not None}
    if local_files_only is not None:
        hub["local_files_only"] = local_files_only
    config_path = _resolve_file(source, subfolder, CONFIG_NAME, required=True, **hub)
    try:
        config_dict = safe_read.read_json(config_path, "config")
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    files = _weight_files(source, subfolder, **hub)
    shapes = read_headers(files)  # names and shapes first: nothing is allocated for a checkpoint that cannot fit
    config = reconcile_config(config_dict, set(shapes), str(config_path))
    with torch.device("meta"):
        model = cls(config)
    check_state_dict(model.state_dict(), {k: torch.empty(v, device="meta") for k, v in shapes.items()})
    state = read_state_dict(files, torch_dtype)
    check_state_dict(model.state_dict(), state)
    model.load_state_dict(state, strict=True, assign=True)
    if device is not None:
        model.to(device)
    if fuse_qkv:
        model.fuse_qkv_projections()
    return model.eval()


def save_transformer(
    model: torch.nn.Module, save_directory: str | os.PathLike, max_shard_size: int | str = "5GB"
) -> None:
    """Write `config.json` and the weights (sharded with an index above `max_shard_size`).

    A model that still carries LoRA layers is refused: its state dict holds peft's keys (`base_layer`, `lora_A`),
    which no loader of the official layout reads back."""
    from huggingface_hub import split_torch_state_dict_into_shards

    if getattr(model, "peft_config", None):
        raise ValueError(
            "the transformer has unfused LoRA adapters "
            f"({', '.join(model.peft_config)}): call fuse_lora() to save the adapted weights, "
            "or save_lora_weights() to save the adapter alone"
        )
    out = Path(save_directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    split = split_torch_state_dict_into_shards(
        state, filename_pattern="diffusion_pytorch_model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for stale in [WEIGHTS_NAME, INDEX_NAME, *out.glob("diffusion_pytorch_model-*.safetensors")]:
        (out / stale).unlink(missing_ok=True)
    for filename, keys in split.filename_to_tensors.items():
        _atomic_write(out / filename, lambda tmp, keys=keys: save_file({k: state[k] for k in keys}, tmp))
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        _atomic_write(out / INDEX_NAME, lambda tmp: Path(tmp).write_text(json.dumps(index, indent=2)))
    config = model.config.to_dict()
    _atomic_write(out / CONFIG_NAME, lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2) + "\n"))


def _atomic_write(path: Path, write) -> None:
    with atomic_path(path) as tmp:
        write(tmp)
