"""What the transformer is conditioned on: text tokens, SigLIP image tokens and the first-frame channels.

- Text: the Gemma tokenizer, right padding, at most `max_sequence_length` (512) tokens, through the
  T5Gemma2 encoder's `last_hidden_state`. We pad to the longest prompt of the call, not to 512: the encoder
  masks padding, so valid tokens are unchanged, and the transformer trims padding anyway.
- Image (I2V): the first frame resized to the video size in [-1, 1] (diffusers' `VaeImageProcessor`, as the
  reference), then (frame + 1) / 2 through `SiglipImageProcessor` (no rescale) and the vision tower that sits
  inside the T5Gemma2 encoder checkpoint.
- Every distinct image is encoded once, however many prompts or videos share it (`index` maps videos to
  images).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import PIL.Image
import torch

logger = logging.getLogger(__name__)

ImageInput = Any  # PIL image, path, (C, H, W) / (H, W, C) tensor or array in [0, 1]


def tokenize_prompts(tokenizer: Any, prompts: list[str], max_sequence_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """prompts -> (input_ids (B, L), attention_mask (B, L) bool), L = longest prompt's tokens; longer prompts are
    truncated to `max_sequence_length` with a warning. Training with a tuned text encoder tokenizes the same way."""
    tokens = tokenizer(
        prompts,
        padding="longest",
        max_length=max_sequence_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    if tokens["input_ids"].shape[1] >= max_sequence_length:  # only then can a prompt have been cut: count them
        untruncated = tokenizer(prompts, add_special_tokens=True, return_attention_mask=False)["input_ids"]
        for prompt, ids in zip(prompts, untruncated):
            if len(ids) > max_sequence_length:
                logger.warning("prompt truncated to %d of its %d tokens: %.60s...", max_sequence_length, len(ids),
                               prompt)  # fmt: skip
    return tokens["input_ids"], tokens["attention_mask"].bool()


def encode_text(
    tokenizer: Any,
    text_encoder: torch.nn.Module,
    prompts: list[str],
    max_sequence_length: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """prompts -> (embeds (B, L, D) in `dtype` on `device`, mask (B, L) bool); L = longest prompt's tokens."""
    ids, mask = tokenize_prompts(tokenizer, prompts, max_sequence_length)
    encoder_device = _module_device(text_encoder)
    with torch.no_grad():
        out = text_encoder(input_ids=ids.to(encoder_device), attention_mask=mask.long().to(encoder_device))
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
    return hidden.to(device=device, dtype=dtype), mask.to(device=device)


def pad_text(embeds: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad (B, L, D) embeddings and their (B, L) mask to `length` tokens (zeros, masked out)."""
    extra = length - embeds.shape[1]
    if extra < 0:
        raise ValueError(f"cannot pad {embeds.shape[1]} tokens down to {length}")
    if extra == 0:
        return embeds, mask
    embeds = torch.nn.functional.pad(embeds, (0, 0, 0, extra))
    mask = torch.nn.functional.pad(mask, (0, extra), value=False)
    return embeds, mask


def as_pil_or_tensor(image: ImageInput) -> PIL.Image.Image | torch.Tensor:
    """One image in a form diffusers' image processor takes: PIL, or a (1, C, H, W) tensor in [0, 1]."""
    if isinstance(image, str) or hasattr(image, "__fspath__"):
        from motif_video.core.video_io import load_image

        return load_image(image)
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        array = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        if array.ndim != 3 or array.shape[-1] not in (1, 3):
            raise ValueError(f"a numpy image must be (H, W, 3), got shape {image.shape}")
        image = torch.from_numpy(array).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.ndim == 4 and image.shape[0] == 1:
            image = image[0]
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"a tensor image must be (3, H, W) in [0, 1], got shape {tuple(image.shape)}")
        if image.dtype == torch.uint8:
            image = image.float() / 255.0
        return image.float().expand(3, -1, -1)[None]
    raise ValueError(f"unsupported image type {type(image).__name__}: pass a PIL image, a path, a tensor or an array")


def preprocess_images(images: list[ImageInput], height: int, width: int) -> torch.Tensor:
    """Images -> (N, 3, H, W) float32 in [-1, 1], resized to the video size (as the reference does)."""
    from diffusers.image_processor import VaeImageProcessor

    processor = VaeImageProcessor(vae_scale_factor=8)
    frames = [processor.preprocess(as_pil_or_tensor(image), height=height, width=width) for image in images]
    return torch.cat(frames).float()


def siglip_tokens(
    vision_tower: torch.nn.Module, feature_extractor: Any, frames: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """First frames (N, 3, H, W) in [-1, 1] -> SigLIP tokens (N, L_img, D_img) on `device`."""
    pixels = ((frames.float() + 1) / 2).clamp(0, 1)
    inputs = feature_extractor.preprocess(
        images=pixels,
        do_resize=True,
        do_rescale=False,
        do_normalize=True,
        do_convert_rgb=True,
        return_tensors="pt",
    )
    tower_device = _module_device(vision_tower)
    tower_dtype = next(vision_tower.parameters()).dtype
    with torch.no_grad():
        out = vision_tower(pixel_values=inputs["pixel_values"].to(tower_device, tower_dtype))
    return out.last_hidden_state.to(device)


def _module_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device
