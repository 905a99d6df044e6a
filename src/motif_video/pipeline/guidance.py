"""Guidance: adaptive projected guidance (the Motif-Video default) and plain classifier-free guidance.

Pure functions of the two predictions plus one small piece of state (APG's momentum average), so the pipeline
can run the conditional and unconditional passes as ONE batched forward and combine them here.

APG (Sadat et al., arXiv 2410.02416, "original formulation" as Motif ships it):
    d   = v_cond - v_uncond
    d   = d + momentum * d_prev                    (running average, carried across steps)
    d   = d * min(1, threshold / ||d||)            (norm per latent frame: over C, H, W = dims (-1, -2, -4))
    d   = d_orth + eta * d_par                     (projection onto v_cond, in float64)
    out = v_cond + scale * d                       (original formulation; else v_uncond + scale * d)
This equals `diffusers.AdaptiveProjectedGuidance` with the same settings (tested), which is what a release's
`guider/config.json` stores; `GuidanceConfig.from_diffusers_config` reads that file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

GUIDANCE_METHODS = ("apg", "cfg", "none")
FRAME_NORM_DIMS = (-1, -2, -4)  # (B, C, F, H, W): W, H, C -> one norm per latent frame


@dataclass(frozen=True)
class GuidanceConfig:
    """How conditional and unconditional predictions are combined. Defaults: the official APG settings."""

    method: str = "apg"
    scale: float = 8.0
    norm_threshold: float = 12.0
    momentum: float = 0.1
    eta: float = 1.0  # parallel-component weight: 1 in diffusers' default, 0 in Motif's ComfyUI workflows
    norm_dims: tuple[int, ...] = FRAME_NORM_DIMS
    original_formulation: bool = True
    start: float = 0.0  # fraction of steps after which guidance starts
    stop: float = 1.0  # fraction of steps after which guidance stops (cond pass only outside [start, stop))
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.method not in GUIDANCE_METHODS:
            raise ValueError(f"guidance method must be one of {GUIDANCE_METHODS}, got {self.method!r}")
        if not 0.0 <= self.start <= self.stop <= 1.0:
            raise ValueError(f"guidance start/stop must satisfy 0 <= start <= stop <= 1, got {self.start}, {self.stop}")
        if self.norm_threshold < 0:
            raise ValueError(f"norm_threshold must be >= 0 (0 disables it), got {self.norm_threshold}")

    def replace(self, **changes: Any) -> GuidanceConfig:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def active(self, step: int, num_steps: int) -> bool:
        """Whether step `step` of `num_steps` needs the unconditional pass at all."""
        if self.method == "none":
            return False
        if not int(self.start * num_steps) <= step < int(self.stop * num_steps):
            return False
        neutral = 0.0 if (self.method == "apg" and self.original_formulation) else 1.0
        return not math.isclose(self.scale, neutral)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("extra")
        out["norm_dims"] = list(self.norm_dims)
        return out

    # --- diffusers guider configs (a release's guider/config.json) ---

    @classmethod
    def from_diffusers_config(cls, config: dict[str, Any]) -> GuidanceConfig:
        name = config.get("_class_name", "AdaptiveProjectedGuidance")
        common = dict(
            scale=float(config.get("guidance_scale", 8.0)),
            start=float(config.get("start", 0.0)),
            stop=float(config.get("stop", 1.0)),
            original_formulation=bool(config.get("use_original_formulation", False)),
        )
        if config.get("enabled", True) is False:
            return cls(method="none", **common)
        if float(config.get("guidance_rescale", 0.0)) != 0.0:
            raise ValueError("guider configs with guidance_rescale != 0 are not supported")
        if name == "ClassifierFreeGuidance":
            return cls(method="cfg", **common)
        if name != "AdaptiveProjectedGuidance":
            raise ValueError(
                f"unsupported guider {name!r}: Motif-Video pipelines run AdaptiveProjectedGuidance or "
                "ClassifierFreeGuidance"
            )
        dims = config.get("adaptive_projected_guidance_norm_dim")
        if dims is None:
            dims = ()  # every non-batch dim, as diffusers does
        elif isinstance(dims, int):
            dims = (dims,)
        momentum = config.get("adaptive_projected_guidance_momentum")
        return cls(
            method="apg",
            norm_threshold=float(config.get("adaptive_projected_guidance_rescale", 15.0)),
            momentum=0.0 if momentum is None else float(momentum),
            eta=float(config.get("eta", 1.0)),
            norm_dims=tuple(int(d) for d in dims),
            **common,
        )

    def to_diffusers_config(self) -> dict[str, Any]:
        common = dict(
            guidance_scale=self.scale,
            guidance_rescale=0.0,
            use_original_formulation=self.original_formulation,
            start=self.start,
            stop=self.stop,
            enabled=self.method != "none",
        )
        if self.method == "cfg":
            return {"_class_name": "ClassifierFreeGuidance", **common}
        return {
            "_class_name": "AdaptiveProjectedGuidance",
            "adaptive_projected_guidance_momentum": self.momentum,
            "adaptive_projected_guidance_rescale": self.norm_threshold,
            "adaptive_projected_guidance_norm_dim": list(self.norm_dims) or None,
            "eta": self.eta,
            **common,
        }


def resolve_guidance(
    base: GuidanceConfig,
    guidance: GuidanceConfig | str | None,
    scale: float | None = None,
    eta: float | None = None,
    norm_threshold: float | None = None,
    momentum: float | None = None,
) -> GuidanceConfig:
    """One call's guidance: `guidance` (a config, a method name or None for `base`) with the given overrides."""
    if isinstance(guidance, GuidanceConfig):
        base = guidance
    elif guidance is not None and guidance != base.method:  # plain CFG means uncond + s (cond - uncond)
        base = base.replace(method=guidance, original_formulation=guidance == "apg")
    return base.replace(scale=scale, eta=eta, norm_threshold=norm_threshold, momentum=momentum)


