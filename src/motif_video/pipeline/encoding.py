"""One call's conditioning: prompt and negative-prompt text, and the first frame for image-to-video.

Text: prompts and negative prompts go through the text encoder as ONE batch, then each is repeated for its
prompt's videos; negatives are encoded only when some step runs guidance. Image: each distinct image is
preprocessed and encoded once (the VAE's first-frame latent, and SigLIP tokens when the text encoder has a
vision tower), then mapped to its videos. `unknown_words` lists what a word-level tokenizer cannot represent.
"""

from __future__ import annotations

from typing import Any

import torch

from motif_video.core import encoders as conditioning
from motif_video.core import latent_space as latent_ops
from motif_video.pipeline import inputs
from motif_video.pipeline.inputs import CallPlan

Text = tuple[torch.Tensor, torch.Tensor]  # embeddings (B, L, D) and mask (B, L) bool


def text_conditions(
    pipe: Any,
    plan: CallPlan,
    prompt_embeds: torch.Tensor | None,
    prompt_mask: torch.Tensor | None,
    negative_embeds: torch.Tensor | None,
    negative_mask: torch.Tensor | None,
) -> tuple[Text, Text | None]:
    """-> ((cond, mask), (uncond, mask) or None without guidance), each (B = prompts x videos, L, D) on the
    execution device in the transformer's dtype."""
    device, dtype = pipe.device, pipe.transformer.dtype
    n = plan.n_prompts
    negatives = None
    if plan.needs_uncond and negative_embeds is None:
        negatives = inputs.negative_list(plan.negative_prompt, n)
    if negatives is not None and (pipe.text_encoder is None or pipe.tokenizer is None):
        raise ValueError(
            "guidance needs the negative prompt encoded, and this pipeline has no text encoder: pass "
            "negative_prompt_embeds (and its mask), or guidance='none'"
        )
    texts = (plan.prompts or []) + (negatives or [])
    encoded = pipe.encode_prompt(texts, plan.max_sequence_length) if texts else None

    if plan.prompts is not None:
        cond = encoded[0][:n], encoded[1][:n]
    else:
        embeds = prompt_embeds.to(device=device, dtype=dtype)
        cond = embeds, inputs.mask_or_ones(prompt_mask, embeds)
    uncond = None
    if plan.needs_uncond and negative_embeds is not None:
        embeds = negative_embeds.to(device=device, dtype=dtype)
        uncond = embeds, inputs.mask_or_ones(negative_mask, embeds)
        if embeds.shape[0] != n:
            raise ValueError(f"negative_prompt_embeds has batch {embeds.shape[0]}, prompts {n}")
    elif plan.needs_uncond:
        uncond = encoded[0][-n:], encoded[1][-n:]

    def per_video(text: Text) -> Text:
        return tuple(x.repeat_interleave(plan.num_videos_per_prompt, dim=0) for x in text)

    return per_video(cond), None if uncond is None else per_video(uncond)


def image_conditions(
    pipe: Any, plan: CallPlan, image: Any, generator: torch.Generator | list[torch.Generator] | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """-> (first-frame latents (B, 16, 1, h, w), SigLIP tokens (B, N, D) or None), one row per video.

    With one generator per video, an image's posterior sample is drawn with the generator of its first video."""
    images, index = inputs.image_list(image, plan.n_prompts)
    frames = conditioning.preprocess_images(images, plan.height, plan.width)
    video_index = index.repeat_interleave(plan.num_videos_per_prompt)
    image_generator = generator
    if isinstance(generator, list):
        image_generator = [generator[int((video_index == k).nonzero()[0])] for k in range(len(images))]
    with pipe.using("vae"):
        sample = plan.first_frame_latent == "sample"
        first = latent_ops.encode_first_frames(pipe.vae, frames, image_generator, sample)
    tokens = pipe.encode_image(frames)
    if tokens is not None:
        tokens = tokens[video_index.to(tokens.device)].to(pipe.device, pipe.transformer.dtype)
    return first[video_index.to(first.device)], tokens


def unknown_words(tokenizer: Any, prompt: str) -> list[str]:
    """The words of `prompt` that `tokenizer` maps to its unknown token, in order (none for a byte-level
    vocabulary such as the official Gemma tokenizer's; a word-level one, like the small model's, has gaps)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if tokenizer is None or unk is None:
        return []
    try:
        encoded = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:  # a slow (Python) tokenizer has no offsets: name the token instead
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return [tokenizer.unk_token] * ids.count(unk)
    spans = encoded["offset_mapping"]
    return [prompt[a:b] for i, (a, b) in zip(encoded["input_ids"], spans) if i == unk]
