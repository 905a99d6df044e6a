"""The small-model reproduction runs end to end at toy budgets: data, VAE, components, prepare, train, export, ship."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motif_video.pipeline.guidance import GuidanceConfig
from motif_video.small_model.reproduce import SmallModelPlan, reproduce, sampling_correlation, small_recipe


def test_reproduce_end_to_end_and_resume(toy_reproduction, tmp_path):
    work, ship, plan = toy_reproduction
    assert (ship / "model_index.json").is_file() and (ship / "transformer" / "config.json").is_file()
    rows = (work / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 4  # the last step of each stage is always logged

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
    assert len((work / "run" / "metrics.jsonl").read_text().splitlines()) == 4
    assert small_recipe(tmp_path, plan).stages[1].interleave == ("image", "video", "video")
    assert pipe.defaults.noise_correlation == plan.noise_correlation > 0  # the release samples as the prior stage
    assert (pipe.guidance.scale, pipe.guidance.stop) == (plan.guidance_scale, plan.guidance_stop)  # the plan's
    assert pipe.guidance.replace(scale=8.0, stop=1.0) == GuidanceConfig()  # and otherwise the official APG
    with pytest.raises(ValueError, match="guidance_stop"):
        SmallModelPlan(guidance_stop=0.0)
    assert [s.objective.noise_correlation for s in small_recipe(tmp_path, plan).stages] == [0, 0, 0, 0.9]
    stages = small_recipe(tmp_path, SmallModelPlan()).stages
    assert {(s.objective.logit_mean, s.objective.logit_std) for s in stages} == {(1.0, 1.2)}  # every stage
    assert [s.objective.shift for s in stages] == [1.0] * 4  # the default plan shifts no further
    low_t = small_recipe(tmp_path, SmallModelPlan(logit_mean=0.0, logit_std=1.0, anneal_shift=2.0)).stages
    assert {(s.objective.logit_mean, s.objective.logit_std) for s in low_t} == {(0.0, 1.0)}
    assert [s.objective.shift for s in low_t] == [1.0, 1.0, 2.0, 2.0]  # the anneal and prior stages
    no_prior = SmallModelPlan(prior_steps=0)
    assert len(small_recipe(tmp_path, no_prior).stages) == 3 and sampling_correlation(no_prior) == 0.0
    # the prior stage reads its own clips when there are any (the toy plan has 3), else the joint stage's videos
    assert small_recipe(work, plan).stages[-1].sources["video"].path == str(work / "shards" / "prior-videos")
    assert len((work / "data" / "prior-videos" / "manifest.jsonl").read_text().splitlines()) == plan.prior_videos
    default_prior = small_recipe(tmp_path, SmallModelPlan()).stages[-1]
    assert default_prior.sources["video"].path == str(tmp_path / "shards" / "videos")
    off = small_recipe(tmp_path, SmallModelPlan(repa_teacher_steps=0))
    assert all(s.repa is None for s in off.stages) and off.vae is None
    aligned = small_recipe(tmp_path, SmallModelPlan())  # the default plan aligns stages 1-3
    assert (work / "teacher" / "config.json").is_file()  # the toy reproduction trained its teacher
    assert [s.repa is not None and s.repa.enabled for s in aligned.stages] == [True, True, True, False]  # not prior
    repa = aligned.stages[0].repa
    assert (repa.teacher, repa.teacher_path, repa.feature_source) == ("dinov2", str(tmp_path / "teacher"), "online")
    assert aligned.vae == str(tmp_path / "release")  # online targets decode the clean latents with the release VAE
    with pytest.raises(ValueError, match="set prior_steps too"):
        SmallModelPlan(prior_videos=10, prior_steps=0)
