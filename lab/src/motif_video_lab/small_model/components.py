"""Assemble the small model's release folder in the official layout, in two steps.

1. `build_release_components(out_dir, vae_dir, seed)`: everything except the transformer, which is trained later
   against these frozen parts:

       tokenizer/          word-level tokenizer over the procedural vocabulary (vocab.py)
       text_encoder/       frozen T5Gemma2 encoder + SigLIP tower: random (text_encoder.py), or its text half
                           pretrained on captions (text_pretraining.py, `text_pretrain_steps`); the tower is
                           the random encoder's of the seed either way (`build_text_encoder`)
       vae/                the trained Wan VAE with its measured latents_mean / latents_std (vae.py)
       feature_extractor/  SiglipImageProcessor at the tower's input size, mean = std = 0.5 (as tiny.py)
       scheduler/          FlowMatchEulerDiscreteScheduler
       guider/             AdaptiveProjectedGuidance with the official settings (tiny.build_guider)
       model_index.json    written last; "transformer": [null, null] until step 2, so our loader refuses the
                           folder ("has no 'transformer' component") instead of loading half a model

2. `finish_release(release_dir, transformer_dir)`: copies an exported transformer folder in, optionally sets the
   guider's scale and interval (`guidance`: what the trained model samples best with), and rewrites model_index.json
   (atomically, last) to name it. The folder then loads with `MotifVideoPipeline.from_pretrained`
   (and diffusers') and generates at `SMALL_DEFAULTS` (`_motif_video_defaults`, read by pipeline/loading.py).

The index is tiny.model_index() (the classes the tiny release is tested to load with) with our defaults.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from motif_video.pipeline import tiny
from motif_video.pipeline.guidance import GuidanceConfig
from motif_video.pipeline.loading import DEFAULTS_KEY, GUIDER_FILES, INDEX, TRANSFORMER_CLASS
from motif_video_lab.small_model.text_encoder import (
    PRETRAINED_TEXT_ENCODER,
    SMALL_TEXT_ENCODER,
    build_small_text_encoder,
    text_dims,
)
from motif_video_lab.small_model.vocab import build_small_tokenizer

# What `motif-video generate` uses when the call does not say (GenerationDefaults fields). The shift is lower than
# the official 15/8: 80 latent tokens need far less of a push towards noise than 20k. No negative prompt: the
# official one is mostly <unk> under the caption vocabulary, and the model was trained with the empty prompt as null.
# Frame-correlated starting noise, as the last training stage used (small_model/reproduce.py; the value written is
# the plan's, this is the default plan's).
SMALL_DEFAULTS = dict(
    height=64,
    width=64,
    num_frames=17,
    fps=8,
    num_inference_steps=25,
    shift_t2v=3.0,
    shift_i2v=3.0,
    negative_prompt="",
    noise_correlation=0.9,
)
SCHEDULER_SHIFT = 15.0  # the scheduler config's shift, as tiny.py (our pipeline applies its own explicit shift)
COMPONENTS = ("tokenizer", "text_encoder", "vae", "feature_extractor", "scheduler", "guider")


def release_index(with_transformer: bool, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model_index.json dict: the official classes, our defaults (SMALL_DEFAULTS updated by `defaults`), the
    transformer named only once present."""
    index = {**tiny.model_index(), DEFAULTS_KEY: {**SMALL_DEFAULTS, **(defaults or {})}}
    index["transformer"] = list(TRANSFORMER_CLASS) if with_transformer else [None, None]
    return index


def _write_index(root: Path, index: dict[str, Any]) -> None:
    tmp = root / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, root / INDEX)


