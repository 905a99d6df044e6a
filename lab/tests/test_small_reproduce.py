"""The small-model reproduction runs end to end at toy budgets: data, VAE, components, prepare, train, export, ship."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motif_video.pipeline.guidance import GuidanceConfig
from motif_video_lab.small_model.reproduce import SmallModelPlan, reproduce, sampling_correlation, small_recipe


def test_reproduce_end_to_end_and_resume(toy_reproduction, tmp_path):
    work, ship, plan = toy_reproduction
    assert (ship / "model_index.json").is_file() and (ship / "transformer" / "config.json").is_file()
    rows = (work / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 5  # the last step of each stage is always logged

    from motif_video import MotifVideoPipeline

    pipe = MotifVideoPipeline.from_pretrained(str(ship))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a large red circle moves to the left slowly on a black background.",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    frames = np.asarray(out.frames[0])
    assert frames.shape == (17, 64, 64, 3) and np.isfinite(frames).all()

    again = reproduce(work, plan)  # everything done: nothing is redone
    assert again == work / "release"
    assert len((work / "run" / "metrics.jsonl").read_text().splitlines()) == 5
    assert small_recipe(tmp_path, plan).stages[1].interleave == ("image", "video", "video")
    assert pipe.defaults.noise_correlation == plan.noise_correlation > 0  # the release samples as the prior stage
    assert (pipe.guidance.scale, pipe.guidance.stop) == (plan.guidance_scale, plan.guidance_stop)  # the plan's
    assert pipe.guidance.replace(scale=8.0, stop=1.0) == GuidanceConfig()  # and otherwise the official APG
    with pytest.raises(ValueError, match="guidance_stop"):
        SmallModelPlan(guidance_stop=0.0)
    assert [s.objective.noise_correlation for s in small_recipe(tmp_path, plan).stages] == [0, 0, 0, 0.9, 0.9]
    # the default plan is the best model's recipe: images, videos with correlated noise, polish; no TREAD, no REPA
    stages = small_recipe(tmp_path, SmallModelPlan()).stages
    assert [(s.name, s.steps, s.lr) for s in stages] == [("images", 5000, 1e-3), ("prior", 30000, 1e-3),
                                                         ("polish", 2000, 2.5e-4)]  # fmt: skip
    assert [s.objective.blur_max for s in stages] == [1.0, 1.0, 0.0]  # polish: a sharp first-frame condition
    assert all(s.route is None and s.repa is None for s in stages)
    assert {(s.objective.logit_mean, s.objective.logit_std) for s in stages} == {(1.0, 1.2)}  # every stage
    assert [s.objective.shift for s in stages] == [1.0, 1.0, 1.0]  # the default plan shifts no further
    toy = small_recipe(tmp_path, plan).stages  # every stage, TREAD on in the first two (the toy run trained it)
    assert [s.name for s in toy] == ["images", "joint", "anneal", "prior", "polish"]
    assert [s.route is not None for s in toy] == [True, True, False, False, False]
    low_t = small_recipe(tmp_path, SmallModelPlan(logit_mean=0.0, logit_std=1.0, anneal_shift=2.0, joint_steps=1,
                                                  anneal_steps=1)).stages  # fmt: skip
    assert {(s.objective.logit_mean, s.objective.logit_std) for s in low_t} == {(0.0, 1.0)}
    assert [s.objective.shift for s in low_t] == [1.0, 1.0, 2.0, 2.0, 2.0]  # the anneal, prior and polish stages
    no_prior = SmallModelPlan(prior_steps=0, polish_steps=0, joint_steps=1)
    assert [s.name for s in small_recipe(tmp_path, no_prior).stages] == ["images", "joint"]
    assert sampling_correlation(no_prior) == 0.0
    with pytest.raises(ValueError, match="at least one stage"):
        SmallModelPlan(image_steps=0, prior_steps=0, polish_steps=0)
    with pytest.raises(ValueError, match="stage steps must be >= 0"):
        SmallModelPlan(joint_steps=-1)
    # the prior stage reads its own clips when there are any (the toy plan has 3), else the joint stage's videos
    assert small_recipe(work, plan).stages[-1].sources["video"].path == str(work / "shards" / "prior-videos")
    assert len((work / "data" / "prior-videos" / "manifest.jsonl").read_text().splitlines()) == plan.prior_videos
    default_prior = small_recipe(tmp_path, SmallModelPlan()).stages[-1]
    assert default_prior.sources["video"].path == str(tmp_path / "shards" / "videos")
    off = small_recipe(tmp_path, SmallModelPlan(repa_teacher_steps=0))
    assert all(s.repa is None for s in off.stages) and off.vae is None
    aligned = small_recipe(tmp_path, SmallModelPlan(repa_teacher_steps=1500, joint_steps=1, anneal_steps=1))
    assert (work / "teacher" / "config.json").is_file()  # the toy reproduction trained its teacher
    assert [s.repa is not None and s.repa.enabled for s in aligned.stages] == [True, True, True, False, False]
    repa = aligned.stages[0].repa
    assert (repa.teacher, repa.teacher_path, repa.feature_source) == ("dinov2", str(tmp_path / "teacher"), "online")
    assert aligned.vae == str(tmp_path / "release")  # online targets decode the clean latents with the release VAE
    with pytest.raises(ValueError, match="set prior_steps or polish_steps too"):
        SmallModelPlan(prior_videos=10, prior_steps=0, polish_steps=0)
    polish_only = small_recipe(tmp_path, SmallModelPlan(prior_videos=10, prior_steps=0, polish_steps=5))
    assert polish_only.stages[-1].name == "polish"
    assert polish_only.stages[-1].sources["video"].path == str(tmp_path / "shards" / "prior-videos")


def test_train_small_model_flags_are_the_plan(capsys):
    import runpy
    from pathlib import Path

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "train_small_model.py"))
    args, plan = script["parse"]([])
    assert plan == SmallModelPlan() and args.work == "runs/small" and args.ship is None
    _, plan = script["parse"](["--tread", "--prior-steps", "10", "--prior-lr", "3e-4", "--joint-steps", "5"])
    assert (plan.tread, plan.prior_steps, plan.prior_lr, plan.joint_steps) == (True, 10, 3e-4, 5)
    assert script["parse"](["--no-tread"])[1].tread is False
    with pytest.raises(SystemExit):  # a plan the dataclass refuses is a one-line usage error
        script["parse"](["--image-steps", "0", "--prior-steps", "0", "--polish-steps", "0"])
    assert "at least one stage" in capsys.readouterr().err
