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
- Targets on the latent token grid (F' = (F-1)/4 + 1, H/16, W/16), flattened t-h-w like the transformer's tokens
  (`resample_to_latent_grid`), then gathered with the TREAD route's keep indices when the tap lies inside the
  routed span (`tap_keep`, `gather_like_route`). With `feature_source="shards"` the targets were precomputed on
  the latent grid (tensor key `teacher`, (N, D_t), `motif_video.core.shards`) and only the gather is left.

Resampling (OUR CHOICE, separable per axis): where an axis shrinks, each output cell is the mean of the input
cells it covers (adaptive average pooling: exact box averages for integer ratios, e.g. the 4 frames of a VAE
group or 2 x 2 patches); where it grows, linear interpolation between cell centres (align_corners=False; a linear
field is reproduced exactly in the interior, edge cells are held constant). Time is CAUSAL by default, like the
video VAE: teacher step 0 maps to latent frame 0 alone and the remaining steps are resampled onto the remaining
latent frames, so F = 4K + 1 frames encoded per frame by DINOv2 give latent frame k = mean of frames 4k-3..4k
exactly, and V-JEPA 2 tubelets (see `teachers.py`) give the mean of the two tubelets of that group.
Images: T_t = F' = 1, only space is resampled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from motif_video.core.teachers import DEFAULT_TEACHER_IDS, Grid, Teacher, TeacherKind
from motif_video.models.routing import TokenRoute, gather_tokens

FeatureSource = Literal["online", "shards"]
VAE_TEMPORAL_STRIDE = 4  # Wan VAE: 4x in time (causal: frame 0 alone)
TOKEN_SPATIAL_STRIDE = 16  # VAE 8x in space x patch 2


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
        options = {"frame_stride": self.teacher_frame_stride}
        if self.teacher == "dinov2":
            options["input_size"] = self.teacher_input_size
        return options

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


def latent_token_grid(num_frames: int, height: int, width: int) -> Grid:
    """The transformer's token grid (F', H/16, W/16) for a clip of F = 4K + 1 frames (or one image)."""
    if (num_frames - 1) % VAE_TEMPORAL_STRIDE or height % TOKEN_SPATIAL_STRIDE or width % TOKEN_SPATIAL_STRIDE:
        raise ValueError(
            f"clip ({num_frames}, {height}, {width}) needs F = 4K + 1 frames and H, W multiples of "
            f"{TOKEN_SPATIAL_STRIDE}"
        )
    return (
        (num_frames - 1) // VAE_TEMPORAL_STRIDE + 1,
        height // TOKEN_SPATIAL_STRIDE,
        width // TOKEN_SPATIAL_STRIDE,
    )


def _resize_axis(x: torch.Tensor, size: int, dim: int) -> torch.Tensor:
    """Resize axis `dim` of x to `size` cells: box means where it shrinks, linear (cell centres) where it grows."""
    length = x.shape[dim]
    if length == size:
        return x
    moved = x.movedim(dim, -1)
    flat = moved.reshape(-1, 1, length)  # (M, 1, L)
    if size < length:
        flat = F.adaptive_avg_pool1d(flat, size)
    else:
        flat = F.interpolate(flat, size=size, mode="linear", align_corners=False)
    return flat.reshape(*moved.shape[:-1], size).movedim(-1, dim)


def resample_to_latent_grid(
    features: torch.Tensor, grid: Grid, latent_grid: Grid, *, causal_time: bool = True
) -> torch.Tensor:
    """features: (B, T_t*H_t*W_t, D) on grid (T_t, H_t, W_t) -> (B, F'*h*w, D) on latent_grid, both t-h-w.

    causal_time: step 0 <-> latent frame 0, the rest onto the rest (module docstring); False: uniform cells.
    """
    b, n, d = features.shape
    if n != grid[0] * grid[1] * grid[2]:
        raise ValueError(f"teacher features have {n} tokens but grid {grid} has {grid[0] * grid[1] * grid[2]}")
    if tuple(grid) == tuple(latent_grid):
        return features
    x = features.float().reshape(b, *grid, d)  # (B, T, H, W, D)
    frames = latent_grid[0]
    if causal_time and frames > 1 and x.shape[1] > 1:
        rest = _resize_axis(x[:, 1:], frames - 1, dim=1)
        x = torch.cat((x[:, :1], rest), dim=1)
    elif causal_time and frames == 1:
        x = x[:, :1]  # latent frame 0 is the first frame alone
    else:
        x = _resize_axis(x, frames, dim=1)
    x = _resize_axis(_resize_axis(x, latent_grid[1], dim=2), latent_grid[2], dim=3)
    return x.reshape(b, -1, d).to(features.dtype)


def tap_keep(route: TokenRoute | None, tap_block: int) -> torch.Tensor | None:
    """The route's keep indices (B, K) if the tapped features are gathered, else None.

    The transformer gathers before block `route.start` and scatters after block `route.end - 1`, before the tap,
    so the tap is routed exactly when start <= tap_block < end - 1.
    """
    if route is not None and route.start <= tap_block < route.end - 1:
        return route.keep
    return None


def gather_like_route(features: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """features: (B, N, D); keep: (B, K) or None -> (B, K, D) (or features unchanged)."""
    if keep is None:
        return features
    return gather_tokens(features, keep.to(features.device))


def teacher_targets(
    teacher: Teacher, video: torch.Tensor, latent_grid: Grid, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """video: (B, 3, F, H, W) in [-1, 1] -> REPA targets (B, N or K, D_t) on the latent grid, routed like the tap."""
    features, grid = teacher.encode(video)
    return gather_like_route(resample_to_latent_grid(features, grid, latent_grid), keep)


__all__ = [
    "REPAConfig",
    "REPAProjector",
    "gather_like_route",
    "latent_token_grid",
    "repa_loss",
    "resample_to_latent_grid",
    "tap_keep",
    "teacher_targets",
]
