"""Tuning the text encoder with the transformer (`training.text_tuning`): identity growth, the run (trained text
half, frozen vision tower, EMA hand-over between stages, exact resume), export, prompt dropout and errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from motif_video.pipeline.tiny import save_tiny_release
from motif_video.training.recipe import Recipe, get_recipe_preset, recipe_from_dict
from motif_video.training.run import final_checkpoint, run_recipe, stage_final
from motif_video.training.step import training_step
from motif_video.training.text_tuning import (
    export_text_encoder,
    grow_text_encoder,
    load_text_encoder,
    set_text_trainable,
)
from motif_video.training.train_module import TrainModule
from motif_video.training.trainer import StopTraining, TrainConfig
from training_helpers import kill_after

PROMPTS = ["synthetic clip a", "a red circle moves to the left of a blue square", ""]


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return save_tiny_release(tmp_path_factory.mktemp("tiny") / "release")


def _states(encoder, tokenizer, prompts=PROMPTS) -> torch.Tensor:
    batch = tokenizer(prompts, padding="longest", return_tensors="pt")
    with torch.no_grad():
        return encoder(**batch).last_hidden_state


def test_grown_encoder_starts_as_the_same_function(release):
    encoder, tokenizer = load_text_encoder(release)
    grown = grow_text_encoder(encoder, 2)
    old = encoder.config.text_config.num_hidden_layers
    assert grown.config.text_config.num_hidden_layers == old + 2
    assert grown.config.text_config.layer_types[old:] == ["full_attention", "full_attention"]
    assert torch.equal(_states(encoder, tokenizer), _states(grown, tokenizer))
    again = grow_text_encoder(encoder, 2)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in grown.state_dict().items())  # seeded
    with torch.no_grad():  # the new layers are live: once their gains move, the output moves
        grown.text_model.layers[old].post_self_attn_layernorm.weight.fill_(0.0)
    assert not torch.allclose(_states(encoder, tokenizer), _states(grown, tokenizer))
    with pytest.raises(ValueError, match="text_layers_added must be >= 0"):
        grow_text_encoder(encoder, -1)


def _recipe(release) -> Recipe:
    """cpu-tiny's first two stages: the first trains the text encoder (6 steps: from the transformer's zero-init
    outputs, text gets a gradient from the third step on), the second keeps it frozen."""
    base = get_recipe_preset("cpu-tiny")
    stages = tuple(
        dataclasses.replace(s, steps=steps, repa=None, train_text_encoder=(i == 0))
        for i, (s, steps) in enumerate(zip(base.stages[:2], (6, 3)))
    )
    return dataclasses.replace(
        base, stages=stages, text_encoder=str(release), text_layers_added=1, checkpoint_every=2, log_every=1
    )


def _text_weights(run_dir, recipe: Recipe, index: int, ema: bool) -> dict[str, torch.Tensor]:
    """A stage's final text-encoder tensors (model or EMA) from its checkpoint."""
    import torch.distributed.checkpoint as dcp

    path = stage_final(run_dir, index, recipe.stages[index])
    stored = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
    group = "ema" if ema else "model"
    prefix = f"{group}.text_encoder."
    wanted = {k[len(group) + 1 :]: torch.empty(md.size, dtype=md.properties.dtype)
              for k, md in stored.items() if k.startswith(prefix)}  # fmt: skip
    dcp.load({group: wanted}, checkpoint_id=str(path))
    return {k[len("text_encoder.") :]: v for k, v in wanted.items()}


def test_run_trains_the_text_half_hands_its_ema_on_resumes_and_exports(release, tmp_path):
    recipe = _recipe(release)
    rows = run_recipe(recipe, tmp_path / "full", device="cpu")
    start, _ = load_text_encoder(release, 1)
    initial = start.state_dict()
    trained = _text_weights(tmp_path / "full", recipe, 0, ema=False)
    changed = {k for k, v in trained.items() if not torch.equal(v, initial[k])}
    added = start.config.text_config.num_hidden_layers - 1
    assert any(k.startswith("text_model.layers.0.") for k in changed)  # the text half learned,
    assert any(k.startswith(f"text_model.layers.{added}.") for k in changed)  # the added layer too
    assert not any(k.startswith(("vision_tower.", "multi_modal_projector.")) for k in changed)  # frozen tower
    # stage 2 keeps the encoder frozen at stage 1's EMA, so its final weights are exactly that EMA
    ema_1 = _text_weights(tmp_path / "full", recipe, 0, ema=True)
    final_2 = _text_weights(tmp_path / "full", recipe, 1, ema=False)
    assert ema_1 and all(torch.equal(final_2[k], v) for k, v in ema_1.items())

    with pytest.raises(StopTraining):  # killed in stage 1 after its step-4 save
        run_recipe(recipe, tmp_path / "killed", device="cpu", on_step_end=kill_after(5))
    resumed = run_recipe(recipe, tmp_path / "killed", device="cpu")
    assert [(r["step"], r["loss"]) for r in resumed] == [(r["step"], r["loss"]) for r in rows[4:]]

    encoder, tokenizer = load_text_encoder(release, 1)
    assert export_text_encoder(encoder, final_checkpoint(recipe, tmp_path / "full"), tmp_path / "te") is False
    from transformers import T5Gemma2Encoder

    loaded = T5Gemma2Encoder.from_pretrained(str(tmp_path / "te"))
    assert loaded.config.text_config.num_hidden_layers == start.config.text_config.num_hidden_layers
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in final_2.items())
    frozen = tuple(dataclasses.replace(s, train_text_encoder=False) for s in recipe.stages[:1])
    plain = dataclasses.replace(recipe, text_encoder=None, text_layers_added=0, stages=frozen)
    run_recipe(plain, tmp_path / "plain", device="cpu")
    with pytest.raises(ValueError, match="holds no text-encoder weights"):
        export_text_encoder(encoder, final_checkpoint(plain, tmp_path / "plain"), tmp_path / "te2")


