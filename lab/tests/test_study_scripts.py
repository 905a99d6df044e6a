"""The small-model study scripts: ablate_small_model.py (T2I ablations through the real trainer),
text_sensitivity.py (which caption words a model reads), attribute_binding.py (where they land), completion_by_noise.py,
diagnose_small_model.py and shape_by_frame.py."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ablate_small_model.py"


@pytest.fixture(scope="module")
def script():
    return runpy.run_path(str(SCRIPT))


def test_variants_are_parsed_with_clear_errors(script):
    parse = script["parse_variant"]
    assert parse("base") == ("base", {})
    assert parse("w:attention_head_dim=64;rope_axes_dim=(16,24,24);lr=2e-3") == (
        "w",
        {"attention_head_dim": 64, "rope_axes_dim": (16, 24, 24), "lr": 2e-3},
    )
    with pytest.raises(ValueError, match="not key=value"):
        parse("x:lr")
    with pytest.raises(ValueError, match="not a Python literal"):
        parse("x:patch_size=one")
    values = {"patch_size": 1, "lr": 3e-3, "steps": 7, "temporal_difference_weight": 2.0}
    recipe = script["variant_recipe"](Path("work"), values, 10, 4, 1e-3)
    assert recipe.model.overrides == {"patch_size": 1}
    stage = recipe.stages[0]
    assert (stage.steps, stage.lr, stage.route, stage.objective.temporal_difference_weight) == (7, 3e-3, None, 2.0)
    assert stage.sources["image"].path == str(Path("work") / "shards" / "images")
    no_dropout = script["variant_recipe"](Path("work"), {"prompt_dropout": 0.0}, 10, 4, 1e-3).stages[0]
    assert no_dropout.objective.prompt_dropout == 0.0  # an objective key replaces the images stage's default
    # a fine-tune: the release's weights, the video shards, the reproduction's last-stage objective and lr
    tune = script["variant_recipe"](Path("work"), {"spatial_difference_weight": 1.0}, 10, None, None, True)
    stage = tune.stages[0]
    assert tune.model.pretrained == str(Path("work") / "release") and set(stage.sources) == {"video"}
    objective = stage.objective  # the default plan's last stage: polish (sharp first-frame condition)
    assert (stage.lr, objective.noise_correlation, objective.spatial_difference_weight, objective.blur_max) == (
        2.5e-4,
        0.9,
        1.0,
        0.0,
    )
    assert stage.sources["video"].batch_size == 16


def _tiny_run(work: Path, out: Path, *flags: str) -> list[str]:
    """argv of a 2-step ablation on `work` scored on 1 prompt per split, without guidance."""
    return ["--work", str(work), "--out", str(out), "--steps", "2", "--batch", "2", "--num-prompts", "1",
            "--device", "cpu", "--guidance-scale", "1", *flags]  # fmt: skip


def test_ablation_trains_scores_and_resumes(script, toy_reproduction, tmp_path, capsys):
    work = toy_reproduction[0]  # its image shards and release
    variants = ["--variant", "base", "--variant", "p1:patch_size=1"]
    argv = _tiny_run(work, tmp_path / "ab", *variants, "--guidance-stop", "0.5")
    assert script["main"](argv) == 0
    table = capsys.readouterr().out
    assert "| base | none | 2 |" in table and "| p1 | patch_size=1 | 2 |" in table
    assert "lr 0.001, seed 0; 1 T2I prompts per split, guidance scale 1 on the first 50% of steps." in table
    config = json.loads((tmp_path / "ab" / "p1" / "release" / "transformer" / "config.json").read_text())
    assert config["patch_size"] == 1
    results = json.loads((tmp_path / "ab" / "p1" / "eval" / "results.json").read_text())
    assert (results["settings"]["guidance_scale"], results["settings"]["guidance_stop"]) == (1.0, 0.5)
    assert results["settings"]["mode"] == "t2i"
    assert (tmp_path / "ab" / "ablation.md").read_text() in table  # the table, also as a file
    metrics = (tmp_path / "ab" / "base" / "run" / "metrics.jsonl").read_text()
    assert script["main"](argv) == 0  # finished variants are re-scored, not retrained
    assert (tmp_path / "ab" / "base" / "run" / "metrics.jsonl").read_text() == metrics

    with pytest.raises(SystemExit):
        script["main"](["--work", str(tmp_path / "nowhere")])
    assert "not a reproduction folder" in capsys.readouterr().err
    bad_variants = (
        ([], "x:patchsize=1", "unknown key(s) ['patchsize']"),
        ([], "x:attention_head_dim=64", "rope_axes_dim"),
        ([], "x:noise_correlation=2.0", "noise_correlation must lie in [0, 1]"),
        (["--from-release"], "x:patch_size=1", "['patch_size'] change the architecture"),
        ([], "x:text_pretrain_steps=0", "text_pretrain_steps is a number of steps >= 1, got 0"),
    )
    for flags, bad, message in bad_variants:
        with pytest.raises(SystemExit):
            script["main"](["--work", str(work), *flags, "--variant", bad])
        assert message in capsys.readouterr().err  # before anything trains


def test_ablation_refuses_shards_of_another_text_encoder(script, toy_reproduction, tmp_path, capsys):
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    work, other = toy_reproduction[0], tmp_path / "other"
    (other / "shards").mkdir(parents=True)
    (other / "release").symlink_to(work / "release")
    shutil.copytree(work / "shards" / "videos", other / "shards" / "videos")
    script["check_shard_text"](other / "shards" / "videos", other / "release")  # the release's own states: fine
    null = other / "shards" / "videos" / "null_text.safetensors"
    save_file({"text": load_file(str(null))["text"] + 0.1 * torch.ones(1)}, str(null))  # another encoder's
    with pytest.raises(SystemExit):
        script["main"](["--work", str(other), "--out", str(tmp_path / "o"), "--from-release", "--variant", "x:lr=1e-4"])
    assert "holds text states of another text encoder" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything trains


def test_fine_tune_ablation_continues_the_release_on_videos(script, toy_reproduction, tmp_path, capsys):
    work = toy_reproduction[0]
    argv = _tiny_run(work, tmp_path / "ft", "--from-release", "--variant", "diff:temporal_difference_weight=2.0")
    assert script["main"](argv) == 0
    table = capsys.readouterr().out
    assert "| diff | temporal_difference_weight=2.0 | 2 |" in table and "held-out T2V" in table
    assert "fine-tuned from the release on videos, 2 steps, batch 2, its last stage's lr" in table
    rows = [json.loads(line) for line in (tmp_path / "ft" / "diff" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("difference_loss" in row for row in rows)
    results = json.loads((tmp_path / "ft" / "diff" / "eval" / "results.json").read_text())
    assert results["settings"]["mode"] == "t2v" and results["settings"]["noise_correlation"] == 0.9


def test_text_sensitivity_swaps_each_attribute_word(toy_reproduction, capsys):
    probe = runpy.run_path(str(SCRIPT.with_name("text_sensitivity.py")))
    ship = toy_reproduction[1]
    assert probe["main"](["--model", str(ship), "--t", "0.9", "0.3", "--samples", "2"]) == 0
    printed = capsys.readouterr().out
    for row in ("prompt (vs none)", "colour (red -> blue)", "direction (left -> right)", "speed (slowly -> quickly)"):
        assert f"| {row} |" in printed
    from motif_video import MotifVideoPipeline

    pipe = MotifVideoPipeline.from_pretrained(str(ship))
    table = probe["sensitivity"](pipe, probe["IMAGE"], 1, (0.5,), samples=2)
    assert set(table) == {"prompt", "colour", "shape", "size", "background"}  # an image caption states no motion
    assert table["prompt"][0.5] > 0 and all(v[0.5] >= 0 for v in table.values())
    same = probe["sensitivity"](pipe, "A large red square.", 1, (0.5,), samples=2)
    assert set(same) == {"prompt", "colour", "shape", "size"}


def test_completion_by_noise_scores_each_start_level(toy_reproduction, capsys):
    script = runpy.run_path(str(SCRIPT.with_name("completion_by_noise.py")))
    work = toy_reproduction[0]
    argv = ["--model", str(work / "release"), "--shards", str(work / "shards" / "videos"), "--clips", "2",
            "--t0", "0.2", "1.0"]  # fmt: skip
    assert script["main"](argv) == 0
    printed = capsys.readouterr().out
    assert printed.index("| 1 | ") < printed.index("| 0.2 | ")  # noisiest first
    assert "| t0 | attributes correct | background | count |" in printed and "direction" in printed
    with pytest.raises(SystemExit):
        script["main"](["--model", str(work / "release"), "--shards", str(work / "shards" / "videos"), "--t0", "0"])
    assert "--t0 values must lie in (0, 1]" in capsys.readouterr().err


def test_diagnose_prints_the_loss_table_with_the_i2v_columns(toy_reproduction, capsys):
    script = runpy.run_path(str(SCRIPT.with_name("diagnose_small_model.py")))
    work = toy_reproduction[0]
    argv = ["--model", str(work / "release"), "--shards", str(work / "shards" / "videos"), "--clips", "2"]
    assert script["main"](argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "| later T2V | later I2V | later I2V other |" in lines[1]
    rows = [[float(x) for x in line.strip("| ").split(" | ")] for line in lines[3:]]
    assert [row[0] for row in rows] == [0.1, 0.3, 0.5, 0.7, 0.9, 0.97] and all(len(row) == 8 for row in rows)
    assert all(v >= 0 for row in rows for v in row[1:])
    # the toy barely moves its zero-initialised output; on a random model the I2V condition must change v
    from motif_video import MotifVideoTransformer, get_preset

    config = get_preset("tiny")
    torch.manual_seed(0)
    model = MotifVideoTransformer(config).eval()
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.15)  # every parameter random: the zero-initialised output would hide I2V
    g = torch.Generator().manual_seed(1)
    xt = torch.randn(1, config.out_channels, 5, 6, 10, generator=g)
    text = torch.randn(1, 7, config.text_embed_dim, generator=g)
    t2v = script["velocity"](model, xt, 0.9, text)
    first = (xt[:, :, :1] * 0.5, torch.randn(1, 3, config.image_embed_dim, generator=g))
    i2v = script["velocity"](model, xt, 0.9, text, first=first)
    assert t2v.shape == i2v.shape == xt.shape and (i2v - t2v).abs().max() > 1e-3
    assert not torch.equal(i2v, script["velocity"](model, xt, 0.9, text, first=(first[0], None)))  # SigLIP used


def test_attribute_binding_swaps_one_objects_word_and_measures_where_it_lands(toy_reproduction, capsys):
    probe = runpy.run_path(str(SCRIPT.with_name("attribute_binding.py")))
    from motif_video_lab.procedural.captions import caption

    specs = probe["two_object_scenes"](3, 0)
    assert all(len(s.objects) == 2 and s.direction == "still" for s in specs)
    spec = specs[0]
    for attribute in ("color", "shape", "size"):
        for i in range(2):
            new = probe["changed"](spec, i, attribute)
            assert getattr(new.objects[i], attribute) != getattr(spec.objects[i], attribute)
            assert new.objects[1 - i] == spec.objects[1 - i] and caption(new) != caption(spec)
    if spec.objects[0].color != spec.objects[1].color:  # a value neither object has
        assert probe["changed"](spec, 0, "color").objects[0].color != spec.objects[1].color
    boxes = probe["object_boxes"](spec, 64, 64, (8, 8))
    assert [b.shape for b in boxes] == [(8, 8), (8, 8)] and all(b.any() for b in boxes)
    assert not (boxes[0] & boxes[1]).all()  # two objects, two places
    assert probe["main"](["--model", str(toy_reproduction[1]), "--scenes", "2", "--t", "0.9"]) == 0
    printed = capsys.readouterr().out
    assert "| swapped | t = 0.9: own / other (ratio) |" in printed
    assert all(f"| {a} | " in printed for a in ("color", "shape", "size"))
    with pytest.raises(SystemExit):
        probe["main"](["--model", str(toy_reproduction[1]), "--t", "1.5"])
    assert "every --t in (0, 1]" in capsys.readouterr().err


def test_probe_text_encoder_prints_each_head_per_split(toy_reproduction, tmp_path, capsys):
    probe = runpy.run_path(str(SCRIPT.with_name("probe_text_encoder.py")))
    assert probe["main"](["--model", str(toy_reproduction[1]), "--captions", "24"]) == 0
    printed = capsys.readouterr().out
    assert "| model | captions | color | shape | size | slot |" in printed
    rows = [line for line in printed.splitlines() if line.startswith(f"| {toy_reproduction[1]} |")]
    assert [row.split(" | ")[1] for row in rows] == ["held-out", "train"]
    assert all(row.count("%") == 4 for row in rows)
    with pytest.raises(SystemExit):
        probe["main"](["--model", str(tmp_path)])
    assert "is missing" in capsys.readouterr().err


def test_ablation_with_a_caption_pretrained_text_encoder(script, toy_reproduction, tmp_path, capsys):
    work = toy_reproduction[0]
    argv = _tiny_run(work, tmp_path / "tp", "--variant", "tp:text_pretrain_steps=2")
    assert script["main"](argv) == 0
    assert "| tp | text_pretrain_steps=2 | 2 |" in capsys.readouterr().out
    recipe = json.loads((tmp_path / "tp" / "tp" / "run" / "recipe.json").read_text())
    assert recipe["text_encoder"] == str(tmp_path / "tp" / "tp" / "text")  # captions encoded in the step
    release = tmp_path / "tp" / "tp" / "release" / "text_encoder"
    config = json.loads((release / "config.json").read_text())
    assert config["text_config"]["layer_types"] == ["full_attention"] * 2
    written = (release / "model.safetensors").read_bytes()  # the variant's own encoder, not the work's
    assert written == (tmp_path / "tp" / "tp" / "text" / "text_encoder" / "model.safetensors").read_bytes()
    assert written != (work / "release" / "text_encoder" / "model.safetensors").read_bytes()


def test_ablation_with_repa_to_the_scene_teacher(script, toy_reproduction, tmp_path, capsys):
    work = toy_reproduction[0]
    argv = _tiny_run(work, tmp_path / "rp", "--variant", "rp:repa_teacher_steps=2;repa_tap_block=1")
    assert script["main"](argv) == 0
    assert "| rp | repa_teacher_steps=2; repa_tap_block=1 | 2 |" in capsys.readouterr().out
    recipe = json.loads((tmp_path / "rp" / "rp" / "run" / "recipe.json").read_text())
    repa = recipe["stages"][0]["repa"]
    teacher = tmp_path / "rp" / "rp" / "teacher"
    assert (repa["enabled"], repa["teacher"], repa["teacher_path"], repa["feature_source"]) == (
        True, "dinov2", str(teacher), "online")  # fmt: skip
    assert (repa["tap_block"], repa["weight"], repa["teacher_input_size"]) == (1, 0.5, 64)
    assert recipe["vae"] == str(work / "release") and (teacher / "config.json").is_file()
    rows = [json.loads(line) for line in (tmp_path / "rp" / "rp" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("repa_loss", 0) > 0 for row in rows)
    for bad, message in (("x:repa_weight=0.1", "add repa_teacher_steps=N"),
                         ("x:repa_teacher_steps=0", "repa_teacher_steps is a number of steps >= 1")):  # fmt: skip
        with pytest.raises(SystemExit):
            script["main"](["--work", str(work), "--variant", bad])
        assert message in capsys.readouterr().err


class _Renderer:
    """Stands in for the pipeline in `run_eval`: renders each prompt's own scene, each object's shape swapped for the
    next one of SHAPES with `swap` (so two objects still differ)."""

    def __init__(self, swap: bool = False) -> None:
        from motif_video.pipeline.guidance import GuidanceConfig
        from motif_video.pipeline.pipeline import GenerationDefaults

        self.swap = swap
        self.defaults = GenerationDefaults(height=64, width=64, num_frames=17, fps=8, num_inference_steps=2)
        self.guidance = GuidanceConfig()

    def __call__(self, prompt, image=None, height=64, width=64, num_frames=17, **kwargs):
        import dataclasses

        import numpy as np

        from motif_video_lab.procedural import render
        from motif_video_lab.procedural.dataset import eval_prompts
        from motif_video_lab.procedural.scene import SHAPES

        def swapped(obj):
            return dataclasses.replace(obj, shape=SHAPES[(SHAPES.index(obj.shape) + 1) % len(SHAPES)])

        specs = {p.prompt: p.spec for split in ("heldout", "train") for p in eval_prompts(split, 8)}
        clips = []
        for text in prompt:
            spec = specs[text]
            if self.swap:
                spec = dataclasses.replace(spec, objects=tuple(swapped(o) for o in spec.objects))
            clips.append(render(spec, num_frames, height, width).astype("float32") / 255)
        return type("Output", (), {"frames": np.stack(clips)})()


def test_shape_by_frame_reads_each_frames_shape(tmp_path, capsys):
    from motif_video_lab.evaluation import EvalSettings, run_eval

    script = runpy.run_path(str(SCRIPT.parent / "shape_by_frame.py"))
    settings = dict(num_prompts=8, splits=("heldout",), mode="both")
    for name, swap in (("true", False), ("swapped", True)):
        out = tmp_path / name
        run_eval(EvalSettings("unused", output=str(out), **settings), progress=False, pipe=_Renderer(swap)).save(out)
    true = script["summarise"](tmp_path / "true")
    assert list(true) == ["held-out T2V", "held-out I2V"]
    for column in true.values():  # the scenes themselves (through mp4): every object, every frame, right
        assert len(column["per_frame"]) == 17 and all(r == s > 0 for r, s in column["per_frame"])
        assert all(right == total > 0 for right, total in column["pairs"].values())
        assert set(column["pairs"]) == {"held-out pair", "other"}
    for column in script["summarise"](tmp_path / "swapped").values():  # every object drawn as another shape
        assert all(r == 0 < s for r, s in column["per_frame"])
        assert all(right == 0 < total for right, total in column["pairs"].values())
    assert script["main"]([str(tmp_path / "true")]) == 0
    assert "| shape right | 1.00 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script["main"]([str(tmp_path)])  # no results.json there


def test_attention_locality_observes_every_attention_call_from_outside():
    """The script wraps the model's attention entry point from outside: it sees every call (one joint attention
    per block, plus cross-attention), changes no result, and leaves the model as it was on exit."""
    import motif_video.models.attention as entry
    import motif_video.models.blocks as blocks
    from motif_video import MotifVideoTransformer
    from motif_video.models.config import get_preset

    script = runpy.run_path(str(SCRIPT.parent / "attention_locality.py"))
    model = MotifVideoTransformer(get_preset("tiny"))
    model.init_weights(torch.Generator().manual_seed(0))
    for p in model.parameters():  # a fresh model's zeroed gates would make every attention output irrelevant
        p.data.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    c = model.config
    x = torch.randn(1, c.in_channels, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    text = torch.randn(1, 3, c.text_embed_dim, generator=torch.Generator().manual_seed(2))
    inputs = dict(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=text)
    original = entry.attention
    with torch.no_grad():
        plain = model(**inputs).sample
        seen = []
        with script["observe_attention"](lambda q, k, mask: seen.append((q.shape[2], k.shape[2]))):
            observed = model(**inputs).sample
        model(**inputs)  # outside the block: not recorded
    assert torch.equal(observed, plain)
    assert entry.attention is original and blocks.attention is original
    video = 2 * 2 * 2  # (2, 4, 4) latents, patch (1, 2, 2)
    joint = [s for s in seen if s[0] == s[1] and s[1] > video]
    assert len(joint) == c.num_blocks and len(seen) > c.num_blocks  # the tiny preset has cross-attention too
    same_frame, same_place = script["token_masks"]((2, 2, 2))
    assert same_frame.sum() == 2 * 4 * 4 and same_place.sum() == 2 * 4 and not (same_frame & same_place).any()