class GuidanceState:
    """APG's momentum average; one per sampling run (fresh state = a fresh run)."""

    def __init__(self) -> None:
        self.running: torch.Tensor | None = None


def classifier_free_guidance(
    cond: torch.Tensor, uncond: torch.Tensor, scale: float, original_formulation: bool = False
) -> torch.Tensor:
    """CFG (Ho & Salimans, arXiv 2207.12598): uncond + s (cond - uncond); original form cond + s (cond - uncond)."""
    base = cond if original_formulation else uncond
    return base + scale * (cond - uncond)


def adaptive_projected_guidance(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    config: GuidanceConfig,
    state: GuidanceState,
) -> torch.Tensor:
    """APG (arXiv 2410.02416, Alg. 1) on velocity predictions `cond`, `uncond`: (B, C, F, H, W)."""
    dims = list(config.norm_dims) or list(range(1, cond.ndim))
    diff = cond - uncond
    if state.running is not None:
        diff = diff + config.momentum * state.running
    state.running = diff
    if config.norm_threshold > 0:
        norm = diff.norm(p=2, dim=dims, keepdim=True)
        diff = diff * torch.minimum(torch.ones_like(diff), config.norm_threshold / norm)
    unit = torch.nn.functional.normalize(cond.double(), dim=dims)
    parallel = (diff.double() * unit).sum(dim=dims, keepdim=True) * unit
    orthogonal = diff.double() - parallel
    update = orthogonal.to(diff.dtype) + config.eta * parallel.to(diff.dtype)
    base = cond if config.original_formulation else uncond
    return base + config.scale * update


def combine(
    cond: torch.Tensor, uncond: torch.Tensor | None, config: GuidanceConfig, state: GuidanceState
) -> torch.Tensor:
    """The guided velocity; `uncond` is None on steps where guidance is inactive."""
    if uncond is None:
        return cond
    if config.method == "cfg":
        return classifier_free_guidance(cond, uncond, config.scale, config.original_formulation)
    return adaptive_projected_guidance(cond, uncond, config, state)
