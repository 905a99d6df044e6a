"""The small model's VAE: diffusers' `AutoencoderKLWan` at CPU size, trained on procedural clips rendered on the fly.

Architecture (`SmallVAEConfig`): Wan 2.1's causal 3-D VAE with its real compression (17 x 64 x 64 -> 5 x 8 x 8,
z_dim 16), base width 16, dim_mult (1, 2, 2, 2), one res block per stage: 0.83 M parameters, 3.3 MB in fp32. A
short run is won or lost by the init (`init_weights`): the untrained VAE is a shallow per-frame image autoencoder
whose videos are their every-4th frame held, so cheap image steps teach it most of what the evaluator reads.

Recipe (`train_vae`), sized by measurement on a shared 2-core CPU:
- data: random scenes (`sample_scene(split="any")`); the first IMAGE_PHASE of the steps are images only
  (4 x batch_size stills), then 3 steps of batch_size 9-frame windows of 17-frame videos per image step. 9 frames
  run every path of the chunked causal coder (the lone first frame, then 4-frame chunks fed by a full previous
  chunk's cache); 17 only repeat them at twice the cost. Half the clips are 2 x 2 mosaics of object-centred crops
  (`_mosaic`): small shapes are the slow thing to learn (they blur into blobs the evaluator calls circles), and a
  mosaic shows ~3x more objects for the same compute.
- loss: L1 + MSE of the decoded posterior SAMPLE before the decoder's clamp (`decode_unclamped`: a clamped pixel
  gets no gradient), outline pixels weighted 5x (`edge_weights`), + kl_weight * per-element KL to N(0, 1).
  kl_weight 1e-5: the pipeline renormalises latents with measured stats, so the KL is not needed for scale; it
  only keeps the posterior a proper bounded Gaussian, at < 1e-3 of the reconstruction loss (no blurred outlines).
- AdamW (lr 3e-4: 1e-3 diverges with Wan's RMS norms, measured), 50 warmup steps, cosine to 10%, clip 1.
- the batch and posterior noise of step k are pure functions of (seed, k): resuming from `train_state.pt` (model,
  optimizer, step; written atomically) is bit-identical to an uninterrupted run.
- at the end: per-channel `latents_mean` / `latents_std` of posterior modes over STATS_CLIPS clips go into the
  config (the pipeline normalises with them), then `save_pretrained(out_dir)`.

Run with OMP_NUM_THREADS=1 on a shared CPU (2 OpenMP threads ran 4x SLOWER with another job on the other core):
    OMP_NUM_THREADS=1 python -c "from motif_video_lab.small_model.vae import train_vae; train_vae('/tmp/small_vae')"
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motif_video_lab.procedural import SceneSpec, ScoreTable, render, sample_scene, score_prompts, score_video
from motif_video_lab.procedural.scene import trajectory

CLIP_FRAMES, CLIP_SIZE = 17, 64
TRAIN_FRAMES = 9  # video window per training sample (see the docstring)
IMAGE_PHASE = 0.5  # the first half of the steps are images only
IMAGE_EVERY = 4  # afterwards step k is an image step when k % 4 == 3 (videos : images = 3 : 1)
IMAGE_BATCH_FACTOR = 4  # an image step takes 4 x batch_size images (~1/3 of a video step's cost)
MOSAIC = 0.5  # share of 2 x 2 mosaic clips (`_mosaic`)
EDGE_WEIGHT, EDGE_THRESHOLD = 4.0, 0.1  # outline pixels count 5x (`edge_weights`); threshold in [-1, 1] units
LOGVAR_INIT = -6.0  # posterior std 0.05 at init (-10 measured no better)
KL_WEIGHT = 1e-5
WARMUP = 50
LR = 3e-4
STATS_CLIPS = 32  # x 5 x 8 x 8 latent positions per video: ~8k samples per channel
STEPS = 2000  # 36 min on a shared 2-core CPU (0.78 s per image step, ~1.5 s per video step): PSNR 30.1 dB,
# 99.3% of the evaluator's attributes right on 96 reconstructions (shape 94.8%, everything else 100%)
STATE_FILE = "train_state.pt"


@dataclass(frozen=True)
class SmallVAEConfig:
    base_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 1
    z_dim: int = 16  # the transformer's latent channels


SMALL_VAE = SmallVAEConfig()


def build_small_vae(seed: int = 0, config: SmallVAEConfig = SMALL_VAE) -> Any:
    """A freshly initialised `AutoencoderKLWan` (train mode), a pure function of `seed`."""
    from diffusers import AutoencoderKLWan

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(
            base_dim=config.base_dim,
            z_dim=config.z_dim,
            dim_mult=list(config.dim_mult),
            num_res_blocks=config.num_res_blocks,
            temperal_downsample=[False, True, True],  # Wan: 4x in time, the first frame kept alone
            latents_mean=[0.0] * config.z_dim,  # replaced by measured stats at the end of training
            latents_std=[1.0] * config.z_dim,
        )
    init_weights(vae, torch.Generator().manual_seed(seed))
    return vae.train()


@torch.no_grad()
def init_weights(vae: Any, generator: torch.Generator) -> None:
    """An init under which the untrained VAE is a shallow per-frame image autoencoder, so a short run learns fast.

    PyTorch's default (uniform, gain 1/sqrt(3), random biases) leaves the colour signal at ~1% of the activations
    by the decoder (bias-driven constants dominate after each RMS norm) and the VAE first learns to ignore its
    input. Instead:
    - every conv: N(0, 1/fan_in) weights, zero bias (LeCun: variance-preserving, the signal is all there is);
    - the second conv of every residual block and the attention output projection: zero, so each block starts as
      the identity (DiT-style) and the untrained network is only a few convs deep;
    - causal 3-D convs: the two PAST time taps zero, so every frame is coded like an image (image steps train the
      current-frame tap only; video steps then learn the past taps);
    - time resampling: the encoder's stride-2 time conv keeps the later frame of each pair and the decoder's
      frame-doubling conv copies its frame twice, so a video starts as its every-4th frame held for 4 frames;
    - the posterior log-variance bias at LOGVAR_INIT (std 0.05), so the decoder sees the code, not noise.
    """
    from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanResample, WanResidualBlock

    for module in vae.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Conv3d)):
            fan_in = module.weight[0].numel()
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / math.sqrt(fan_in))
            if module.bias is not None:
                module.bias.zero_()
            if isinstance(module, torch.nn.Conv3d) and module.weight.shape[2] == 3:
                module.weight[:, :, :2].zero_()  # taps 0, 1 read the two previous frames (causal padding)
    for module in vae.modules():
        if isinstance(module, WanResidualBlock):
            module.conv2.weight.zero_()
        elif isinstance(module, WanAttentionBlock):
            module.proj.weight.zero_()
        elif isinstance(module, WanResample) and hasattr(module, "time_conv"):
            weight = module.time_conv.weight  # (C_out, C, 3, 1, 1); C_out = 2C when upsampling (two frames)
            weight.zero_()
            eye = torch.eye(weight.shape[1])
            for half in range(weight.shape[0] // weight.shape[1]):
                weight[half * eye.shape[0] : (half + 1) * eye.shape[0], :, 2, 0, 0] = eye
    vae.quant_conv.bias[vae.config.z_dim :].fill_(LOGVAR_INIT)  # channels z_dim.. are the log-variance


def _clip(rng: np.random.Generator, frames: int) -> tuple[np.ndarray, SceneSpec, int]:
    """One scene: (clip (T, H, W, 3) uint8, its spec, the window's first frame in the 17-frame render)."""
    image = frames == 1
    spec = sample_scene(rng, split="any", image=image, num_frames=1 if image else CLIP_FRAMES)
    video = render(spec, 1 if image else CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE)
    start = int(rng.integers(0, video.shape[0] - frames + 1))
    return video[start : start + frames], spec, start


def _mosaic(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Four half-size windows, each around an object of its own scene (at its first frame), tiled 2 x 2: ~4
    objects per clip instead of ~1.4, at unchanged pixel scale (the windows are crops, not resizes)."""
    half = CLIP_SIZE // 2
    tiles = []
    for _ in range(4):
        clip, spec, start = _clip(rng, frames)
        centre = trajectory(spec, CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE)[start, int(rng.integers(len(spec.objects)))]
        x0, y0 = (int(np.clip(round(c) - half // 2 + rng.integers(-4, 5), 0, half)) for c in centre)
        tiles.append(clip[:, y0 : y0 + half, x0 : x0 + half])
    return np.concatenate([np.concatenate(tiles[:2], axis=2), np.concatenate(tiles[2:], axis=2)], axis=1)


def render_clips(rng: np.random.Generator, count: int, frames: int, mosaic: float = 0.0) -> torch.Tensor:
    """`count` random clips (B, 3, T, 64, 64) in [-1, 1]: still images (frames 1) or windows of 17-frame videos;
    each a mosaic with probability `mosaic`."""
    clips = [_mosaic(rng, frames) if mosaic and rng.random() < mosaic else _clip(rng, frames)[0] for _ in range(count)]
    return torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def is_image_step(step: int, steps: int) -> bool:
    """The first IMAGE_PHASE of the run is images only, then every IMAGE_EVERY-th step (videos : images = 3 : 1)."""
    return step < round(IMAGE_PHASE * steps) or step % IMAGE_EVERY == IMAGE_EVERY - 1


def training_batch(seed: int, step: int, steps: int, batch_size: int) -> tuple[torch.Tensor, torch.Generator]:
    """Step `step`'s clips and its posterior-noise generator: a pure function of (seed, step, steps)."""
    rng = np.random.default_rng([seed, 0, step])
    if is_image_step(step, steps):
        clips = render_clips(rng, IMAGE_BATCH_FACTOR * batch_size, 1, MOSAIC)
    else:
        clips = render_clips(rng, batch_size, TRAIN_FRAMES, MOSAIC)
    return clips, torch.Generator().manual_seed(int(rng.integers(2**62)))


def decode_unclamped(vae: Any, z: torch.Tensor) -> torch.Tensor:
    """`AutoencoderKLWan.decode(z).sample` before its final clamp to [-1, 1]: z (B, 16, F', h, w) -> (B, 3, F, H, W).

    Training needs it: a pixel clamped at -1 whose target is white (+1) gets no gradient at all. Mirrors diffusers
    0.42's `_decode` (one latent frame per decoder call, causal caches in `_feat_map`); tested against it."""
    vae.clear_cache()
    x = vae.post_quant_conv(z)
    frames = []
    for index in range(z.shape[2]):
        vae._conv_idx = [0]
        chunk = x[:, :, index : index + 1]
        frames.append(vae.decoder(chunk, feat_cache=vae._feat_map, feat_idx=vae._conv_idx, first_chunk=index == 0))
    vae.clear_cache()
    return torch.cat(frames, dim=2)


def edge_weights(x: torch.Tensor, weight: float) -> torch.Tensor:
    """x: (B, 3, T, H, W) -> (B, 1, T, H, W): 1 + weight where the 5 x 5 neighbourhood holds a colour edge (pixels
    within 2 px of an outline), else 1. Outlines are what the evaluator reads shapes from, and a few % of pixels."""
    pool = lambda v: torch.nn.functional.max_pool3d(v, (1, 5, 5), stride=1, padding=(0, 2, 2))  # noqa: E731
    local_range = (pool(x) + pool(-x)).amax(dim=1, keepdim=True)  # max - min per channel, then over channels
    return 1.0 + weight * (local_range > EDGE_THRESHOLD).to(x.dtype)


def vae_loss(
    vae: Any, x: torch.Tensor, generator: torch.Generator, kl_weight: float, edge_weight: float = EDGE_WEIGHT
) -> tuple[torch.Tensor, dict]:
    """x: (B, 3, T, H, W) in [-1, 1] -> (edge-weighted L1 + MSE + kl_weight * KL, the terms as floats).

    The reconstruction terms are weighted means over pixels (weights `edge_weights`), the KL a per-element mean."""
    posterior = vae.encode(x).latent_dist
    recon = decode_unclamped(vae, posterior.sample(generator))
    error = recon - x
    weights = edge_weights(x, edge_weight)
    l1 = (weights * error.abs()).mean() / weights.mean()
    mse = (weights * error.pow(2)).mean() / weights.mean()
    kl = 0.5 * (posterior.mean.pow(2) + posterior.var - 1.0 - posterior.logvar).mean()
    terms = {"l1": l1.item(), "mse": mse.item(), "kl": kl.item(), "psnr": _psnr(error.pow(2).mean().item() / 4)}
    return l1 + mse + kl_weight * kl, terms


def _psnr(mse01: float) -> float:
    """PSNR in dB of an MSE measured on [0, 1] pixels."""
    return 10.0 * math.log10(1.0 / max(mse01, 1e-10))


def _lr_factor(step: int, steps: int) -> float:
    if step < WARMUP:
        return (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def _save_state(path: Path, vae: Any, optimizer: torch.optim.Optimizer, step: int, recipe: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "recipe": recipe}, tmp)
    os.replace(tmp, path)


def train_vae(
    out_dir: str | Path,
    *,
    steps: int = STEPS,
    batch_size: int = 2,
    lr: float = LR,
    seed: int = 0,
    log_every: int = 10,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    checkpoint_every: int = 50,
    kl_weight: float = KL_WEIGHT,
    stats_clips: int = STATS_CLIPS,
    config: SmallVAEConfig = SMALL_VAE,
) -> Path:
    """Train (or resume) the small VAE into `out_dir`; returns `out_dir`, which then holds the diffusers VAE.

    Resumes from `out_dir/train_state.pt` when present (the recipe must match, except `steps`). `on_log` gets a
    dict per `log_every` steps: step, loss, l1, mse, kl, psnr (train batch), lr, sec_per_step."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    recipe = {"batch_size": batch_size, "lr": lr, "seed": seed, "kl_weight": kl_weight, "vae": asdict(config),
              "data": [TRAIN_FRAMES, IMAGE_PHASE, IMAGE_EVERY, IMAGE_BATCH_FACTOR, MOSAIC, EDGE_WEIGHT]}  # fmt: skip
    vae = build_small_vae(seed, config)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.0)
    state_path, step = root / STATE_FILE, 0
    if state_path.is_file():
        state = torch.load(state_path, map_location="cpu", weights_only=True)  # tensors and plain values only
        if state["recipe"] != recipe:
            raise ValueError(f"{state_path} was trained with {state['recipe']}, not {recipe}")
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
    started, window_start = time.perf_counter(), step
    while step < steps:
        for group in optimizer.param_groups:
            group["lr"] = lr * _lr_factor(step, steps)
        clips, generator = training_batch(seed, step, steps, batch_size)
        loss, terms = vae_loss(vae, clips, generator, kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"VAE loss is {loss.item()} at step {step}")
        if step % checkpoint_every == 0 or step == steps:
            _save_state(state_path, vae, optimizer, step, recipe)
        if on_log is not None and (step % log_every == 0 or step == steps):
            elapsed = (time.perf_counter() - started) / (step - window_start)
            on_log({"step": step, "loss": loss.item(), **terms, "lr": optimizer.param_groups[0]["lr"],
                    "sec_per_step": round(elapsed, 3)})  # fmt: skip
    vae.eval()
    mean, std = latent_stats(vae, stats_clips, seed)
    vae.register_to_config(latents_mean=mean, latents_std=std)
    vae.save_pretrained(str(root))
    return root


@torch.no_grad()
def latent_stats(vae: Any, num_clips: int, seed: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of posterior modes over `num_clips` clips (17-frame videos : images = 3 : 1)."""
    rng = np.random.default_rng([seed, 1])
    latents = [
        vae.encode(render_clips(rng, 1, 1 if i % 4 == 3 else CLIP_FRAMES)).latent_dist.mode() for i in range(num_clips)
    ]
    flat = torch.cat([z.transpose(0, 1).flatten(1) for z in latents], dim=1).double()  # (C, N)
    return flat.mean(1).tolist(), flat.std(1).clamp_min(1e-6).tolist()


@dataclass
class VAEEvaluation:
    psnr: float  # dB over all reconstructed frames in [0, 1]
    table: ScoreTable  # the procedural evaluator on reconstructions vs the ground-truth scene
    clips: int

    @property
    def accuracy(self) -> float:
        """Attributes correct over attributes scored (the evaluator's `overall`)."""
        return self.table.overall


@torch.no_grad()
def evaluate_vae(vae: Any, num_clips: int = 48, seed: int = 1234) -> VAEEvaluation:
    """Reconstruct (posterior mode) `num_clips` fresh clips, 17-frame videos : images = 3 : 1, and score them."""
    rng = np.random.default_rng([seed, 2])
    scores, squared, count = [], 0.0, 0
    for index in range(num_clips):
        image = index % 4 == 3
        spec = sample_scene(rng, split="any", image=image, num_frames=1 if image else CLIP_FRAMES)
        frames = render(spec, 1 if image else CLIP_FRAMES, CLIP_SIZE, CLIP_SIZE)  # (T, H, W, 3) uint8
        x = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        squared += float(((recon - x) / 2).pow(2).sum())
        count += x.numel()
        pixels = ((recon[0].permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        scores.append(score_video(pixels, spec))
    return VAEEvaluation(psnr=_psnr(squared / count), table=score_prompts(scores), clips=num_clips)


__all__ = [
    "SMALL_VAE",
    "SmallVAEConfig",
    "VAEEvaluation",
    "build_small_vae",
    "decode_unclamped",
    "evaluate_vae",
    "init_weights",
    "latent_stats",
    "render_clips",
    "train_vae",
    "training_batch",
    "vae_loss",
]
