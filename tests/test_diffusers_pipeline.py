"""diffusers' own Motif-Video pipelines run with our transformer in place of `MotifVideoTransformer3DModel`
and give the same frames.

Every component is built tiny and locally (no hub access), fp32 on CPU:
- transformer: the `tiny` preset; the reference gets random weights, ours loads its state dict;
- VAE: a 3-channel `AutoencoderKLWan` with the real 8x spatial / 4x temporal compression;
- text encoder: none for text-to-video (prompt embeddings and their padding masks are passed directly);
  for image-to-video a tiny `T5Gemma2Encoder`, whose SigLIP `vision_tower` the pipeline uses to turn the first
  frame into image tokens (24 wide = the preset's `image_embed_dim`). The tokenizer is never needed.
- scheduler: `FlowMatchEulerDiscreteScheduler`; guider: `AdaptiveProjectedGuidance` (cond + uncond passes).

Each pipeline runs twice on identical inputs and seeds, once with each transformer, and the decoded frames
must agree to 1e-5 (they lie in [0, 1]). The last tests check that the comparison has teeth: un-padding a single
text key, or dropping the image tokens, moves the frames by far more than that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from diffusers import (
    AdaptiveProjectedGuidance,
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
    MotifVideoImage2VideoPipeline,
    MotifVideoPipeline,
)
from transformers import (
    SiglipImageProcessor,
    T5Gemma2Encoder,
)

from model_helpers import assert_close_scaled, random_reference
from motif_video import MotifVideoTransformer, get_preset
from motif_video.pipeline.tiny import build_text_encoder, build_vae

TINY = get_preset("tiny")
HEIGHT = WIDTH = 32  # latent 4 x 4 -> 2 x 2 patches
NUM_FRAMES = 9  # latent 3 frames
STEPS = 3
TEXT_LEN = 7
IMAGE_TOKENS = (HEIGHT // 8) * (WIDTH // 8)  # SigLIP patches (patch_size 8) of the first frame
# Valid text lengths; every row is right-padded to TEXT_LEN. T2V: different lengths inside the batch, so
# the model must keep a key mask after trimming. I2V (batch 1): the prompt is trimmed to 5 keys and needs
# no mask at all; the negative prompt is unpadded.
T2V_VALID = ((5, 3), (2, 4))  # (prompt rows, negative prompt rows)
I2V_VALID = ((5,), (TEXT_LEN,))
# Weight noise on top of diffusers' init. With conftest's 0.05 the tiny model barely listens to its context
# (cond - uncond ~0.3% of the prediction; un-padding one key moves the frames by ~1e-5, i.e. below the
# tolerance). With 0.1 the same change moves them by ~0.2 and nothing saturates.
WEIGHT_NOISE = 0.1


@dataclass
class Parts:
    reference: torch.nn.Module
    vae: AutoencoderKLWan
    text_encoder: T5Gemma2Encoder
    feature_extractor: SiglipImageProcessor


def _mask(valid: tuple[int, ...]) -> torch.Tensor:
    mask = torch.zeros(len(valid), TEXT_LEN, dtype=torch.long)
    for row, n in enumerate(valid):
        mask[row, :n] = 1
    return mask


def _text_inputs(valid: tuple[tuple[int, ...], tuple[int, ...]], seed: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prompt_valid, negative_valid = valid
    return dict(
        prompt_embeds=torch.randn(len(prompt_valid), TEXT_LEN, TINY.text_embed_dim, generator=g),
        prompt_attention_mask=_mask(prompt_valid),
        negative_prompt_embeds=torch.randn(len(negative_valid), TEXT_LEN, TINY.text_embed_dim, generator=g),
        negative_prompt_attention_mask=_mask(negative_valid),
    )


@pytest.fixture(scope="module")
def parts() -> Parts:
    with torch.random.fork_rng():
        reference = random_reference(TINY, noise=WEIGHT_NOISE)
        torch.manual_seed(2)
        vae = build_vae()
        text_encoder = build_text_encoder(TINY.text_embed_dim, TINY.image_embed_dim, HEIGHT)
    assert (vae.config.scale_factor_spatial, vae.config.scale_factor_temporal) == (8, 4)
    feature_extractor = SiglipImageProcessor(size={"height": HEIGHT, "width": WIDTH})
    return Parts(reference, vae, text_encoder, feature_extractor)


def _ours(reference: torch.nn.Module, fused: bool) -> MotifVideoTransformer:
    model = MotifVideoTransformer(TINY)
    model.load_state_dict(reference.state_dict())
    model.eval()
    if fused:
        model.fuse_qkv_projections()
    return model


class _Recorder:
    """Records what the pipeline hands the transformer on each call."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[dict] = []
        self._handle = model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        mask = kwargs.get("encoder_attention_mask")
        image = kwargs.get("image_embeds")
        self.calls.append(
            dict(
                hidden_states=kwargs["hidden_states"].clone(),
                valid=None if mask is None else tuple(mask.sum(dim=1).tolist()),
                image_shape=None if image is None else tuple(image.shape),
            )
        )

    def remove(self) -> None:
        self._handle.remove()