def load_trained_vae(vae_dir: str | Path) -> Any:
    """The trained `AutoencoderKLWan` from `train_vae`'s out_dir; refuses one without measured latent stats."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan.from_pretrained(str(vae_dir)).eval()
    if vae.config.z_dim != 16:
        raise ValueError(f"{vae_dir}: the transformer needs z_dim 16, the VAE has {vae.config.z_dim}")
    if all(s == 1.0 for s in vae.config.latents_std) and all(m == 0.0 for m in vae.config.latents_mean):
        raise ValueError(f"{vae_dir}: latents_mean / latents_std are the untrained placeholders; run train_vae")
    return vae


def build_text_encoder(tokenizer: Any, seed: int = 0, pretrain_steps: int = 0) -> Any:
    """The frozen text encoder: random (`SMALL_TEXT_ENCODER`) or, with pretrain_steps > 0, `PRETRAINED_TEXT_ENCODER`
    pretrained on train-split captions for that many steps (`text_pretraining`).

    Either way its SigLIP tower is the random encoder's of `seed`: the tower makes the I2V image tokens that
    `prepare` stores in the shards, so shards prepared with one encoder of a seed stay right for a transformer
    sampled with another. (Built from the other config, the same seed gave another tower; the transformer trained on
    one tower's tokens and sampled with the other's lost 7 points of held-out I2V, README.)"""
    if pretrain_steps < 0:
        raise ValueError(f"pretrain_steps must be >= 0, got {pretrain_steps}")
    random_encoder = build_small_text_encoder(seed)
    if not pretrain_steps:
        return random_encoder
    from motif_video_lab.small_model.text_pretraining import TextPretrainConfig, pretrain_text_encoder

    encoder = build_small_text_encoder(seed, PRETRAINED_TEXT_ENCODER)
    encoder.vision_tower.load_state_dict(random_encoder.vision_tower.state_dict())
    pretrain_text_encoder(encoder, tokenizer, seed, TextPretrainConfig(steps=pretrain_steps))
    return encoder


def build_components(vae_dir: str | Path, seed: int = 0, text_pretrain_steps: int = 0) -> dict[str, Any]:
    """Every component but the transformer, in memory (keys as the folder names)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import SiglipImageProcessor

    size = SMALL_TEXT_ENCODER.image_size
    tokenizer = build_small_tokenizer()
    return dict(
        tokenizer=tokenizer,
        text_encoder=build_text_encoder(tokenizer, seed, text_pretrain_steps),
        vae=load_trained_vae(vae_dir),
        feature_extractor=SiglipImageProcessor(
            size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=SCHEDULER_SHIFT),
        guider=tiny.build_guider(),
    )


def build_release_components(
    out_dir: str | Path, vae_dir: str | Path, seed: int = 0, text_pretrain_steps: int = 0
) -> Path:
    """Write the release folder without the transformer (see the module docstring); returns its path."""
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / INDEX).unlink(missing_ok=True)  # no index while the folders are being (re)written
    for name, component in build_components(vae_dir, seed, text_pretrain_steps).items():
        shutil.rmtree(root / name, ignore_errors=True)
        component.save_pretrained(str(root / name))
    _write_index(root, release_index(with_transformer=False))
    return root


def set_guidance(release_dir: str | Path, **changes: float) -> Path:
    """Rewrite the release's guider config with `changes` to `GuidanceConfig` fields (scale, start, stop), every
    other setting kept; atomic. Returns the file. APG's scale is in the original formulation (v_cond + scale * d:
    0 means no guidance); `stop` < 1 guides only the first `stop` of the steps (the noisiest ones)."""
    folder = Path(release_dir) / "guider"
    path = next((folder / name for name in GUIDER_FILES if (folder / name).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{folder} has none of {GUIDER_FILES}: not a built release")
    unknown = set(changes) - {"scale", "start", "stop"}
    if unknown:
        raise ValueError(f"set_guidance changes scale, start and stop, not {sorted(unknown)}")
    stored = json.loads(path.read_text())
    guidance = GuidanceConfig.from_diffusers_config(stored).replace(**{k: float(v) for k, v in changes.items()})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({**stored, **guidance.to_diffusers_config()}, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def finish_release(
    release_dir: str | Path,
    transformer_dir: str | Path,
    defaults: dict[str, Any] | None = None,
    guidance: dict[str, float] | None = None,
) -> Path:
    """Copy an exported transformer folder (config.json + weights) into the release; index rewritten last, with
    SMALL_DEFAULTS updated by `defaults` (what the training used, e.g. its noise_correlation). `guidance`: the
    guider's scale / start / stop (`set_guidance`); None keeps the guider as built (the official APG 8)."""
    root, source = Path(release_dir), Path(transformer_dir)
    missing = [name for name in COMPONENTS if not (root / name).is_dir()]
    if missing or not (root / INDEX).is_file():
        raise FileNotFoundError(f"{root} is not a built release (missing {missing or [INDEX]})")
    config_path = source / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{source} has no config.json: not an exported transformer folder")
    config = json.loads(config_path.read_text())
    expected = text_dims()
    found = (config.get("text_embed_dim"), config.get("image_embed_dim"))
    if found != expected:
        raise ValueError(f"transformer reads (text, image) widths {found}, the text encoder gives {expected}")
    (root / INDEX).unlink()
    if guidance:
        set_guidance(root, **guidance)
    staging = root / "transformer.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    shutil.rmtree(root / "transformer", ignore_errors=True)
    os.replace(staging, root / "transformer")
    _write_index(root, release_index(with_transformer=True, defaults=defaults))
    return root


__all__ = [
    "COMPONENTS",
    "SMALL_DEFAULTS",
    "build_components",
    "build_release_components",
    "build_text_encoder",
    "finish_release",
    "load_trained_vae",
    "release_index",
    "set_guidance",
    "text_dims",
]
