"""The small model's frozen parts: tokenizer coverage, the frozen text encoder, the VAE loop and the release folder.

No real training here: the VAE runs a few steps at base width 4 to check the loop, exact resume and the stats.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from motif_video.pipeline.guidance import GuidanceConfig
from motif_video_lab.procedural import eval_prompts
from motif_video_lab.procedural.captions import CAPTION_VARIANTS
from motif_video_lab.small_model import (
    SMALL_DEFAULTS,
    SmallVAEConfig,
    build_release_components,
    build_small_text_encoder,
    build_small_tokenizer,
    build_small_vae,
    finish_release,
    small_vocab,
    text_dims,
    token_similarity,
    train_vae,
)
from motif_video_lab.small_model.vocab import EXTRA_WORDS, template_captions

TOY_VAE = SmallVAEConfig(base_dim=4, dim_mult=(1, 1, 1, 1))  # the real layout at toy width
PROMPT = "A small {c} circle moves to the left slowly on a black background."


@pytest.fixture(scope="module")
def tokenizer():
    return build_small_tokenizer()


def test_tokenizer_covers_every_caption_and_prompt(tokenizer) -> None:
    texts = template_captions(num_scenes=600, seed=123)  # other scenes than the vocabulary was built from
    for split in ("heldout", "train"):
        texts += [p.prompt for v in CAPTION_VARIANTS for p in eval_prompts(split, 48, variant=v)]
    texts.append(" ".join(EXTRA_WORDS))
    assert len(texts) > 10_000
    ids = tokenizer(texts)["input_ids"]
    unknown = [t for t, row in zip(texts, ids) if tokenizer.unk_token_id in row]
    assert not unknown, unknown[:3]
    vocab = small_vocab()
    assert vocab == sorted(set(vocab)) and not {"<pad>", "<eos>", "<bos>", "<unk>"} & set(vocab)
    ids = tokenizer.convert_tokens_to_ids(["red", "circle", "."])
    assert tokenizer("Red CIRCLE.")["input_ids"] == [tokenizer.bos_token_id, *ids]  # lowercased, punctuation split


def test_text_encoder_is_seeded_frozen_and_separates_words(tokenizer) -> None:
    a, b, c = build_small_text_encoder(0), build_small_text_encoder(0), build_small_text_encoder(1)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert any(not torch.equal(p, r) for p, r in zip(a.state_dict().values(), c.state_dict().values()))
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    assert len(tokenizer) <= a.config.text_config.vocab_size
    assert (a.config.text_config.hidden_size, a.config.vision_config.hidden_size) == text_dims()
    red, blue = PROMPT.format(c="red"), PROMPT.format(c="blue")
    assert token_similarity(a, tokenizer, (red, "red"), (blue, "blue")) < 0.8  # different words stay apart
    binding = token_similarity(a, tokenizer, (red, "circle"), (blue, "circle"))
    assert 0.5 < binding < 0.99  # the noun carries its adjective, its own identity still dominates


class Killed(Exception):
    pass


def test_train_vae_resumes_bit_exactly_and_writes_latent_stats(tmp_path) -> None:
    kwargs = dict(steps=4, batch_size=1, seed=3, checkpoint_every=2, stats_clips=2, config=TOY_VAE)
    logs: list[dict] = []

    def killed_at_step_2(row: dict) -> None:
        logs.append(row)
        if row["step"] == 2:
            raise Killed

    with pytest.raises(Killed):  # steps 0, 1 are images (the image phase), then a video step and an image step
        train_vae(tmp_path / "resumed", on_log=killed_at_step_2, log_every=1, **kwargs)
    assert [row["step"] for row in logs] == [1, 2] and all(np.isfinite(row["loss"]) for row in logs)
    train_vae(tmp_path / "resumed", **kwargs)  # the same command again: continues from the step-2 state
    train_vae(tmp_path / "straight", **kwargs)
    resumed = torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=False)
    straight = torch.load(tmp_path / "straight" / "train_state.pt", weights_only=False)
    assert resumed["step"] == straight["step"] == 4
    for name, tensor in straight["model"].items():
        assert torch.equal(resumed["model"][name], tensor), name
    config = json.loads((tmp_path / "straight" / "config.json").read_text())
    assert len(config["latents_mean"]) == len(config["latents_std"]) == 16
    assert config["latents_mean"] != [0.0] * 16 and all(s > 0 for s in config["latents_std"])
    with pytest.raises(ValueError, match="trained with"):
        train_vae(tmp_path / "straight", **{**kwargs, "steps": 5, "lr": 2e-3})


def test_untrained_vae_codes_frames_like_images_and_holds_every_fourth() -> None:
    from motif_video_lab.small_model.vae import decode_unclamped, render_clips

    vae = build_small_vae(0, TOY_VAE).eval()
    video = render_clips(np.random.default_rng(0), 1, 9)  # a moving scene (or a still one: the identity holds)
    with torch.no_grad():
        recon = decode_unclamped(vae, vae.encode(video).latent_dist.mode())
        for t, held in enumerate((0, 4, 4, 4, 4, 8, 8, 8, 8)):
            image = video[:, :, held : held + 1]
            alone = decode_unclamped(vae, vae.encode(image).latent_dist.mode())
            torch.testing.assert_close(recon[:, :, t : t + 1], alone, rtol=0, atol=1e-5)  # conv algorithms differ


def test_unclamped_decode_matches_diffusers_before_the_clamp() -> None:
    from motif_video_lab.small_model.vae import decode_unclamped

    vae = build_small_vae(0, TOY_VAE).eval()
    z = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = decode_unclamped(vae, z)
        assert raw.shape == (1, 3, 9, 32, 32)
        assert torch.equal(raw.clamp(-1, 1), vae.decode(z).sample)


def test_release_without_transformer_then_finished_generates(tmp_path) -> None:
    from motif_video import MotifVideoPipeline
    from motif_video.models.checkpoint_io import CheckpointError
    from motif_video.models.transformer import MotifVideoTransformer

    vae = build_small_vae(0, TOY_VAE)
    vae.register_to_config(latents_mean=[0.1] * 16, latents_std=[0.5] * 16)
    vae.save_pretrained(str(tmp_path / "vae"))
    release = build_release_components(tmp_path / "release", tmp_path / "vae", seed=0)
    index = json.loads((release / "model_index.json").read_text())
    assert index["transformer"] == [None, None] and index["_motif_video_defaults"] == SMALL_DEFAULTS
    with pytest.raises(CheckpointError, match="transformer"):
        MotifVideoPipeline.from_pretrained(str(release))

    text_dim, image_dim = text_dims()
    transformer = MotifVideoTransformer.from_preset("tiny", text_embed_dim=text_dim, image_embed_dim=image_dim)
    transformer.save_pretrained(str(tmp_path / "transformer"))
    finish_release(release, tmp_path / "transformer", guidance=dict(scale=2.0, stop=0.7))
    pipe = MotifVideoPipeline.from_pretrained(str(release))
    assert (pipe.defaults.height, pipe.defaults.num_frames) == (64, 17)
    assert pipe.guidance == GuidanceConfig(scale=2.0, stop=0.7)  # only these differ from the official APG settings
    encoder = build_small_text_encoder(0)
    for p, q in zip(pipe.text_encoder.state_dict().values(), encoder.state_dict().values()):
        assert torch.equal(p, q)  # the frozen encoder survives save / load exactly
    generator = torch.Generator().manual_seed(0)
    video = pipe(PROMPT.format(c="red"), num_inference_steps=2, generator=generator).frames
    assert video.shape == (1, 17, 64, 64, 3) and np.isfinite(video).all()
    first = np.zeros((64, 64, 3), dtype=np.uint8)
    video = pipe(PROMPT.format(c="red"), image=first, num_inference_steps=2, generator=generator).frames
    assert video.shape == (1, 17, 64, 64, 3)

    from diffusers import MotifVideoPipeline as DiffusersPipeline

    reference = DiffusersPipeline.from_pretrained(release)  # the official loader reads the same folder
    assert type(reference.transformer).__name__ == "MotifVideoTransformer3DModel"
    assert reference.vae.config.latents_std == [0.5] * 16
    assert (reference.guider.config.guidance_scale, reference.guider.config.stop) == (2.0, 0.7)