def _components(parts: Parts, transformer: torch.nn.Module) -> dict:
    return dict(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=parts.vae,
        tokenizer=None,
        transformer=transformer,
        guider=AdaptiveProjectedGuidance(guidance_scale=8.0),  # fresh: it keeps state across steps
    )


def _call_kwargs(text: dict, output_type: str) -> dict:
    return dict(
        **text,
        height=HEIGHT,
        width=WIDTH,
        num_frames=NUM_FRAMES,
        num_inference_steps=STEPS,
        generator=torch.Generator().manual_seed(1),
        output_type=output_type,
    )


def _text_to_video(parts: Parts, transformer: torch.nn.Module, text: dict) -> torch.Tensor:
    pipe = MotifVideoPipeline(**_components(parts, transformer), text_encoder=None)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe(**_call_kwargs(text, "np")).frames
    assert isinstance(frames, np.ndarray)
    return torch.from_numpy(frames)


def _first_frame() -> torch.Tensor:
    return torch.rand(3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))  # [0, 1], as the pipeline takes


def _image_to_video(parts: Parts, transformer: torch.nn.Module, image_tokens: bool = True) -> torch.Tensor:
    # Without a text encoder the pipeline has no vision tower and sends no image tokens.
    pipe = MotifVideoImage2VideoPipeline(
        **_components(parts, transformer),
        text_encoder=parts.text_encoder if image_tokens else None,
        feature_extractor=parts.feature_extractor,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe(image=_first_frame(), prompt=None, **_call_kwargs(_text_inputs(I2V_VALID), "pt")).frames


@pytest.fixture(scope="module")
def reference_t2v(parts: Parts) -> torch.Tensor:
    return _text_to_video(parts, parts.reference, _text_inputs(T2V_VALID))


@pytest.fixture(scope="module")
def reference_i2v(parts: Parts) -> torch.Tensor:
    return _image_to_video(parts, parts.reference)


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_text_to_video_pipeline_gives_the_same_frames(parts, reference_t2v, fused):
    ours = _ours(parts.reference, fused)
    recorder = _Recorder(ours)
    try:
        frames = _text_to_video(parts, ours, _text_inputs(T2V_VALID))
    finally:
        recorder.remove()

    assert frames.shape == reference_t2v.shape == (2, NUM_FRAMES, HEIGHT, WIDTH, 3)
    assert torch.isfinite(frames).all() and reference_t2v.std() > 1e-2
    assert_close_scaled(frames, reference_t2v)
    # APG runs a cond and an uncond pass per step, each with its own per-prompt padding, and no image tokens.
    assert [c["valid"] for c in recorder.calls] == list(T2V_VALID) * STEPS
    assert all(c["image_shape"] is None for c in recorder.calls)
    assert all(c["hidden_states"][:, 16:].abs().max() == 0 for c in recorder.calls)  # T2V: no conditioning


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_image_to_video_pipeline_gives_the_same_frames(parts, reference_i2v, fused):
    ours = _ours(parts.reference, fused)
    recorder = _Recorder(ours)
    try:
        frames = _image_to_video(parts, ours)
    finally:
        recorder.remove()

    assert frames.shape == reference_i2v.shape == (1, NUM_FRAMES, 3, HEIGHT, WIDTH)
    assert torch.isfinite(frames).all() and reference_i2v.std() > 1e-2
    assert_close_scaled(frames, reference_i2v)
    # The first frame reached the model both as SigLIP tokens and as the latent + mask channels of frame 0.
    assert [c["image_shape"] for c in recorder.calls] == [(1, IMAGE_TOKENS, TINY.image_embed_dim)] * (2 * STEPS)
    assert [c["valid"] for c in recorder.calls] == list(I2V_VALID) * STEPS
    for call in recorder.calls:
        mask_channel = call["hidden_states"][:, 32]
        assert bool((mask_channel[:, 0] == 1).all()) and bool((mask_channel[:, 1:] == 0).all())
        assert call["hidden_states"][:, 16:32, 0].abs().max() > 0


def test_frames_depend_on_the_text_padding(parts, reference_t2v):
    """The comparison has teeth: un-padding one text key moves the frames far beyond the 1e-5 tolerance (so the
    padding masks, and their trimming in our model, are load-bearing), and ours follows that change too."""
    text = _text_inputs(T2V_VALID)
    text["prompt_attention_mask"][1, 3] = 1
    moved = _text_to_video(parts, parts.reference, text)
    assert (moved - reference_t2v).abs().max() > 1e-2
    assert_close_scaled(_text_to_video(parts, _ours(parts.reference, fused=False), text), moved)


def test_frames_depend_on_the_image_tokens(parts, reference_i2v):
    without = _image_to_video(parts, parts.reference, image_tokens=False)
    assert (without - reference_i2v).abs().max() > 1e-2
