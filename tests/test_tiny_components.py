"""The tiny random release (`motif_video.pipeline.tiny`): deterministic by seed, official folder layout that
diffusers and transformers load back unchanged, a working word-level tokenizer, and components whose outputs
actually depend on their inputs (a zero-output transformer or a prompt-blind encoder would make every video
the same)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from motif_video import get_preset
from motif_video.pipeline.tiny import (
    RELEASE_CLASSES,
    SPECIAL_TOKENS,
    TEXT_VOCAB_SIZE,
    build_tiny_components,
    build_tokenizer,
    save_tiny_release,
)

TINY = get_preset("tiny")
STATEFUL = ("transformer", "vae", "text_encoder")


@pytest.fixture(scope="module")
def components() -> dict:
    return build_tiny_components(0)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_release(tmp_path_factory.mktemp("tiny_release"), seed=0)


def _state(components: dict) -> dict[str, torch.Tensor]:
    return {f"{name}.{k}": v for name in STATEFUL for k, v in components[name].state_dict().items()}


def test_deterministic_by_seed_and_leaves_global_rng_alone(components: dict) -> None:
    before = torch.get_rng_state()
    again = _state(build_tiny_components(0))
    other = _state(build_tiny_components(1))
    assert torch.equal(torch.get_rng_state(), before)
    ours = _state(components)
    assert ours.keys() == again.keys() == other.keys()
    assert all(torch.equal(ours[k], again[k]) for k in ours)
    assert not torch.equal(ours["transformer.proj_out.weight"], other["transformer.proj_out.weight"])
    assert not torch.equal(
        ours["text_encoder.text_model.embed_tokens.weight"], other["text_encoder.text_model.embed_tokens.weight"]
    )


def test_component_sizes_match_the_preset(components: dict) -> None:
    text_config = components["text_encoder"].config.text_config
    vision_config = components["text_encoder"].config.vision_config
    assert text_config.hidden_size == TINY.text_embed_dim
    assert vision_config.hidden_size == TINY.image_embed_dim
    assert len(components["tokenizer"]) <= text_config.vocab_size == TEXT_VOCAB_SIZE
    vae = components["vae"].config
    assert (vae.z_dim, vae.scale_factor_spatial, vae.scale_factor_temporal) == (16, 8, 4)
    assert len(set(vae.latents_mean)) > 1 and len(set(vae.latents_std)) > 1
    size = components["feature_extractor"].size
    assert (size["height"], size["width"]) == (vision_config.image_size, vision_config.image_size)


def test_transformer_prediction_is_nonzero_and_uses_text_and_image(components: dict) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(1, TINY.in_channels, 2, 4, 4, generator=g)
    text = torch.randn(2, 6, TINY.text_embed_dim, generator=g)
    image = torch.randn(2, 4, TINY.image_embed_dim, generator=g)
    model = components["transformer"]
    with torch.no_grad():

        def predict(i: int, j: int) -> torch.Tensor:
            t = torch.tensor([500.0])
            return model(x, t, text[i : i + 1], image_embeds=image[j : j + 1], return_dict=False)[0]

        base = predict(0, 0)
        assert base.abs().mean() > 0.05
        assert (base - predict(1, 0)).abs().max() > 1e-3
        assert (base - predict(0, 1)).abs().max() > 1e-3


def test_tokenizer_right_pads_with_bos_and_round_trips(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = build_tokenizer()
    assert [tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    prompts = ["A dog runs on the BEACH, at sunset!", "a zebra"]
    batch = tokenizer(prompts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    ids, mask = batch.input_ids, batch.attention_mask
    assert ids.shape == mask.shape == (2, 12)
    assert tokenizer.convert_ids_to_tokens(ids[0, :11].tolist()) == (
        ["<bos>", "a", "dog", "runs", "on", "the", "beach", ",", "at", "sunset", "!"]
    )
    assert ids[1, :3].tolist() == [2, tokenizer.convert_tokens_to_ids("a"), 3]  # unknown word -> <unk>
    assert mask.sum(dim=1).tolist() == [11, 3]
    assert (ids[mask == 0] == 0).all() and (mask[:, :-1] >= mask[:, 1:]).all()  # right padding with <pad>
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.padding_side == "right" and loaded.model_max_length == 512
    reloaded = loaded(prompts, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    assert torch.equal(reloaded.input_ids, ids) and torch.equal(reloaded.attention_mask, mask)
    custom = build_tokenizer(["hello", "world"], model_max_length=8)
    assert custom("Hello, world").input_ids == [2, 4, 3, 5] and custom.model_max_length == 8


def test_text_encoder_output_depends_on_prompt(components: dict) -> None:
    batch = components["tokenizer"](
        ["a dog runs on the beach", "a red car at night"], padding="max_length", max_length=16, return_tensors="pt"
    )
    with torch.no_grad():
        out = components["text_encoder"](**batch)[0]
    assert out.shape == (2, 16, TINY.text_embed_dim)
    assert torch.isfinite(out).all()
    assert (out[0, :6] - out[1, :6]).abs().mean() > 1e-2


def test_release_layout_loads_with_diffusers_and_transformers(components: dict, release: Path) -> None:
    from diffusers import MotifVideoPipeline
    from transformers import T5Gemma2Encoder

    index = json.loads((release / "model_index.json").read_text())
    assert index["_class_name"] == "MotifVideoPipeline" and "_diffusers_version" in index
    assert {k: v for k, v in index.items() if not k.startswith("_")} == RELEASE_CLASSES
    assert index["transformer"] == ["diffusers", "MotifVideoTransformer3DModel"]
    assert all((release / name).is_dir() for name in RELEASE_CLASSES)
    from motif_video import MotifVideoPipeline as OurPipeline

    assert OurPipeline.from_pretrained(str(release)).defaults.height == 64  # tiny sizes, not 1280x736x121

    pipe = MotifVideoPipeline.from_pretrained(release)
    ours = components["transformer"].state_dict()
    loaded = pipe.transformer.state_dict()
    assert type(pipe.transformer).__name__ == "MotifVideoTransformer3DModel"
    assert loaded.keys() == ours.keys() and all(torch.equal(loaded[k], ours[k]) for k in ours)
    assert pipe.tokenizer.padding_side == "right" and pipe.tokenizer_max_length == 512

    encoder = T5Gemma2Encoder.from_pretrained(release / "text_encoder")
    reference = components["text_encoder"].state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in encoder.state_dict().items())
    assert pipe.vae.config.latents_mean == components["vae"].config.latents_mean


def test_guider_config_round_trips(components: dict, release: Path) -> None:
    from diffusers import AdaptiveProjectedGuidance

    expected = dict(
        guidance_scale=8.0,
        adaptive_projected_guidance_momentum=0.1,
        adaptive_projected_guidance_rescale=12.0,
        adaptive_projected_guidance_norm_dim=[-1, -2, -4],
        use_original_formulation=True,
        eta=1.0,
    )
    for guider in (components["guider"], AdaptiveProjectedGuidance.from_pretrained(release / "guider")):
        assert {k: guider.config[k] for k in expected} == expected
