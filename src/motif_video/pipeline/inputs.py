"""How one call's prompts, negative prompts, images and masks map onto a batch of videos.

Videos are ordered prompt-major: prompt 0's `num_videos_per_prompt` videos, then prompt 1's, ... (as diffusers).
Images: one for every prompt, or one per prompt; each distinct image is encoded once and mapped by index.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def prompt_list(prompt: str | list[str] | None, prompt_embeds: torch.Tensor | None) -> list[str] | None:
    """The prompts as a non-empty list of non-empty strings, or None when embeddings are given instead."""
    if prompt is None:
        if prompt_embeds is None:
            raise ValueError("pass a prompt (or prompt_embeds)")
        return None
    if prompt_embeds is not None:
        raise ValueError("pass either prompt or prompt_embeds, not both")
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("the prompt list is empty")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError("prompts must be non-empty strings")
    return prompts


def negative_list(negative_prompt: str | list[str] | None, n_prompts: int) -> list[str]:
    """One negative prompt per prompt (None means the empty prompt)."""
    negatives = list(negative_prompt) if isinstance(negative_prompt, list) else [negative_prompt or ""] * n_prompts
    if len(negatives) != n_prompts:
        raise ValueError(f"got {len(negatives)} negative prompts for {n_prompts} prompts")
    return negatives


def image_list(image: Any, n_prompts: int) -> tuple[list[Any], torch.Tensor]:
    """-> (distinct images, (n_prompts,) index of each prompt's image)."""
    if isinstance(image, (torch.Tensor, np.ndarray)) and image.ndim == 4 and image.shape[0] > 1:
        image = list(image)
    if isinstance(image, (list, tuple)):
        images = list(image)
        if len(images) == 1:
            return images, torch.zeros(n_prompts, dtype=torch.long)
        if len(images) != n_prompts:
            raise ValueError(f"got {len(images)} images for {n_prompts} prompts: pass one, or one per prompt")
        return images, torch.arange(n_prompts)
    return [image], torch.zeros(n_prompts, dtype=torch.long)


def mask_or_ones(mask: torch.Tensor | None, embeds: torch.Tensor) -> torch.Tensor:
    """A (B, L) bool mask for (B, L, D) embeddings; None means every token is valid."""
    if mask is None:
        return torch.ones(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
    if tuple(mask.shape) != tuple(embeds.shape[:2]):
        shapes = f"{tuple(mask.shape)} vs embeddings {tuple(embeds.shape[:2])}"
        raise ValueError(f"attention mask shape does not match its embeddings: {shapes}")
    return mask.to(device=embeds.device, dtype=torch.bool)
