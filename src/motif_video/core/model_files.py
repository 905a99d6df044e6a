"""What a model folder may hold before any library reads it: nothing in it can run code.

A release (or a teacher, a text encoder folder) comes from someone else, so every component folder is checked
before diffusers or transformers see it:

- Classes: `model_index.json` may name only the classes of `ALLOWED_CLASSES` (the official release's and the few
  alternatives this package writes); any other library or class is refused, so no name in a file picks the code.
- Remote code: a config that carries `auto_map` (transformers' door to Python files shipped in the folder) is
  refused, and loaders are called with `trust_remote_code=False`, so no prompt ever asks.
- Weights: safetensors only. A folder whose weights are only a pickle (`.bin`, `.pt`, `.pth`, `.ckpt`) is refused
  with the one-line conversion; loaders are called with `use_safetensors=True`.
- Bounds: JSON files are read through `safe_read` (size and nesting), safetensors headers through
  `models.safetensors_header` (size, tensor count, offsets), and a sharded index may only name files inside its
  folder.
Errors are `CheckpointError` (a ValueError) naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from motif_video import safe_read
from motif_video.models.checkpoint_io import CheckpointError
from motif_video.models.safetensors_header import PICKLE_SUFFIXES, pickle_refusal, read_header

TOKENIZERS = {"PreTrainedTokenizerFast", "TokenizersBackend", "GemmaTokenizer", "GemmaTokenizerFast"}
ALLOWED_CLASSES: dict[str, dict[str, set[str]]] = {  # component -> library -> classes
    "transformer": {"diffusers": {"MotifVideoTransformer3DModel"}, "motif_video": {"MotifVideoTransformer"}},
    "vae": {"diffusers": {"AutoencoderKLWan"}},
    "text_encoder": {"transformers": {"T5Gemma2Encoder"}},
    "tokenizer": {"transformers": TOKENIZERS},
    "scheduler": {
        "diffusers": {"FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler", "DPMSolverMultistepScheduler"}
    },
    "feature_extractor": {
        "transformers": {"SiglipImageProcessor", "SiglipImageProcessorFast", "SiglipImageProcessorPil"}
    },
    "guider": {"diffusers": {"AdaptiveProjectedGuidance", "ClassifierFreeGuidance"}},
}
REMOTE_CODE_KEYS = ("auto_map",)
WEIGHT_TARGETS = {"vae": "diffusion_pytorch_model.safetensors", "transformer": "diffusion_pytorch_model.safetensors"}


def check_index_entries(index: Mapping[str, Any], where: Path | str) -> None:
    """Every component entry of a `model_index.json` names an allowed [library, class] (or [null, null])."""
    for name, allowed in ALLOWED_CLASSES.items():
        entry = index.get(name)
        if entry is None or (isinstance(entry, list) and entry in ([None, None], [None])):
            continue
        if not (isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)):
            raise CheckpointError(f"{where}: component {name!r} must be [library, class], got {entry!r}")
        library, class_name = entry
        if class_name not in allowed.get(library, set()):
            names = ", ".join(f"{lib}.{cls}" for lib, classes in allowed.items() for cls in sorted(classes))
            raise CheckpointError(
                f"{where}: component {name!r} names {library}.{class_name}, which motif-video does not load "
                f"(allowed: {names})"
            )


def check_component_folder(folder: str | Path, name: str | None = None) -> None:
    """Refuse a component folder holding remote code, only pickled weights, escaping shard paths or oversized
    files; `name` (the component) picks the expected weight file name in the conversion hint."""
    folder = Path(folder)
    try:
        files = sorted(p for p in folder.iterdir() if p.is_file())
    except OSError as err:
        raise CheckpointError(f"cannot read {folder}: {err.strerror or err}") from None
    tensors = [p for p in files if p.suffix == ".safetensors"]
    for path in files:
        if path.suffix == ".json":
            _check_json(path, folder)
    for path in tensors:
        try:
            read_header(path)
        except ValueError as err:
            raise CheckpointError(str(err)) from None
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles and not tensors:
        target = WEIGHT_TARGETS.get(name or "", "model.safetensors")
        raise CheckpointError(pickle_refusal(pickles[0], target))


def _check_json(path: Path, folder: Path) -> None:
    try:
        data = safe_read.read_json(path, "config", kind=None)
        if not isinstance(data, dict):
            return  # a list-valued json (e.g. added tokens) holds no code or paths
        remote = [key for key in REMOTE_CODE_KEYS if key in data]
        if remote or "auto_map" in (data.get("init_kwargs") or {}):
            raise CheckpointError(
                f"{path} names remote code ({remote[0] if remote else 'auto_map'}): motif-video never runs code "
                "from a model folder; remove that entry, or use the official release's files"
            )
        tokenizer = data.get("tokenizer_class")
        if path.name == "tokenizer_config.json" and tokenizer is not None and tokenizer not in TOKENIZERS:
            raise CheckpointError(f"{path}: tokenizer_class {tokenizer!r} is not one motif-video loads "
                                  f"({', '.join(sorted(TOKENIZERS))})")  # fmt: skip
        if path.name.endswith(".index.json"):
            weight_map = data.get("weight_map") or {}
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{path}: weight_map must map tensor names to file names")
            for shard in set(weight_map.values()):
                safe_read.inside(folder, shard, "weight shard")
    except ValueError as err:
        raise CheckpointError(str(err)) from None


__all__ = ["ALLOWED_CLASSES", "TOKENIZERS", "check_component_folder", "check_index_entries"]
