"""Curriculum recipes: parsing, Shared Cross-Attention insertion, joint T2V/I2V image tokens, REPA in the loop,
interleave, and whole-run resume across stage boundaries (1 process and 2 gloo ranks)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model_helpers import free_port
from motif_video import MotifVideoTransformer
from motif_video.training.insert_cross_attention import insert_shared_cross_attention
from motif_video.training.interleave import InterleavedBatches
from motif_video.training.objective import ObjectiveConfig
from motif_video.training.recipe import (
    RECIPE_PRESETS,
    Recipe,
    get_recipe_preset,
    load_recipe,
    recipe_from_dict,
)
from motif_video.training.repa import REPAConfig, REPAProjector
from motif_video.training.run import run_recipe, stage_final
from motif_video.training.step import training_step
from motif_video.training.train_module import TrainModule
from motif_video.training.trainer import RouteConfig, StopTraining, TrainConfig
from training_helpers import kill_after


def _inputs(model: MotifVideoTransformer, batch: int = 2, seed: int = 0, image: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    c = model.config
    kwargs = dict(
        hidden_states=torch.randn(batch, c.in_channels, 3, 4, 4, generator=g),
        timestep=torch.tensor([300.0, 800.0][:batch]),
        encoder_hidden_states=torch.randn(batch, 5, c.text_embed_dim, generator=g),
        encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]][:batch], dtype=torch.bool),
    )
    if image:
        kwargs["image_embeds"] = torch.randn(batch, 3, c.image_embed_dim, generator=g)
    return kwargs


def _noisy(model: torch.nn.Module, seed: int = 1, scale: float = 0.05) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


# ----------------------------------------------------------------------------------------------- recipe files


def test_presets_round_trip_through_json():
    for name in RECIPE_PRESETS:
        recipe = get_recipe_preset(name)
        again = recipe_from_dict(json.loads(json.dumps(recipe.to_dict())))
        assert again == recipe, name
    big = get_recipe_preset("motif-video-2b")
    assert len(big.stages) == 10 and sum(s.insert_cross_attention for s in big.stages) == 1
    assert [s.repa is not None for s in big.stages[:4]] == [True, True, True, False]  # REPA off from stage 4
    assert big.stages[0].repa.teacher == "dinov2" and big.stages[1].repa.teacher == "vjepa2"


def test_toml_recipe_with_stage_defaults_and_relative_paths(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "r.toml").write_text(
        """
