"""LoRA adapters on the transformer (through peft), kept a plain `MotifVideoTransformer` so the trainer, FSDP2 and
DCP checkpoints work unchanged.

Design:
- `add_lora` injects peft LoRA layers in place (`peft.inject_adapter_in_model`, no `PeftModel` wrapper) into the
  Linears of the transformer blocks named by `LoRAConfig.target_modules` (default: every attention projection and
  MLP Linear of the blocks, as diffusers' LoRA trainers do; AdaLN modulation, embedders and the final projection
  stay untouched) and freezes everything else. B starts at zero, so a fresh adapter changes no output.
- q/k/v projections must be unfused (a fused group is one `F.linear` on a concatenated weight, which LoRA would
  not see): injection unfuses them, and `merge_lora` / `unload_lora` fuse them again when they were fused.
- Files are peft's: `adapter_config.json` (a `LoraConfig`) and `adapter_model.safetensors` with keys
  `base_model.model.<module>.lora_A.weight`, so `peft.PeftModel.from_pretrained(model, dir)` reads them. The
  config is also in the safetensors header under `lora_adapter_metadata` (diffusers' convention). `load_lora`
  also reads diffusers-style files: `transformer.`-prefixed or bare keys, config from that header or inferred
  (alpha = rank, diffusers' default).
- Scale: peft's per-layer `scaling = scale * alpha / rank` (`set_lora_scale`); the model's own
  `attention_kwargs["scale"]` stays unsupported.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
DIFFUSERS_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
METADATA_KEY = "lora_adapter_metadata"  # diffusers' safetensors-header key for the LoraConfig
PEFT_PREFIX = "base_model.model."  # what `PeftModel.save_pretrained` puts before module names
_REFUSE_QKV = "_lora_refuse_qkv"  # set on a model whose q/k/v were fused before LoRA was injected
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks")

# Linears inside a block (names relative to the block) that get LoRA by default; names of both cross-attention
# layouts are listed and those the model lacks are skipped.
DEFAULT_TARGET_MODULES: tuple[str, ...] = (
    *(f"attn.{n}" for n in ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj")),
    "attn.to_add_out",
    *(f"cross_attn.{n}" for n in ("to_q", "to_k", "to_v", "to_out.0")),
    "cross_attn_query_proj",
    "cross_attn_out_proj",
    *(f"{ff}.net.{n}" for ff in ("ff", "ff_context") for n in ("0.proj", "2")),
    "proj_mlp",
    "proj_out",  # the single-stream block's output (not the model's final `proj_out`)
)
INIT_MODES = {"default": True, "gaussian": "gaussian"}  # peft's `init_lora_weights`; both start with B = 0


@dataclass(frozen=True)
class LoRAConfig:
    """rank r and alpha give the update (alpha / r) * B @ A; target_modules are Linear names relative to a block
    (None: `DEFAULT_TARGET_MODULES` present in the model); init "default" = kaiming-uniform A, "gaussian" = normal
    A with std 1/r; B = 0 in both."""

    rank: int = 16
    alpha: float | None = None  # None: alpha = rank (scaling 1)
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    init: Literal["default", "gaussian"] = "default"

    def __post_init__(self) -> None:
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        checks = [
            (self.rank >= 1, f"rank must be >= 1, got {self.rank}"),
            (self.alpha is None or self.alpha > 0, f"alpha must be > 0 (None: alpha = rank), got {self.alpha}"),
            (0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.init in INIT_MODES, f"init must be one of {sorted(INIT_MODES)}, got {self.init!r}"),
            (self.target_modules != (), "target_modules is empty: name at least one Linear, or None for the defaults"),
        ]
        problems = [message for ok, message in checks if not ok]
        if problems:
            raise ValueError("Invalid LoRAConfig: " + "; ".join(problems))


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'motif-video[train]' (or pip install peft)") from None
    return peft


def resolve_target_modules(model: nn.Module, names: tuple[str, ...] | None) -> list[str]:
    """Block-relative names -> the full names of the matching Linears (every given name must match one)."""
    linears: dict[str, list[str]] = {}
    for full, module in model.named_modules():
        parts = full.split(".")
        if len(parts) > 2 and parts[0] in BLOCK_LISTS and isinstance(module, nn.Linear):
            linears.setdefault(".".join(parts[2:]), []).append(full)
    if names is not None:
        unknown = [n for n in names if n not in linears]
        if unknown:
            raise ValueError(
                f"LoRA target_modules {unknown} match no Linear in any block; choose from {sorted(linears)}"
            )
    chosen = [n for n in (DEFAULT_TARGET_MODULES if names is None else names) if n in linears]
    _check_shared_dual(model, chosen)
    return sorted(full for n in chosen for full in linears[n])


def _check_shared_dual(model: nn.Module, chosen: list[str]) -> None:
    # Dual-stream blocks in the shared cross-attention layout apply attn.to_k/to_v to the text through the raw
    # weights (`JointAttention.text_kv`), which a LoRA layer would not see.
    blocks = getattr(model, "transformer_blocks", [])
    if any(getattr(b, "cross_layout", None) == "shared" for b in blocks) and {"attn.to_k", "attn.to_v"} & set(chosen):
        raise ValueError(
            "this model has shared cross-attention in its dual-stream blocks, which reads attn.to_k/attn.to_v "
            "weights directly: leave 'attn.to_k' and 'attn.to_v' out of LoRAConfig.target_modules"
        )


def to_peft_config(config: LoRAConfig, model: nn.Module) -> Any:
    """The peft `LoraConfig` for this model; target modules as one regex over full module names."""
    names = resolve_target_modules(model, config.target_modules)
    if not names:
        raise ValueError("LoRA found no target Linear in any block: pass the MotifVideoTransformer, not a wrapper")
    relative = sorted({n.split(".", 2)[2] for n in names})
    pattern = rf"({'|'.join(BLOCK_LISTS)})\.\d+\.({'|'.join(re.escape(n) for n in relative)})"
    return _peft().LoraConfig(
        r=config.rank,
        lora_alpha=config.alpha if config.alpha is not None else config.rank,
        lora_dropout=config.dropout,
        target_modules=pattern,
        init_lora_weights=INIT_MODES[config.init],
        bias="none",
    )


def _unfuse_qkv(model: nn.Module) -> None:
    """Fused q/k/v run as one F.linear on a concatenated weight, which LoRA layers would not see."""
    if hasattr(model, "unfuse_qkv_projections") and any(getattr(m, "is_fused", False) for m in model.modules()):
        model.unfuse_qkv_projections()
        setattr(model, _REFUSE_QKV, True)


def _inject(model: nn.Module, peft_config: Any, adapter_name: str) -> nn.Module:
    existing = dict(getattr(model, "peft_config", {}) or {})
    if adapter_name in existing:
        raise ValueError(f"the model already has a LoRA adapter named {adapter_name!r}: pick another adapter_name")
    _unfuse_qkv(model)
    _peft().inject_adapter_in_model(peft_config, model, adapter_name=adapter_name)
    model.peft_config = {**existing, adapter_name: peft_config}  # peft keeps only the newest when injecting again
    for layer in lora_layers(model).values():  # every loaded adapter contributes (diffusers' behaviour)
        layer.set_adapter(list(model.peft_config))
    return model


def add_lora(model: nn.Module, config: LoRAConfig, adapter_name: str = "default") -> nn.Module:
    """Inject a fresh adapter in place and freeze every other parameter; returns the same model object. Call it on
    the transformer before wrapping it (TrainModule) and before `parallel.parallelize` (FSDP2 then shards base and
    LoRA parameters together)."""
    _unfuse_qkv(model)
    _inject(model, to_peft_config(config, model), adapter_name)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    return model


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Module name -> peft LoRA layer."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_state_dict(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Adapter weights with peft's bare keys (`<module>.lora_A.weight`), detached on the CPU."""
    if adapter_name not in (getattr(model, "peft_config", None) or {}):
        raise ValueError(f"the model has no LoRA adapter named {adapter_name!r} (add_lora or load_lora first)")
    state = _peft().get_peft_model_state_dict(model, adapter_name=adapter_name)
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_lora(model: nn.Module, directory: str | Path, adapter_name: str = "default") -> Path:
    """Write `adapter_config.json` + `adapter_model.safetensors` (peft's format) for one adapter."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {PEFT_PREFIX + k: v for k, v in lora_state_dict(model, adapter_name).items()}
    peft_config = model.peft_config[adapter_name]
    metadata = {"format": "pt", METADATA_KEY: json.dumps(_config_dict(peft_config), sort_keys=True)}
    save_file(state, str(out / WEIGHTS_NAME), metadata=metadata)
    peft_config.save_pretrained(str(out))
    return out


def _config_dict(peft_config: Any) -> dict[str, Any]:
    return {k: sorted(v) if isinstance(v, set) else v for k, v in peft_config.to_dict().items()}


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(bare-key state dict, LoraConfig dict or None) from a folder or a .safetensors file."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in (WEIGHTS_NAME, DIFFUSERS_WEIGHTS_NAME) if (path / n).is_file()]
        if not found:
            raise ValueError(f"{path} holds no LoRA weights: expected {WEIGHTS_NAME} or {DIFFUSERS_WEIGHTS_NAME}")
        weights, folder = found[0], path
    elif path.is_file() and path.suffix == ".safetensors":
        weights, folder = path, path.parent
    else:
        raise ValueError(f"{path} is neither a LoRA folder nor a .safetensors file")
    with safe_open(str(weights), framework="pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        header = (f.metadata() or {}).get(METADATA_KEY)
    for prefix in (PEFT_PREFIX, "transformer."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if not state or not all(".lora_A." in k or ".lora_B." in k for k in state):
        raise ValueError(f"{weights} is not a LoRA file: every key must hold lora_A or lora_B")
    config = json.loads((folder / CONFIG_NAME).read_text()) if (folder / CONFIG_NAME).is_file() else None
    return state, config if config is not None else (json.loads(header) if header else None)


def _infer_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    ranks = {v.shape[0] for k, v in state.items() if ".lora_A." in k}
    if len(ranks) != 1:
        raise ValueError(f"LoRA file without adapter_config.json has mixed ranks {sorted(ranks)}; add the config")
    modules = sorted({k.split(".lora_")[0] for k in state})
    rank = ranks.pop()
    return dict(r=rank, lora_alpha=rank, target_modules=modules, bias="none")


def load_lora(model: nn.Module, path: str | Path, adapter_name: str = "default", scale: float = 1.0) -> nn.Module:
    """Inject an adapter read from `path` (see `read_lora`) and load its weights; every tensor must be used."""
    peft = _peft()
    state, config = read_lora(path)
    config = config if config is not None else _infer_config(state)
    known = {f for f in peft.LoraConfig.__dataclass_fields__}
    peft_config = peft.LoraConfig(**{k: v for k, v in config.items() if k in known and k != "peft_type"})
    peft_config.inference_mode = False
    _inject(model, peft_config, adapter_name)
    result = peft.set_peft_model_state_dict(model, state, adapter_name=adapter_name)
    unexpected = [k for k in result.unexpected_keys if ".lora_" in k]
    missing = [k for k in result.missing_keys if ".lora_" in k and f".{adapter_name}." in k]
    if unexpected or missing:
        unload_lora(model, adapter_name)
        raise ValueError(
            f"LoRA {path} does not fit this model: {len(unexpected)} unexpected ({unexpected[:3]}), "
            f"{len(missing)} missing ({missing[:3]}) tensors. Was it trained on this architecture?"
        )
    set_lora_scale(model, scale, adapter_name)
    return model


def set_lora_scale(model: nn.Module, scale: float, adapter_name: str = "default") -> None:
    """Scale one adapter's update: scaling = scale * alpha / rank (0 switches it off)."""
    for layer in lora_layers(model).values():
        layer.set_scale(adapter_name, float(scale))


