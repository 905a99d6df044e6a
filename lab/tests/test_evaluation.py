"""`motif-video-lab eval` and its library: tables per split x mode, per-video results, the release gate, the docs.

The tiny random release generates noise, so nothing here expects a high score from it; that the scorer CAN give
100% is shown with a stand-in pipeline that returns the ground-truth clip of each prompt.
"""

from __future__ import annotations

import dataclasses
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

from motif_video.core.release import small_model_dir
from motif_video.models.checkpoint_io import CheckpointError
from motif_video.pipeline.guidance import GuidanceConfig
from motif_video.pipeline.pipeline import GenerationDefaults
from motif_video.pipeline.tiny import save_tiny_release
from motif_video_lab.cli import main
from motif_video_lab.evaluation import (
    EvalReport,
    EvalSettings,
    confusion,
    format_report,
    heldout_failures,
    run_eval,
)
from motif_video_lab.procedural import eval_prompts, render
from motif_video_lab.procedural.evaluate import ATTRIBUTES

SIZE = dict(height=32, width=32, num_frames=9)  # small videos: the random model's cost is mostly the VAE
SIZE_ARGS = ["--height", "32", "--width", "32", "--num-frames", "9"]
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "make_small_model_docs.py"


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return save_tiny_release(tmp_path_factory.mktemp("tiny-release"))


@pytest.fixture(scope="module")
def report(release) -> EvalReport:
    settings = EvalSettings(str(release), num_prompts=2, steps=2, mode="both", device="cpu", **SIZE)
    return run_eval(settings, progress=False)


class ClipPipeline:
    """Stands in for MotifVideoPipeline: returns the rendered clip of the scene `truth` maps each prompt to."""

    def __init__(self, truth: dict, fail_batches: bool = False) -> None:
        self.truth, self.fail_batches = truth, fail_batches
        self.defaults = GenerationDefaults(height=64, width=64, num_frames=17, fps=8, num_inference_steps=10)
        self.guidance = GuidanceConfig()
        self.calls: list[dict] = []

    def __call__(self, prompt, image=None, height=None, width=None, num_frames=None, generator=None, **kwargs):
        if self.fail_batches and len(prompt) > 1:
            raise torch.cuda.OutOfMemoryError("fake out of memory")
        seeds = [g.initial_seed() for g in generator]
        self.calls.append(dict(prompts=list(prompt), image=image, seeds=seeds, guidance=kwargs.get("guidance")))
        clips = [render(self.truth[p], num_frames, height, width).astype(np.float32) / 255 for p in prompt]
        return type("Output", (), {"frames": np.stack(clips)})()


def _truth(num: int, shift: int = 0, image: bool = False) -> dict:
    """prompt -> the scene of the prompt `shift` places further on in its split (0: its own scene)."""
    truth = {}
    for split in ("heldout", "train"):
        items = eval_prompts(split, num, image=image)
        truth.update({p.prompt: items[(i + shift) % num].spec for i, p in enumerate(items)})
    return truth


def test_report_has_a_table_per_split_and_mode(report):
    assert list(report.tables) == ["held-out T2V", "train T2V", "held-out I2V", "train I2V"]
    assert all(table.videos == 2 for table in report.tables.values())
    assert len(report.videos) == 8
    video = report.videos[0]
    assert {"key", "split", "mode", "prompt", "seed", "spec", "checks", "details", "all_correct"} <= set(video)
    assert set(video["checks"]) <= set(ATTRIBUTES) and "color" in video["checks"]
    assert [v["seed"] for v in report.videos if v["mode"] == "i2v" and v["split"] == "train"] == [0, 1]
    assert report.settings["steps"] == 2 and report.settings["guidance_scale"] == 8.0  # the release's guider
    text = format_report(report)
    for name in ("background", "color", "shape", "direction", "attributes correct", "all correct (videos)"):
        assert name in text
    assert "held-out I2V" in text and "2 steps" in text
    again = EvalReport.from_dict(json.loads(json.dumps(report.to_dict())))  # results.json round trip
    assert format_report(again) == text