seed = 3
[model]
preset = "tiny"
[stage_defaults]
lr = 5e-4
[stage_defaults.objective]
shift = 2.0
[[stages]]
name = "a"
steps = 5
[stages.sources.image]
path = "images"
batch_size = {"1x32x32" = 4}
[[stages]]
name = "b"
steps = 6
lr = 1e-4
interleave = ["image", "video", "video"]
[stages.objective]
i2v_ratio = 0.3
[stages.route]
start = 1
end = 4
[stages.sources.image]
path = "images"
[stages.sources.video]
path = "/abs/videos"
"""
    )
    recipe = load_recipe(tmp_path / "r.toml")
    a, b = recipe.stages
    assert recipe.seed == 3 and a.lr == 5e-4 and b.lr == 1e-4
    assert a.objective.shift == 2.0 and b.objective == ObjectiveConfig(shift=2.0, i2v_ratio=0.3)  # merged one level
    assert a.sources["image"].path == str((tmp_path / "images").resolve()) and a.sources["image"].batch_size == {
        "1x32x32": 4
    }
    assert b.sources["video"].path == "/abs/videos" and b.interleave == ("image", "video", "video")
    assert b.route == RouteConfig(1, 4, 0.5) and a.interleave == ("image",)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"model": {"preset": "tiny"}, "stages": [], "sed": 1}, r"unknown key\(s\) \['sed'\]"),
        ({"model": {"preset": "tiny"}, "stages": []}, "at least one stage"),
        ({"model": {}, "stages": []}, "exactly one of preset, config, pretrained"),
        ({"model": {"preset": "tiny"}, "stages": [{"name": "a", "steps": 1, "sources": {}}]}, "no data sources"),
        (
            {"model": {"preset": "tiny"}, "stages": [{"name": "a", "steps": 1, "sources": {"x": {"path": "p"}},
                                                      "repa": {"teachr": "dinov2"}}]},
            r"stages\[0\].repa",
        ),
    ],
)  # fmt: skip
def test_recipe_errors_name_the_problem(data, match):
    with pytest.raises(ValueError, match=match):
        recipe_from_dict(data)


def test_recipe_file_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("seed = = 1")
    with pytest.raises(ValueError, match="not valid toml"):
        load_recipe(tmp_path / "bad.toml")


# ----------------------------------------------------------------------------- Shared Cross-Attention insertion


@pytest.mark.parametrize("preset", ["tiny", "tiny-shared"])
def test_inserted_cross_attention_starts_as_identity_and_round_trips(tmp_path, preset):
    model = MotifVideoTransformer.from_preset(preset, enable_text_cross_attention_single=False)
    _noisy(model).eval()
    inputs = _inputs(model)
    before = model(**inputs).sample
    n_before = model.num_parameters()
    new = insert_shared_cross_attention(model, generator=torch.Generator().manual_seed(0))
    assert new and model.config.enable_text_cross_attention_single and model.num_parameters() > n_before
    encoder_blocks = model.config.num_encoder_single_layers
    assert all(f"single_transformer_blocks.{i}." in " ".join(new) for i in range(encoder_blocks))
    assert not any(f"single_transformer_blocks.{encoder_blocks}." in n for n in new)  # not in the DDT decoder
    assert torch.equal(model(**inputs).sample, before)  # zero-initialised output: exactly the old function
    _noisy(model, seed=2)  # as after training: the new path now matters
    after = model(**inputs).sample
    model.save_pretrained(str(tmp_path / "t"))
    loaded = MotifVideoTransformer.from_pretrained(str(tmp_path / "t"), fuse_qkv=False).eval()
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(**inputs).sample, after, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="already has Shared Cross-Attention"):
        insert_shared_cross_attention(model)


# ---------------------------------------------------------------------------- joint T2V/I2V: image-token mask


def test_image_token_mask_equals_no_image_tokens():
    torch.manual_seed(0)  # the preset's init draws from the global generator: seeded, the test is order-independent
    model = _noisy(MotifVideoTransformer.from_preset("tiny"), scale=0.3).eval()
    inputs = _inputs(model, image=True)
    with_tokens = model(**inputs).sample
    masked = model(**inputs, image_embeds_mask=torch.tensor([[True] * 3, [False] * 3])).sample
    single = {k: v[1:] for k, v in inputs.items() if k != "image_embeds"}
    torch.testing.assert_close(masked[1:], model(**single).sample, rtol=0, atol=1e-5)  # sample 1: as T2V
    torch.testing.assert_close(masked[:1], with_tokens[:1], rtol=0, atol=1e-5)  # sample 0 keeps its tokens
    assert (masked[1:] - with_tokens[1:]).abs().max() > 1e-3  # the tokens did matter
    with pytest.raises(ValueError, match="image_embeds_mask must be"):
        model(**inputs, image_embeds_mask=torch.ones(2, 4, dtype=torch.bool))


# ------------------------------------------------------------------------------------------ REPA in the loop


def _batch(seed: int = 0, frames: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        latents=torch.randn(2, 16, frames, 4, 4, generator=g),
        first_frame=torch.randn(2, 16, 1, 4, 4, generator=g),
        text=torch.randn(2, 5, 32, generator=g),
        text_mask=torch.ones(2, 5, dtype=torch.bool),
        teacher=torch.randn(2, frames * 4, 6, generator=g),
    )


@pytest.mark.parametrize("route", [None, RouteConfig(1, 5, 0.5)])
def test_repa_loss_trains_the_projector_and_the_blocks_before_the_tap(route):
    transformer = _noisy(MotifVideoTransformer.from_preset("tiny"))
    model = TrainModule(transformer, REPAProjector(transformer.config.hidden_size, 6, width=16))
    repa = REPAConfig(enabled=True, feature_source="shards", tap_block=2, weight=0.5)
    config = TrainConfig(steps=1, route=route, repa=repa, objective=ObjectiveConfig(prompt_dropout=0.0))
    null = (torch.zeros(1, 32), torch.ones(1, dtype=torch.bool))
    loss, parts, extras = training_step(model, _batch(), config, torch.Generator().manual_seed(0), null, "cpu")
    torch.testing.assert_close(loss.detach(), parts["flow_loss"] + 0.5 * parts["repa_loss"])
    assert 0 < float(parts["repa_loss"]) < 2
    # the REPA term alone reaches the projector and the blocks up to the tap, not the blocks after it
    off = TrainConfig(steps=1, route=route, objective=config.objective)
    flow_only, _, _ = training_step(model, _batch(), off, torch.Generator().manual_seed(0), null, "cpu")
    repa_term = loss - flow_only
    torch.testing.assert_close(repa_term.detach(), 0.5 * parts["repa_loss"], rtol=1e-5, atol=1e-6)
    repa_term.backward()
    assert model.repa_projector.net[0].weight.grad.abs().sum() > 0
    assert transformer.transformer_blocks[0].attn.to_q.weight.grad.abs().sum() > 0
    late = transformer.single_transformer_blocks[-1].attn.to_q.weight.grad
    assert late is None or late.abs().sum() == 0
    assert repa.active(0) and not dataclasses.replace(repa, stop_step=3).active(3)


def test_repa_needs_a_projector_and_targets():
    model = _noisy(MotifVideoTransformer.from_preset("tiny"))
    repa = REPAConfig(enabled=True, feature_source="shards", tap_block=2)
    config = TrainConfig(steps=1, repa=repa)
    null = (torch.zeros(1, 32), torch.ones(1, dtype=torch.bool))
    with pytest.raises(ValueError, match="no repa_projector"):
        training_step(TrainModule(model), _batch(), config, torch.Generator(), null, "cpu")
    batch = _batch()
    del batch["teacher"]
    wrapped = TrainModule(model, REPAProjector(model.config.hidden_size, 6, width=8))
    with pytest.raises(ValueError, match="prepare with --teacher"):
        training_step(wrapped, batch, config, torch.Generator(), null, "cpu")


def test_online_targets_decode_latents_and_land_on_the_token_grid(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    from motif_video.core.teachers import load_teacher
    from motif_video.pipeline.tiny import build_vae
    from motif_video.training.repa_online import OnlineTargets

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                             patch_size=8, image_size=32)).save_pretrained(tmp_path / "dino")  # fmt: skip
    teacher = load_teacher("dinov2", str(tmp_path / "dino"), torch.float32, "cpu", input_size=32)
    targets = OnlineTargets(build_vae(), teacher)
    latents = torch.randn(2, 16, 3, 4, 6)  # a 9-frame 32 x 48 clip
    out = targets(latents)
    assert out.shape == (2, 3 * 2 * 3, 8) and torch.isfinite(out).all()
    assert not torch.allclose(out[0], out[1])


# ------------------------------------------------------------------------------------------------ interleave


class _Counter:
    def __init__(self, name: str) -> None:
        self.name, self.i = name, 0

    def __next__(self):
        self.i += 1
        return f"{self.name}{self.i}"

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, state):
        self.i = state["i"]


def test_interleave_pattern_and_resume():
    make = lambda: InterleavedBatches({"image": _Counter("i"), "video": _Counter("v")}, ["image", "video", "video"])  # noqa: E731
    a = make()
    assert [next(a) for _ in range(7)] == ["i1", "v1", "v2", "i2", "v3", "v4", "i3"]
    b = make()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert [next(b) for _ in range(3)] == [next(a) for _ in range(3)]
    with pytest.raises(ValueError, match="never appear"):
        InterleavedBatches({"image": _Counter("i"), "video": _Counter("v")}, ["image"])
    with pytest.raises(ValueError, match="names"):
        InterleavedBatches({"image": _Counter("i")}, ["image", "video"])


# ------------------------------------------------------------------------------------ whole runs and resume


def _short_recipe(first_stage: int = 0) -> Recipe:
    recipe = get_recipe_preset("cpu-tiny")
    stages = tuple(dataclasses.replace(s, steps=3) for s in recipe.stages[first_stage:])
    return dataclasses.replace(recipe, stages=stages, checkpoint_every=2, log_every=1)


def _final_weights(run_dir, recipe: Recipe) -> dict[str, torch.Tensor]:
    from motif_video.training.checkpoint import load_weights
    from motif_video.training.run import _stage_model

    last = len(recipe.stages) - 1
    model, _ = _stage_model(recipe, run_dir, last, torch.device("cpu"))
    ema, _ = load_weights(stage_final(run_dir, last, recipe.stages[last]), model, ema=True)
    return {**{f"model.{k}": v for k, v in model.state_dict().items()}, **{f"ema.{k}": v for k, v in ema.items()}}


def test_curriculum_run_killed_anywhere_resumes_bit_identical(tmp_path):
    recipe = _short_recipe()
    rows = run_recipe(recipe, tmp_path / "full")
    assert [r["step"] for r in rows] == list(range(1, 10))
    assert [r["stage"] for r in rows] == ["images"] * 3 + ["joint"] * 3 + ["cross-attention"] * 3
    assert all("repa_loss" in r for r in rows[:6]) and not any("repa_loss" in r for r in rows[6:])
    assert all(r["tread_keep"] == 0.5 for r in rows[3:])
    expected = _final_weights(tmp_path / "full", recipe)
    assert any("cross_attn" in k for k in expected)  # inserted in stage 3

    for kill_at in (5, 7):  # stage 2 after its step-2 checkpoint; stage 3 before any checkpoint of its own
        run = tmp_path / f"killed-{kill_at}"
        rows = []
        with pytest.raises(StopTraining):
            run_recipe(recipe, run, on_log=rows.append, on_step_end=kill_after(kill_at))
        assert len(rows) == kill_at
        resumed = run_recipe(recipe, run)
        assert resumed[-1]["step"] == 9
        got = _final_weights(run, recipe)
        for k, v in expected.items():
            assert torch.equal(got[k], v), (kill_at, k)

    changed = dataclasses.replace(recipe, seed=1)
    with pytest.raises(ValueError, match="different recipe"):
        run_recipe(changed, tmp_path / "full")

    # a finished run may be extended: appended stages run, from the last finished one, as if planned all along
    prefix = dataclasses.replace(recipe, stages=recipe.stages[:2])
    assert run_recipe(prefix, tmp_path / "extended")[-1]["step"] == 6
    assert [r["step"] for r in run_recipe(recipe, tmp_path / "extended")] == [7, 8, 9]
    got = _final_weights(tmp_path / "extended", recipe)
    for k, v in expected.items():
        assert torch.equal(got[k], v), ("extended", k)
    # ... or its last stage lengthened (constant lr after warmup: the same as planning the longer stage)
    short = dataclasses.replace(recipe, stages=(*recipe.stages[:2], dataclasses.replace(recipe.stages[2], steps=1)))
    assert run_recipe(short, tmp_path / "lengthened")[-1]["step"] == 7
    assert [r["step"] for r in run_recipe(recipe, tmp_path / "lengthened")] == [8, 9]
    got = _final_weights(tmp_path / "lengthened", recipe)
    for k, v in expected.items():
        assert torch.equal(got[k], v), ("lengthened", k)
    with pytest.raises(ValueError, match="different recipe"):
        run_recipe(short, tmp_path / "lengthened")  # shortening a stage is an edit
    # a last stage that decays its lr took decayed steps: lengthening it is an edit, not a continuation
    last = dataclasses.replace(short.stages[2], decay_steps=1)
    decayed = dataclasses.replace(short, stages=(*short.stages[:2], last))
    run_recipe(decayed, tmp_path / "decayed")
    longer = dataclasses.replace(decayed, stages=(*decayed.stages[:2], dataclasses.replace(last, steps=2)))
    with pytest.raises(ValueError, match="different recipe"):
        run_recipe(longer, tmp_path / "decayed")
    edited = dataclasses.replace(recipe, stages=(dataclasses.replace(recipe.stages[0], lr=0.5), *recipe.stages[1:]))
    with pytest.raises(ValueError, match="different recipe"):
        run_recipe(edited, tmp_path / "extended")  # appending is allowed, editing a stage is not

    # a run saved before a config field existed (here: the objective's noise_correlation) is the same recipe
    saved = tmp_path / "full" / "recipe.json"
    data = json.loads(saved.read_text())
    for stage in data["stages"]:
        stage["objective"].pop("noise_correlation")
    saved.write_text(json.dumps(data))
    assert run_recipe(recipe, tmp_path / "full") == []  # finished: nothing to run, and no "different recipe"


def _recipe_worker(rank: int, world_size: int, port: int, run: str, kill_at: int | None) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        on_step_end = None if kill_at is None else kill_after(kill_at)
        with contextlib.suppress(StopTraining):
            run_recipe(_short_recipe(first_stage=1), run, device="cpu", on_step_end=on_step_end)
    finally:
        dist.destroy_process_group()


def test_two_rank_fsdp_run_killed_and_resumed_matches_uninterrupted(tmp_path):
    """FSDP2 on 2 gloo ranks, killed one step into the stage that inserts Shared Cross-Attention, resumed."""
    recipe = _short_recipe(first_stage=1)
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    mp.spawn(_recipe_worker, args=(2, free_port(), full, None), nprocs=2, join=True)
    mp.spawn(_recipe_worker, args=(2, free_port(), killed, 4), nprocs=2, join=True)
    assert stage_final(tmp_path / "killed", 0, recipe.stages[0]) is not None  # really stopped in stage 2
    assert stage_final(tmp_path / "killed", 1, recipe.stages[1]) is None
    mp.spawn(_recipe_worker, args=(2, free_port(), killed, None), nprocs=2, join=True)
    expected, got = _final_weights(tmp_path / "full", recipe), _final_weights(tmp_path / "killed", recipe)
    for k, v in expected.items():
        assert torch.equal(got[k], v), k
