"""Tuning the text encoder with the transformer: load it, grow it, train its text half, export it.

The official model keeps its T5Gemma2 encoder frozen: it was pre-trained on language. A model trained from scratch
on a small vocabulary has no such encoder, and a frozen RANDOM one binds a word to its object only through its
sliding window. A recipe can therefore name the encoder (`Recipe.text_encoder`,
a release folder or its `text_encoder/`) and let stages train it with the transformer
(`Stage.train_text_encoder`); stages that do not train it still encode every caption with the current weights, so
no shard's stored `text` can go stale. The vision tower and its projector always stay frozen (the shards' SigLIP
image tokens stay valid).

`Recipe.text_layers_added` appends full-attention layers after the encoder's own, each an exact identity at the
start (both post-norm gains zero: Gemma's norms scale by 1 + w and w = -1), so a release keeps producing what it
produced, and the new layers can learn to pass an object's role (first / second, which side of a relation) along
the whole caption, which a sliding window of a few words cannot. The encoder's final norm is unchanged.

`export_text_encoder` writes the trained encoder (its EMA where the checkpoint has one) as a transformers folder
that the pipeline loads like any other `text_encoder/`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch

TEXT_PREFIX = "text_encoder."  # a TrainModule's text-encoder keys


def release_part(folder: str | Path, name: str) -> Path:
    """`folder/name` when `folder` is a release, else `folder` (already the component's own folder)."""
    folder = Path(folder)
    return folder / name if (folder / name).is_dir() else folder


def load_text_encoder(folder: str | Path, layers_added: int = 0) -> tuple[Any, Any]:
    """(T5Gemma2 encoder in fp32 with `layers_added` identity full-attention layers, tokenizer) from a release
    folder, or from a `text_encoder/` folder whose sibling is `tokenizer/`."""
    from transformers import AutoTokenizer, T5Gemma2Encoder

    from motif_video.core.model_files import check_component_folder

    encoder_dir = release_part(folder, "text_encoder")
    tokenizer_dir = encoder_dir.parent / "tokenizer"
    for needed in (encoder_dir / "config.json", tokenizer_dir):
        if not needed.exists():
            raise ValueError(f"text_encoder {folder}: {needed} is missing; name a release folder with text_encoder/ "
                             "and tokenizer/")  # fmt: skip
    check_component_folder(encoder_dir, "text_encoder")
    check_component_folder(tokenizer_dir, "tokenizer")
    encoder = T5Gemma2Encoder.from_pretrained(
        str(encoder_dir), dtype=torch.float32, use_safetensors=True, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), trust_remote_code=False)
    if layers_added:
        encoder = grow_text_encoder(encoder, layers_added)
    return encoder, tokenizer


@torch.no_grad()
def grow_text_encoder(encoder: Any, layers_added: int, seed: int = 0) -> Any:
    """A copy of `encoder` with `layers_added` full-attention layers after its own, each an identity at the start;
    the new layers' weights are a pure function of `seed` (the caller's RNG state is untouched)."""
    from transformers import T5Gemma2Encoder

    if layers_added < 0:
        raise ValueError(f"text_layers_added must be >= 0, got {layers_added}")
    config = copy.deepcopy(encoder.config)
    text = config.text_config
    old = text.num_hidden_layers
    text.layer_types = [*text.layer_types[:old], *["full_attention"] * layers_added]
    text.num_hidden_layers = old + layers_added
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grown = T5Gemma2Encoder(config).to(torch.float32)
    missing, unexpected = grown.load_state_dict(encoder.state_dict(), strict=False)
    added = {f"text_model.layers.{i}." for i in range(old, old + layers_added)}
    if unexpected or any(not any(k.startswith(a) for a in added) for k in missing):
        raise RuntimeError(f"growing the text encoder lost weights: missing {missing}, unexpected {unexpected}")
    for layer in grown.text_model.layers[old:]:
        layer.post_self_attn_layernorm.weight.fill_(-1.0)
        layer.post_feedforward_layernorm.weight.fill_(-1.0)
    return grown.eval()


def set_text_trainable(encoder: Any, trainable: bool) -> None:
    """Only the text half learns; the vision tower and projector stay frozen."""
    encoder.requires_grad_(False)
    encoder.text_model.requires_grad_(trainable)


def export_text_encoder(encoder: Any, checkpoint: str | Path, out_dir: str | Path, *, use_ema: bool = True) -> bool:
    """Fill `encoder` (built as the run built it) with a checkpoint's text-encoder weights, EMA where it has them
    and `use_ema`, and save it to `out_dir`; returns whether EMA weights were used."""
    from motif_video.training.checkpoint import read_tensors, stored_tensors

    path = Path(checkpoint)
    stored = stored_tensors(path)
    names = {k[len("model.") + len(TEXT_PREFIX) :] for k in stored if k.startswith("model." + TEXT_PREFIX)}
    if not names:
        raise ValueError(f"{path} holds no text-encoder weights (no 'model.{TEXT_PREFIX}*'): the run did not tune it")
    state = encoder.state_dict()
    if set(state) != names:
        raise ValueError(f"{path}: the text encoder's tensors differ from the run's (missing "
                         f"{sorted(set(state) - names)[:4]}, extra {sorted(names - set(state))[:4]})")  # fmt: skip
    request: dict[str, Any] = {"model": {TEXT_PREFIX + k: torch.empty_like(v) for k, v in state.items()}}
    ema_names = [k for k in state if f"ema.{TEXT_PREFIX}{k}" in stored] if use_ema else []
    if ema_names:
        request["ema"] = {TEXT_PREFIX + k: torch.empty_like(state[k]) for k in ema_names}
    read_tensors(request, path)
    weights = {**request["model"], **request.get("ema", {})}
    encoder.load_state_dict({k[len(TEXT_PREFIX) :]: v for k, v in weights.items()}, strict=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(str(out))
    return bool(ema_names)


__all__ = [
    "TEXT_PREFIX",
    "export_text_encoder",
    "grow_text_encoder",
    "load_text_encoder",
    "release_part",
    "set_text_trainable",
]