def test_ground_truth_clips_score_100_percent_and_other_scenes_do_not():
    settings = EvalSettings("unused", num_prompts=7, mode="both", batch_size=3, seed=5)  # 7: every held-out pair
    fake = ClipPipeline(_truth(7))
    report = run_eval(settings, progress=False, pipe=fake)
    for name, table in report.tables.items():
        assert table.overall == 1.0 and table.all_correct == table.videos == 7, name
    assert heldout_failures(report, 0.9) == []
    ones, twos = report.table("heldout", "t2v", objects=1), report.table("heldout", "t2v", objects=2)
    assert ones.videos and twos.videos and ones.videos + twos.videos == 7 and ones.overall == twos.overall == 1.0
    assert f"| one object | 100.0% ({ones.videos}) |" in format_report(report)  # held-out T2V is the first column
    assert [len(c["prompts"]) for c in fake.calls[:3]] == [3, 3, 1]  # batches of batch_size
    assert [s for c in fake.calls[:3] for s in c["seeds"]] == list(range(5, 12))  # seed + index, one per video
    assert fake.calls[0]["image"] is None
    # Ground truth: every colour, shape and size asked is read as itself, object for object.
    asked = sum(len(v["spec"]["objects"]) for v in report.videos if v["split"] == "heldout" and v["mode"] == "t2v")
    table = confusion(report, "heldout", "t2v")
    assert sum(sum(c.values()) for c in table["shape"].values()) == asked
    assert all(set(c) == {value} for rows in table.values() for value, c in rows.items())
    assert "| shape | circle (" in format_report(report)
    i2v = fake.calls[-1]  # i2v: each prompt's own rendered first frame
    assert i2v["image"][0].shape == (64, 64, 3) and i2v["image"][0].dtype == np.uint8

    wrong = run_eval(settings, progress=False, pipe=ClipPipeline(_truth(7, shift=1)))
    heldout = wrong.table("heldout", "t2v")
    assert heldout.overall < 0.8 and heldout.all_correct < heldout.videos
    assert len(heldout_failures(wrong, 0.9)) == 2  # both modes' held-out tables fail the gate
    misread = confusion(wrong, "heldout", "t2v")
    off = sum(n for rows in misread.values() for value, c in rows.items() for read, n in c.items() if read != value)
    assert off > 0  # another scene's objects: some asked values are read as others (or as "none")
    old = wrong.to_dict()
    for video in old["videos"]:
        del video["details"]["matched"]  # results.json written before the matching was recorded
    assert confusion(EvalReport.from_dict(old), "heldout", "t2v") is None
    assert "read as" not in format_report(EvalReport.from_dict(old))


def test_t2i_scores_still_images_of_image_captions(tmp_path):
    settings = EvalSettings("unused", num_prompts=6, mode="t2i", batch_size=4, output=str(tmp_path))
    fake = ClipPipeline(_truth(6, image=True))
    report = run_eval(settings, progress=False, pipe=fake)
    assert list(report.tables) == ["held-out T2I", "train T2I"]
    assert all(t.overall == 1.0 and t.videos == 6 for t in report.tables.values())
    heldout = [v for v in report.videos if v["split"] == "heldout"]
    assert all(v["spec"]["image"] and v["key"].startswith("heldout-i") for v in heldout)
    assert all(v["checks"].get("direction") is None for v in heldout)  # an image states no motion
    png = tmp_path / heldout[0]["path"]
    assert png.suffix == ".png" and not list(png.parent.glob(".*.tmp"))  # written atomically
    from PIL import Image

    from motif_video_lab.procedural.scene import SceneSpec

    rendered = render(SceneSpec.from_dict(heldout[0]["spec"]), 1, 64, 64)[0]
    np.testing.assert_array_equal(np.asarray(Image.open(png).convert("RGB")), rendered)  # the image as generated
    assert "1x64x64. 12 images in" in format_report(report)
    wrong = run_eval(dataclasses.replace(settings, output=None), progress=False,
                     pipe=ClipPipeline(_truth(6, shift=1, image=True)))  # fmt: skip
    assert heldout_failures(wrong, 0.9) == [
        f"held-out T2I attribute accuracy {100 * wrong.table('heldout', 't2i').overall:.1f}% is below the required "
        "90.0% (6 videos)"
    ]


def test_out_of_memory_falls_back_to_one_prompt_per_call():
    fake = ClipPipeline(_truth(3), fail_batches=True)
    report = run_eval(EvalSettings("unused", splits=("heldout",), num_prompts=3), progress=False, pipe=fake)
    assert len(report.videos) == 3 and report.table("heldout", "t2v").overall == 1.0
    assert all(len(c["prompts"]) == 1 for c in fake.calls)


