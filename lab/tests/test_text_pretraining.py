"""The small text encoder's caption pretraining: per-word targets, what it learns, held-out captions."""

from __future__ import annotations

import pytest
import torch

from motif_video_lab.procedural import ObjectSpec, SceneSpec, caption
from motif_video_lab.small_model.components import build_text_encoder
from motif_video_lab.small_model.text_encoder import PRETRAINED_TEXT_ENCODER, build_small_text_encoder
from motif_video_lab.small_model.text_pretraining import (
    HEADS,
    IGNORE,
    TextPretrainConfig,
    object_slots,
    pretrain_text_encoder,
    probe_accuracy,
    token_targets,
)
from motif_video_lab.small_model.vocab import build_small_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_small_tokenizer()


def _scene(relation: str | None) -> SceneSpec:
    red = ObjectSpec("red", "circle", "small", 0.3, 0.5)
    blue = ObjectSpec("blue", "square", "large", 0.7, 0.5)
    objects = (red, blue) if relation else (red,)
    return SceneSpec("gray", objects, "left", "slow", relation)


def test_object_slots_follow_the_relation() -> None:
    assert object_slots(_scene(None)) == ("centre",)
    assert object_slots(_scene("left_of")) == ("left", "right")
    assert object_slots(_scene("right_of")) == ("right", "left")
    assert object_slots(_scene("above")) == ("top", "bottom")
    assert object_slots(_scene("below")) == ("bottom", "top")


def _labels(tokenizer, spec: SceneSpec, text: str) -> tuple[list[str], dict[int, list[str]]]:
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    targets = token_targets(tokens, spec)
    labelled = [i for i, v in enumerate(targets["slot"]) if v != IGNORE]
    return tokens, {i: [HEADS[h][targets[h][i]] for h in HEADS] for i in labelled}


def test_token_targets_label_every_word_of_each_object_and_nothing_else(tokenizer) -> None:
    spec = _scene("right_of")
    tokens, labels = _labels(tokenizer, spec, caption(spec, "long", 0))  # "A small red circle is to the right of..."
    words = {tokens[i] for i in labels}
    assert words == {"small", "red", "circle", "large", "blue", "square"} and len(labels) == 6
    for i, label in labels.items():
        red = tokens[i] in ("small", "red", "circle")
        assert label == (["red", "circle", "small", "right"] if red else ["blue", "square", "large", "left"])
    one = _scene(None)
    text = caption(one, "long", 0)  # "A small red circle moves ... The red circle keeps its shape ..."
    tokens, labels = _labels(tokenizer, one, text)
    assert [tokens[i] for i in labels] == ["small", "red", "circle", "red", "circle"], text
    assert all(label == ["red", "circle", "small", "centre"] for label in labels.values())


def test_pretraining_teaches_binding_that_holds_on_heldout_captions(tokenizer) -> None:
    random = build_small_text_encoder(0)
    encoder = build_small_text_encoder(0, PRETRAINED_TEXT_ENCODER)
    before = {k: v.clone() for k, v in encoder.vision_tower.state_dict().items()}
    pretrain_text_encoder(encoder, tokenizer, 0, TextPretrainConfig(steps=150, batch_size=32))
    assert not any(p.requires_grad for p in encoder.parameters()) and not encoder.training
    assert all(torch.equal(v, encoder.vision_tower.state_dict()[k]) for k, v in before.items())  # tower untouched
    probe = dict(count=192, probe_steps=150)
    trained = probe_accuracy(encoder, tokenizer, **probe)["heldout"]
    untrained = probe_accuracy(random, tokenizer, **probe)["heldout"]
    # the slot (which side an object goes) is what a random encoder cannot tell from a word's state
    assert trained["slot"] >= 0.95 and untrained["slot"] <= 0.75, (trained, untrained)
    assert min(trained[h] for h in ("color", "shape", "size")) >= 0.9, trained  # held-out (colour, shape) pairs too


def test_pretraining_is_a_pure_function_of_the_seed(tokenizer) -> None:
    config = TextPretrainConfig(steps=3, batch_size=8)
    torch.manual_seed(123)
    a = build_text_encoder(tokenizer, 0, 0)  # pretrain_steps 0: the random sliding-window encoder
    first = build_small_text_encoder(1, PRETRAINED_TEXT_ENCODER)
    second = build_small_text_encoder(1, PRETRAINED_TEXT_ENCODER)
    state = torch.get_rng_state()
    pretrain_text_encoder(first, tokenizer, 1, config)
    pretrain_text_encoder(second, tokenizer, 1, config)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    for (name, x), y in zip(first.state_dict().items(), second.state_dict().values()):
        assert torch.equal(x, y), name
    fresh = build_small_text_encoder(1, PRETRAINED_TEXT_ENCODER)
    assert not torch.equal(first.text_model.embed_tokens.weight, fresh.text_model.embed_tokens.weight)
    assert a.config.text_config.layer_types == ["sliding_attention"]
    with pytest.raises(ValueError, match="pretrain_steps"):
        build_text_encoder(tokenizer, 0, -1)


def test_every_encoder_of_a_seed_has_the_random_encoders_vision_tower(tokenizer) -> None:
    """The tower makes the I2V image tokens stored in shards: a pretrained encoder keeps the random one's, so shards
    prepared with either serve a transformer sampled with the other (its text half does change)."""
    random_encoder = build_text_encoder(tokenizer, 0, 0)
    pretrained = build_text_encoder(tokenizer, 0, 2)
    for (name, x), y in zip(random_encoder.vision_tower.state_dict().items(),
                            pretrained.vision_tower.state_dict().values()):  # fmt: skip
        assert torch.equal(x, y), name
    bare = build_small_text_encoder(0, PRETRAINED_TEXT_ENCODER)  # the other config draws another tower
    patch = "embeddings.patch_embedding.weight"
    assert not torch.equal(bare.vision_tower.state_dict()[patch], pretrained.vision_tower.state_dict()[patch])
    frame = torch.rand(1, 3, 64, 64)  # the tower's input side
    assert torch.equal(random_encoder.vision_tower(pixel_values=frame).last_hidden_state,
                       pretrained.vision_tower(pixel_values=frame).last_hidden_state)  # fmt: skip