@pytest.mark.parametrize("dropout, expected", [(0.0, ["cap 0", "cap 1"]), (1.0, ["", ""])])
def test_captions_are_tokenized_in_the_step_and_dropped_to_empty(release, dropout, expected):
    from motif_video.models.config import get_preset
    from motif_video.models.transformer import MotifVideoTransformer
    from motif_video.training.objective import ObjectiveConfig

    encoder, tokenizer = load_text_encoder(release)
    model = TrainModule(MotifVideoTransformer(get_preset("tiny")), None, encoder, tokenizer)
    seen = []
    tokenize = model.tokenize
    model.tokenize = lambda prompts: (seen.extend(prompts), tokenize(prompts))[1]
    config = TrainConfig(steps=1, objective=ObjectiveConfig(prompt_dropout=dropout))
    batch = {"latents": torch.randn(2, 16, 1, 4, 4), "captions": ["cap 0", "cap 1"]}
    loss, _, _ = training_step(model, batch, config, torch.Generator().manual_seed(0), None, torch.device("cpu"))
    assert seen == expected and torch.isfinite(loss)
    with pytest.raises(ValueError, match="batches need 'captions'"):
        training_step(model, {"latents": batch["latents"]}, config, torch.Generator(), None, torch.device("cpu"))


@pytest.mark.parametrize(
    "extra, match",
    [
        ({"stages": [{"name": "a", "steps": 1, "sources": {"x": {"path": "p"}}, "train_text_encoder": True}]},
         r"train the text encoder: set text_encoder"),
        ({"text_layers_added": 2}, "set text_encoder too"),
        ({"text_encoder": "rel", "text_layers_added": -1}, "text_layers_added must be >= 0"),
    ],
)  # fmt: skip
def test_recipe_errors_for_text_tuning(extra, match):
    data = {"model": {"preset": "tiny"}, "stages": [{"name": "a", "steps": 1, "sources": {"x": {"path": "p"}}}]}
    with pytest.raises(ValueError, match=match):
        recipe_from_dict({**data, **extra})


def test_text_lr_gives_the_text_encoder_its_own_group(release):
    from motif_video.models.config import get_preset
    from motif_video.models.transformer import MotifVideoTransformer
    from motif_video.training.trainer import _param_groups

    encoder, tokenizer = load_text_encoder(release)
    set_text_trainable(encoder, True)
    model = TrainModule(MotifVideoTransformer(get_preset("tiny")), None, encoder, tokenizer)
    assert len(_param_groups(model, TrainConfig(steps=1, lr=1e-4))) == 1
    rest, text = _param_groups(model, TrainConfig(steps=1, lr=1e-4, text_lr=1e-2))
    assert text["lr"] == 1e-2 and "lr" not in rest
    assert {id(p) for p in text["params"]} == {id(p) for p in encoder.text_model.parameters()}
    encoder.requires_grad_(False)
    with pytest.raises(ValueError, match="trains no text encoder"):
        _param_groups(model, TrainConfig(steps=1, text_lr=1e-2))
    with pytest.raises(ValueError, match="text_lr is the tuned text encoder's lr"):
        stage = {"name": "a", "steps": 1, "sources": {"x": {"path": "p"}}, "text_lr": 1e-3}
        recipe_from_dict({"model": {"preset": "tiny"}, "text_encoder": "rel", "stages": [stage]})


def test_tokenize_prompts_truncates_with_a_warning_only_when_needed(release, caplog):
    from motif_video.core.encoders import tokenize_prompts

    _, tokenizer = load_text_encoder(release)
    full = len(tokenizer(PROMPTS[1])["input_ids"])
    with caplog.at_level("WARNING", logger="motif_video.core.encoders"):
        ids, mask = tokenize_prompts(tokenizer, PROMPTS[:2], full)
        assert ids.shape == (2, full) and mask.dtype == torch.bool and not caplog.records
        ids, _ = tokenize_prompts(tokenizer, PROMPTS[:2], full - 2)
    assert ids.shape == (2, full - 2)
    assert [r.getMessage() for r in caplog.records] == [
        f"prompt truncated to {full - 2} of its {full} tokens: {PROMPTS[1][:60]}..."
    ]