def test_guidance_stop_reaches_the_pipeline_and_the_settings_line():
    fake = ClipPipeline(_truth(1))
    settings = EvalSettings("unused", splits=("heldout",), num_prompts=1, guidance_stop=0.7)
    report = run_eval(settings, progress=False, pipe=fake)
    assert fake.calls[0]["guidance"] == GuidanceConfig(stop=0.7) and report.settings["guidance_stop"] == 0.7
    assert "guidance scale 8.0 on the first 70% of steps," in format_report(report)
    report = run_eval(dataclasses.replace(settings, guidance_stop=None), progress=False, pipe=fake)
    assert fake.calls[-1]["guidance"] == GuidanceConfig() and "guidance scale 8.0," in format_report(report)
    with pytest.raises(ValueError, match="guidance_stop"):
        EvalSettings("unused", guidance_stop=0.0).validate()


def test_cli_writes_results_table_and_videos(release, tmp_path, capsys):
    out = tmp_path / "eval"
    args = ["eval", "--model", str(release), "--split", "heldout", "--num-prompts", "2", "--steps", "2", *SIZE_ARGS]
    code = main([*args, "--device", "cpu", "--output", str(out), "--min-accuracy", "0"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| attribute | held-out T2V |" in printed and "passed" in printed
    results = json.loads((out / "results.json").read_text())
    assert [v["path"] for v in results["videos"]] == ["t2v/heldout-p000.mp4", "t2v/heldout-p001.mp4"]
    assert all((out / v["path"]).stat().st_size > 0 for v in results["videos"])
    assert (out / "table.md").read_text().startswith("| attribute |")
    assert results["settings"]["noise_correlation"] == 0.0 and "noise correlation 0," in printed  # the release's

    code = main([*args, "--device", "cpu", "--output", str(tmp_path / "rho"), "--noise-correlation", "0.5"])
    assert code == 0 and "noise correlation 0.5," in capsys.readouterr().out
    other = eval_prompts("heldout", 2, seed=1, **SIZE)
    code = main([*args, "--device", "cpu", "--output", str(tmp_path / "p1"), "--prompt-seed", "1"])
    assert code == 0 and "prompt set 1)" in capsys.readouterr().out
    again = json.loads((tmp_path / "p1" / "results.json").read_text())
    assert [v["prompt"] for v in again["videos"]] == [p.prompt for p in other]  # another fixed prompt set

    code = main(["eval", "--model", str(release), "--split", "heldout", "--num-prompts", "1", "--steps", "1",
                 *SIZE_ARGS, "--min-accuracy", "0.99"])  # fmt: skip
    assert code == 1
    assert "held-out T2V attribute accuracy" in capsys.readouterr().err


def test_missing_model_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    assert main(["eval", "--model", str(tmp_path / "nowhere"), "--num-prompts", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "nowhere" in err and len(err.splitlines()) == 1

    monkeypatch.setattr("motif_video.core.release.SMALL_MODEL_CANDIDATES", (tmp_path / "a", tmp_path / "b"))
    assert main(["eval"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not trained/shipped yet" in err and len(err.splitlines()) == 1
    assert main(["eval", "--split", "train", "--min-accuracy", "0.9"]) == 2  # the gate needs the held-out split


def test_small_model_dir_prefers_the_package_copy(tmp_path):
    packaged, repo = tmp_path / "pkg", tmp_path / "repo"
    for folder in (packaged, repo):
        folder.mkdir()
        (folder / "model_index.json").write_text("{}")
    assert small_model_dir([packaged, repo]) == packaged
    assert small_model_dir([tmp_path / "none", repo]) == repo
    with pytest.raises(CheckpointError, match="not trained/shipped yet"):
        small_model_dir([tmp_path / "none"])


def test_docs_script_writes_loss_curve_and_eval_table(tmp_path):
    pytest.importorskip("matplotlib")
    report = run_eval(EvalSettings("small", num_prompts=2), progress=False, pipe=ClipPipeline(_truth(2)))
    results = report.save(tmp_path / "eval")
    rng = np.random.default_rng(0)
    rows = [dict(step=s, loss=1 / (1 + s / 50) + 0.05 * rng.random(), flow_loss=0.9 / (1 + s / 50),
                 stage="low-res" if s < 200 else "high-res") for s in range(0, 400, 10)]  # fmt: skip
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    docs = tmp_path / "docs"
    code = runpy.run_path(str(SCRIPT))["main"](
        ["--metrics", str(metrics), "--results", str(results), "--out", str(docs)]
    )
    assert code == 0
    assert (docs / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (docs / "eval.md").read_text()
    assert "| attribute | held-out T2V | train T2V |" in text and "**passes**" in text
    assert "loss_curve.png" in text and "Final training step 390" in text