def _replace_layers(model: nn.Module, merge: bool, adapter_name: str | None) -> nn.Module:
    for name, layer in lora_layers(model).items():
        if merge:
            layer.merge(safe_merge=True)
        if adapter_name is not None and adapter_name not in layer.lora_A:
            continue
        if adapter_name is not None and len(layer.lora_A) > 1:
            layer.delete_adapter(adapter_name)
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer.get_base_layer())
    configs = dict(getattr(model, "peft_config", {}) or {})
    configs = {} if adapter_name is None else {k: v for k, v in configs.items() if k != adapter_name}
    if configs:
        model.peft_config = configs
        return model
    if hasattr(model, "peft_config"):
        del model.peft_config
    if getattr(model, _REFUSE_QKV, False):
        delattr(model, _REFUSE_QKV)
        model.fuse_qkv_projections()
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every active adapter (at its current scale) into the base weights and remove the LoRA layers: the same
    model object, now a plain transformer (q/k/v fused again if they were). Frozen parameters stay frozen."""
    return _replace_layers(model, merge=True, adapter_name=None)


def unload_lora(model: nn.Module, adapter_name: str | None = None) -> nn.Module:
    """Remove one adapter (or all, None) without merging; the base weights are untouched."""
    return _replace_layers(model, merge=False, adapter_name=adapter_name)


def has_lora(model: nn.Module) -> bool:
    return bool(getattr(model, "peft_config", None))


_LORA_KEY = re.compile(r"(?P<module>.+)\.(?P<kind>lora_[AB])\.(?P<adapter>[^.]+)\.weight")


def merge_lora_state_dict(
    state: dict[str, torch.Tensor], scaling: Callable[[str, str, int], float]
) -> dict[str, torch.Tensor]:
    """Fold a LoRA-injected model's state dict into plain keys, without peft: `<m>.weight` = base weight +
    sum over adapters of scaling(m, adapter, rank) * B @ A (computed in fp32); `<m>.base_layer.*` -> `<m>.*`."""
    plain: dict[str, torch.Tensor] = {}
    factors: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for key, value in state.items():
        if ".lora_" in key:
            match = _LORA_KEY.fullmatch(key)
            if match is None:
                raise ValueError(f"cannot merge LoRA tensor {key!r}: only lora_A/lora_B weights are supported")
            factors.setdefault(match["module"], {}).setdefault(match["adapter"], {})[match["kind"]] = value
        else:
            plain[key.replace(".base_layer.", ".")] = value
    for module, adapters in factors.items():
        base = plain[f"{module}.weight"]
        merged = base.float()
        for adapter, ab in adapters.items():
            if set(ab) != {"lora_A", "lora_B"}:
                raise ValueError(f"LoRA {module} adapter {adapter!r} lacks {({'lora_A', 'lora_B'} - set(ab)).pop()}")
            factor = scaling(module, adapter, ab["lora_A"].shape[0])
            if factor:
                merged = merged + factor * (ab["lora_B"].float() @ ab["lora_A"].float())
        plain[f"{module}.weight"] = merged.to(base.dtype)
    return plain


def model_state_dict_merged(model: nn.Module, state: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The plain state dict the model computes with its active adapters at their scales; the model is unchanged.
    `state`: the model's state dict already gathered (e.g. full tensors of an FSDP2 model)."""
    layers = lora_layers(model) if has_lora(model) else {}

    def scaling(module: str, adapter: str, rank: int) -> float:
        layer = layers[module]
        return float(layer.scaling[adapter]) if adapter in layer.active_adapters else 0.0

    return merge_lora_state_dict(model.state_dict() if state is None else state, scaling)
