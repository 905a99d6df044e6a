"""The memory a generation needs, estimated from its size before any model loads, and checked against what is free.

A rough lower bound, so it refuses only requests that cannot run, never one that could:
- host: the decoded video three times over (the VAE's float32 output, the float array handed back, the uint8 frames
  the writer encodes), plus the weights when they run on the CPU;
- device: the transformer's hidden states for every video (twice with guidance: a block's input and output and
  its MLP's widened activation), the latents, the VAE decoder's widest full-resolution activation, plus the
  weights unless offloaded.
Free memory: `MemAvailable` of /proc/meminfo (else the physical total) for the host, `torch.cuda.mem_get_info` for a
GPU. A refusal is a ValueError naming the size, the frames and the videos, and what to lower.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from motif_video.core.latent_space import VAE_SPATIAL, VAE_TEMPORAL
from motif_video.models.config import MotifVideoConfig

GiB = 2**30
LATENT_CHANNELS = 16
VAE_DECODER_WIDTH = 96 * 4  # Wan VAE: 96 channels at full resolution, decoded 4 frames at a time


def generation_bytes(
    config: MotifVideoConfig,
    height: int,
    width: int,
    num_frames: int,
    videos: int,
    guided: bool,
    dtype_bytes: int,
    decode: bool = True,
    ranks: int = 1,
) -> tuple[int, int]:
    """(device bytes, host bytes) one generation needs at least, weights excluded (`decode=False`: the transformer
    alone, as `motif-video forward` runs it); `ranks`: processes sharing each forward (`enable_parallel`: cp x cfg),
    each holding its share of the transformer's activations."""
    latent_frames = (num_frames - 1) // VAE_TEMPORAL + 1
    h, w = height // VAE_SPATIAL, width // VAE_SPATIAL
    tokens = latent_frames * h * w // (config.patch_size**2 * config.patch_size_t)
    batch = videos * (2 if guided else 1)
    hidden = batch * tokens * config.hidden_size * dtype_bytes * (2 + config.mlp_ratio) / ranks
    latents = 4 * batch * LATENT_CHANNELS * latent_frames * h * w * 4  # fp32 state, input, velocity, guidance
    decoder = videos * VAE_DECODER_WIDTH * height * width * 4
    video = videos * num_frames * height * width * 3 * 4
    if not decode:
        return int(hidden + latents), 0
    return int(hidden + latents + decoder), int(3 * video)


def weight_bytes(folder: str | os.PathLike | None) -> int:
    """The stored size of a local release's weights (0 when unknown, e.g. a hub id not downloaded)."""
    if folder is None or not Path(folder).is_dir():
        return 0
    return sum(p.stat().st_size for p in Path(folder).glob("*/*.safetensors"))


def free_host_bytes() -> int:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**62  # unknown: never refuse


def free_device_bytes(device: torch.device) -> int:
    if device.type != "cuda" or not torch.cuda.is_available():
        return free_host_bytes()
    return torch.cuda.mem_get_info(device)[0]


def check_memory(
    config: MotifVideoConfig,
    height: int,
    width: int,
    num_frames: int,
    videos: int,
    *,
    guided: bool = True,
    dtype_bytes: int = 4,
    device: torch.device | str = "cpu",
    weights: int = 0,
    weights_on_device: bool = True,
    decode: bool = True,
    ranks: int = 1,
) -> None:
    """ValueError when the generation cannot fit in the free memory of `device` (and of the host); `ranks`: see
    `generation_bytes`."""
    device = torch.device(device)
    on_device, on_host = generation_bytes(config, height, width, num_frames, videos, guided, dtype_bytes, decode, ranks)
    if device.type == "cuda":
        needs = {"GPU": (on_device + (weights if weights_on_device else 0), free_device_bytes(device))}
        needs["host"] = (on_host + (0 if weights_on_device else weights), free_host_bytes())
    else:
        needs = {"host": (on_device + on_host + weights, free_host_bytes())}
    for where, (need, free) in needs.items():
        if need > free:
            raise ValueError(
                f"{height}x{width} pixels x {num_frames} frames x {videos} video(s) needs at least "
                f"{need / GiB:,.1f} GiB of {where} memory, and {free / GiB:,.1f} GiB is free: lower height/width, "
                "num_frames or num_videos_per_prompt"
            )


def check_call(
    transformer: torch.nn.Module,
    height: int,
    width: int,
    num_frames: int,
    videos: int,
    guided: bool,
    dtype: torch.dtype,
    device: torch.device,
    ranks: int = 1,
) -> None:
    """`check_memory` for a pipeline call whose weights are already placed (ours only; another model is not sized)."""
    config = getattr(transformer, "config", None)
    if isinstance(config, MotifVideoConfig):
        dtype_bytes = torch.empty((), dtype=dtype).element_size()
        check_memory(config, height, width, num_frames, videos, guided=guided, dtype_bytes=dtype_bytes, device=device,
                     ranks=ranks)  # fmt: skip


__all__ = ["check_call", "check_memory", "free_device_bytes", "free_host_bytes", "generation_bytes", "weight_bytes"]
