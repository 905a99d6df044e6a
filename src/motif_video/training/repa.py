"""REPA: align an early block's video tokens, through a small projector, with a frozen encoder's patch features.

Source: Yu et al., "Representation Alignment for Generation" (REPA, arXiv 2410.06940). Motif-Video 2B (arXiv
2604.16503) aligns to DINOv2 in stage 1 (images), to a frozen V-JEPA video encoder in stages 2-3, and switches
REPA off from stage 4; its layer, projector and weight are unpublished, so REPA's defaults are used:

- Tap: the video tokens after global block `tap_block`, RETURNED by the transformer's
  `forward(..., repa_block=tap_block)` as `repa_features` (no hooks). Default 7, i.e. after the 8th block, REPA's
  SiT-XL/2 setting (depth 8 of 28; our encoder also has 28 blocks before the DDT decoder).
- Projector: MLP D -> 2048 -> 2048 -> D_teacher with SiLU (`REPAProjector`), trained with the model.
- Loss: per-token cosine similarity of L2-normalised features, computed in float32. OUR SIGN: mean(1 - cos)
  rather than REPA's mean(-cos); they differ by the constant 1, so gradients are identical, and ours reads 0 when
  aligned, 1 when orthogonal, 2 when opposite. Weight 0.5 on top of the flow loss.
- Targets on the latent token grid, resampled there by `core.teachers` (`resample_to_latent_grid`, whose
  docstring gives the per-axis rule), then gathered with the TREAD route's keep indices when the tap lies inside
  the routed span (`tap_keep`, `core.teachers.gather_like_route`). With `feature_source="shards"` the targets were
  precomputed on the latent grid (tensor key `teacher`, (N, D_t), `motif_video.core.shards`) and only the gather
  is left.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from motif_video.core.teachers import DEFAULT_TEACHER_IDS, TeacherKind, teacher_options
from motif_video.models.routing import TokenRoute

FeatureSource = Literal["online", "shards"]


@dataclass
class REPAConfig:
    """REPA switches. `stop_step`: REPA is off from this optimizer step on (None = never), as from stage 4."""

    enabled: bool = False
    teacher: TeacherKind = "dinov2"
    teacher_path: str | None = None  # local folder or hub id; None = DEFAULT_TEACHER_IDS[teacher]
    tap_block: int = 7  # global block index (REPA: after the 8th block)
    weight: float = 0.5
    projector_width: int = 2048
    stop_step: int | None = None
    feature_source: FeatureSource = "online"  # "shards": precomputed targets, tensor key `teacher`
    teacher_frame_stride: int = 1  # encode frames 0, s, 2s, ... (teachers.py)
    teacher_input_size: int = 224  # DINOv2 short side; V-JEPA 2 always uses its crop_size

    def __post_init__(self) -> None:
        if self.teacher not in DEFAULT_TEACHER_IDS:
            raise ValueError(f"REPA teacher must be one of {sorted(DEFAULT_TEACHER_IDS)}, got {self.teacher!r}")
        if self.feature_source not in ("online", "shards"):
            raise ValueError(f"REPA feature_source must be 'online' or 'shards', got {self.feature_source!r}")
        if self.tap_block < 0 or self.weight < 0 or self.projector_width < 1 or self.teacher_frame_stride < 1:
            raise ValueError(f"invalid REPA config {self}: tap_block, weight >= 0; projector_width, stride >= 1")

    @property
    def teacher_source(self) -> str:
        return self.teacher_path or DEFAULT_TEACHER_IDS[self.teacher]

    def teacher_options(self) -> dict[str, int]:
        """Keyword arguments for `load_teacher`."""
        return teacher_options(self.teacher, self.teacher_frame_stride, self.teacher_input_size)

    def active(self, step: int) -> bool:
        return self.enabled and (self.stop_step is None or step < self.stop_step)

    def to_dict(self) -> dict:
        return asdict(self)


class REPAProjector(nn.Module):
    """x: (B, N, hidden_dim) -> (B, N, teacher_dim): Linear -> SiLU -> Linear -> SiLU -> Linear (REPA)."""

    def __init__(self, hidden_dim: int, teacher_dim: int, width: int = 2048) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_dim, width),
            nn.SiLU(),
            nn.Linear(width, width),
            nn.SiLU(),
            nn.Linear(width, teacher_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def repa_loss(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean over (valid) tokens of 1 - cos(student, teacher); REPA's -cos plus 1 (same gradient).

    student: (B, N, D) projected features; teacher: (B, N, D) targets (no gradient flows into them);
    mask: (B, N), nonzero = token counts. Every valid token weighs the same; no valid token gives 0.
    """
    if student.shape != teacher.shape:
        raise ValueError(
            f"REPA student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must match (B, N, D): "
            f"project the student to the teacher width and gather the teacher like the route"
        )
    s = F.normalize(student.float(), dim=-1)
    t = F.normalize(teacher.detach().float(), dim=-1)
    distance = 1.0 - (s * t).sum(dim=-1)  # (B, N)
    if mask is None:
        return distance.mean()
    if mask.shape != distance.shape:
        raise ValueError(f"REPA mask must be (B, N) = {tuple(distance.shape)}, got {tuple(mask.shape)}")
    weight = mask.to(distance.dtype)
    return (distance * weight).sum() / weight.sum().clamp_min(1.0)


def tap_keep(route: TokenRoute | None, tap_block: int) -> torch.Tensor | None:
    """The route's keep indices (B, K) if the tapped features are gathered, else None.

    The transformer gathers before block `route.start` and scatters after block `route.end - 1`, before the tap,
    so the tap is routed exactly when start <= tap_block < end - 1.
    """
    if route is not None and route.start <= tap_block < route.end - 1:
        return route.keep
    return None


__all__ = ["REPAConfig", "REPAProjector", "repa_loss", "tap_keep"]
