"""Frozen REPA teachers: DINOv2 (images, per frame) and V-JEPA 2 (video), as patch-token features on their grid.

Motif-Video 2B (arXiv 2604.16503) aligns to DINOv2 in stage 1 (images) and to a frozen V-JEPA encoder in stages
2-3; REPA (Yu et al., arXiv 2410.06940) is the recipe. A teacher maps a clip to its patch tokens and the shape of
their grid; `resample_to_latent_grid` then carries them to the diffusion model's latent token grid, where
`teacher_targets` (used by `data.prepare` for stored targets and by `training.repa_online`) hands them to REPA.

    encode(video: (B, 3, F, H, W) in [-1, 1]) -> features (B, T_t * H_t * W_t, D_t) flattened t-h-w, (T_t, H_t, W_t)

Both teachers are frozen (`requires_grad_(False)`, always in eval mode, encoding under `torch.no_grad`), map
[-1, 1] to [0, 1] and normalise with the ImageNet mean / std (what both were pretrained with), and resize with
antialiased bicubic interpolation. Neither crops: the features must cover the whole frame, as the latent does.

- DINOv2 (transformers `Dinov2Model` / `Dinov2WithRegistersModel`; REPA uses the final-LayerNorm patch tokens,
  which is `last_hidden_state` without CLS and register tokens). Every (strided) frame is encoded as an image:
  T_t = number of frames. `input_size` int: short side (default 224, REPA's resolution), long side scaled to keep
  the aspect ratio, both rounded to a multiple of the patch size (DINOv2 interpolates its position embeddings);
  or an explicit (H, W) in multiples of the patch size.
- V-JEPA 2 (transformers `VJEPA2Model`, encoder only: `pixel_values_videos` (B, T, C, H, W), `skip_predictor`).
  Its 3-D RoPE derives token positions from a square grid of `crop_size / patch_size` per side (config values),
  so frames are resized (squashed, not cropped) to crop_size x crop_size; other sizes would scramble positions.
  Tubelets span `tubelet_size` frames, so the frame count must be a multiple of it. OUR CHOICE, mirroring the
  causal video VAE (latent frame 0 = frame 0 alone, latent k = frames 4k-3..4k): prepend tubelet_size - 1 copies
  of frame 0, so tubelet 0 is frame 0 alone (how V-JEPA 2 itself encodes an image), then replicate the last
  frame up to a multiple. For F = 4K + 1 frames and tubelet 2 this needs no end padding and tubelets 2k-1, 2k
  are exactly the VAE group of latent frame k.
- `frame_stride` s (both): encode frames 0, s, 2s, ... only, to save teacher compute. s = 4 gives DINOv2 one
  frame per latent frame (T_t = F'); s = 2 gives V-JEPA 2 (tubelet 2) one tubelet per latent frame.

Targets on the latent token grid (F' = (F-1)/4 + 1, H/16, W/16), flattened t-h-w like the transformer's tokens,
then gathered with the TREAD route's keep indices when REPA's tap lies inside the routed span
(`gather_like_route`). Resampling (OUR CHOICE, separable per axis): where an axis shrinks, each output cell is the
mean of the input cells it covers (adaptive average pooling: exact box averages for integer ratios, e.g. the 4
frames of a VAE group or 2 x 2 patches); where it grows, linear interpolation between cell centres
(align_corners=False; a linear field is reproduced exactly in the interior, edge cells are held constant). Time is
CAUSAL by default, like the video VAE: teacher step 0 maps to latent frame 0 alone and the remaining steps are
resampled onto the remaining latent frames, so F = 4K + 1 frames encoded per frame by DINOv2 give latent frame k =
mean of frames 4k-3..4k exactly, and V-JEPA 2 tubelets give the mean of the two tubelets of that group. Images:
T_t = F' = 1, only space is resampled.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from motif_video.core.latent_space import PATCH, VAE_SPATIAL, VAE_TEMPORAL
from motif_video.models.routing import gather_tokens

if TYPE_CHECKING:
    from transformers import PreTrainedModel

TeacherKind = Literal["dinov2", "vjepa2"]
Grid = tuple[int, int, int]

# Default checkpoints: DINOv2 ViT-B/14 is REPA's main teacher; V-JEPA 2 ViT-L (64 frames, 256 px) the smallest.
DEFAULT_TEACHER_IDS: dict[str, str] = {
    "dinov2": "facebook/dinov2-base",
    "vjepa2": "facebook/vjepa2-vitl-fpc64-256",
}
_MODEL_TYPES = {"dinov2": ("dinov2", "dinov2_with_registers"), "vjepa2": ("vjepa2",)}
VAE_TEMPORAL_STRIDE = VAE_TEMPORAL  # Wan VAE: 4x in time (causal: frame 0 alone)
TOKEN_SPATIAL_STRIDE = VAE_SPATIAL * PATCH  # VAE 8x in space x patch 2
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _int_patch(patch_size: int | list[int] | tuple[int, ...]) -> int:
    return patch_size if isinstance(patch_size, int) else int(patch_size[0])


def _check_video(video: torch.Tensor) -> None:
    if video.dim() != 5 or video.shape[1] != 3:
        raise ValueError(f"teacher input must be a video (B, 3, F, H, W) in [-1, 1], got {tuple(video.shape)}")


def prepare_frames(frames: torch.Tensor, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """frames: (M, 3, H, W) in [-1, 1] -> (M, 3, *size) ImageNet-normalised, in `dtype`."""
    x = (frames.float() + 1.0) / 2.0
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).to(dtype)


class Teacher(nn.Module):
    """A frozen feature encoder. Subclasses set `dim` and implement `encode`; `train()` keeps it in eval mode."""

    dim: int

    def __init__(self, model: PreTrainedModel, frame_stride: int = 1) -> None:
        super().__init__()
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.model = model.eval().requires_grad_(False)
        self.frame_stride = frame_stride
        self.dim = int(model.config.hidden_size)

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        raise NotImplementedError

    def forward(self, video: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        return self.encode(video)


class DinoV2Teacher(Teacher):
    """DINOv2 patch tokens of every (strided) frame. grid = (frames, H / patch, W / patch)."""

    def __init__(
        self,
        model: PreTrainedModel,
        input_size: int | tuple[int, int] = 224,
        frame_stride: int = 1,
        chunk_size: int = 64,
    ) -> None:
        super().__init__(model, frame_stride)
        self.patch_size = _int_patch(model.config.patch_size)
        self.num_prefix_tokens = 1 + int(getattr(model.config, "num_register_tokens", 0))  # CLS + registers
        self.input_size = input_size
        self.chunk_size = chunk_size  # frames per teacher forward, to bound activation memory

    def input_hw(self, height: int, width: int) -> tuple[int, int]:
        """The teacher resolution for a (height, width) frame."""
        p = self.patch_size
        if isinstance(self.input_size, int):
            short = max(p, round(self.input_size / p) * p)
            long = max(p, round(max(height, width) * short / min(height, width) / p) * p)
            return (short, long) if height <= width else (long, short)
        h, w = self.input_size
        if h % p or w % p:
            raise ValueError(f"DINOv2 input size {self.input_size} must be a multiple of the patch size {p}")
        return h, w

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        _check_video(video)
        video = video[:, :, :: self.frame_stride]
        b, _, t, h, w = video.shape
        size = self.input_hw(h, w)
        frames = video.transpose(1, 2).reshape(b * t, 3, h, w)  # (B*T, 3, H, W)
        tokens = []
        for chunk in frames.split(self.chunk_size):
            pixels = prepare_frames(chunk, size, self.dtype)
            tokens.append(self.model(pixel_values=pixels).last_hidden_state[:, self.num_prefix_tokens :])
        grid = (t, size[0] // self.patch_size, size[1] // self.patch_size)
        features = torch.cat(tokens).reshape(b, t * grid[1] * grid[2], -1)  # (B, T*H_t*W_t, D), t-h-w
        return features, grid


class VJEPA2Teacher(Teacher):
    """V-JEPA 2 encoder tokens. grid = (padded frames / tubelet, crop / patch, crop / patch)."""

    def __init__(self, model: PreTrainedModel, frame_stride: int = 1) -> None:
        super().__init__(model, frame_stride)
        c = model.config
        self.patch_size = _int_patch(c.patch_size)
        self.tubelet_size = int(c.tubelet_size)
        self.crop_size = int(c.crop_size)

    def pad_frames(self, video: torch.Tensor) -> torch.Tensor:
        """video: (B, 3, T, H, W) -> (B, 3, T', H, W): frame 0 alone in tubelet 0, then a multiple of the tubelet."""
        k = self.tubelet_size
        video = torch.cat((video[:, :, :1].expand(-1, -1, k - 1, -1, -1), video), dim=2)
        tail = (-video.shape[2]) % k
        return torch.cat((video, video[:, :, -1:].expand(-1, -1, tail, -1, -1)), dim=2)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, Grid]:
        _check_video(video)
        video = self.pad_frames(video[:, :, :: self.frame_stride])
        b, _, t, h, w = video.shape
        frames = video.transpose(1, 2).reshape(b * t, 3, h, w)
        size = (self.crop_size, self.crop_size)
        pixels = torch.cat([prepare_frames(chunk, size, self.dtype) for chunk in frames.split(64)])  # bounded fp32
        pixels = pixels.reshape(b, t, 3, self.crop_size, self.crop_size)  # (B, T, C, H, W), as VJEPA2Model wants
        features = self.model(pixel_values_videos=pixels, skip_predictor=True).last_hidden_state
        side = self.crop_size // self.patch_size
        return features, (t // self.tubelet_size, side, side)  # features: (B, T_t*side*side, D), t-h-w


def load_teacher(
    kind: TeacherKind,
    path_or_hub_id: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    **options: int | tuple[int, int],
) -> Teacher:
    """A frozen teacher from a local folder (`save_pretrained` layout) or a hub id (default: DEFAULT_TEACHER_IDS).

    options go to the teacher: `frame_stride` (both), `input_size` and `chunk_size` (DINOv2).
    """
    if kind not in _MODEL_TYPES:
        raise ValueError(f"unknown REPA teacher {kind!r}; choose one of {sorted(_MODEL_TYPES)}")
    source = path_or_hub_id or DEFAULT_TEACHER_IDS[kind]
    from transformers import AutoConfig, AutoModel

    from motif_video.core.model_files import check_component_folder

    if Path(source).is_dir():
        check_component_folder(source)  # no remote code, no pickled weights, bounded files
    try:  # the config first: only a teacher's model type is built, and never from code in the folder
        config = AutoConfig.from_pretrained(source, trust_remote_code=False)
        if config.model_type not in _MODEL_TYPES[kind]:
            raise ValueError(f"{source!r} is a {config.model_type!r} model, not a {kind} teacher")
        model = AutoModel.from_pretrained(
            source, config=config, dtype=dtype, trust_remote_code=False, use_safetensors=True
        )
    except OSError as err:
        raise OSError(
            f"cannot load the {kind} REPA teacher from {source!r}: not a local model folder and not downloadable "
            f"or cached (offline?); download it once or pass a folder written by save_pretrained"
        ) from err
    if model.config.model_type not in _MODEL_TYPES[kind]:
        raise ValueError(f"{source!r} is a {model.config.model_type!r} model, not a {kind} teacher")
    teacher = DinoV2Teacher(model, **options) if kind == "dinov2" else VJEPA2Teacher(model, **options)
    return teacher.to(device)


def teacher_options(kind: TeacherKind, frame_stride: int = 1, input_size: int = 224) -> dict[str, int]:
    """Keyword arguments for `load_teacher`: the frame stride, and DINOv2's short side (V-JEPA 2 has its own)."""
    options = {"frame_stride": frame_stride}
    if kind == "dinov2":
        options["input_size"] = input_size
    return options


# ---------------------------------------------------------------------------------------------------- targets


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
    "DEFAULT_TEACHER_IDS",
    "DinoV2Teacher",
    "Grid",
    "Teacher",
    "TOKEN_SPATIAL_STRIDE",
    "TeacherKind",
    "VAE_TEMPORAL_STRIDE",
    "VJEPA2Teacher",
    "gather_like_route",
    "latent_token_grid",
    "load_teacher",
    "prepare_frames",
    "resample_to_latent_grid",
    "teacher_options",
    "teacher_targets",
]
