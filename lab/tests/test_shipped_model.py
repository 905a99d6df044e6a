"""The small model shipped in the package: found offline by default, follows held-out prompts, loads in diffusers.

The release lives in `src/motif_video/_weights/motif-video-small` (reproduced by `lab/scripts/train_small_model.py`).
Until it ships, the module is skipped with that reason (pytest -ra prints it); once it ships, every test runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from motif_video.cli import main
from motif_video.core.release import SMALL_MODEL_CANDIDATES, small_model_dir
from motif_video.core.video_io import read_video
from motif_video.models.checkpoint_io import CheckpointError
from motif_video_lab.evaluation import EvalSettings, heldout_failures, run_eval
from motif_video_lab.procedural import eval_prompts, render
from motif_video_lab.procedural.evaluate import score_video

HELDOUT_PROMPTS = 48  # per mode: `motif-video-lab eval`'s own held-out set, the gate (about 40 s per mode on CPU)


@pytest.fixture(scope="module")
def shipped():
    try:
        return small_model_dir()
    except CheckpointError:
        pytest.skip("the small model is not shipped yet (issue 5: held-out accuracy is below the 90% gate)")


def test_the_package_ships_a_complete_small_release(shipped):
    assert shipped == SMALL_MODEL_CANDIDATES[0]  # inside the package, so a wheel carries it
    index = json.loads((shipped / "model_index.json").read_text())
    assert index["transformer"][1] == "MotifVideoTransformer3DModel"
    for name in ("transformer", "text_encoder", "tokenizer", "vae", "scheduler", "guider", "feature_extractor"):
        assert (shipped / name).is_dir(), name
    size = sum(f.stat().st_size for f in shipped.rglob("*") if f.is_file())
    assert size < 30 * 2**20, f"the shipped release is {size / 2**20:.1f} MiB"


@pytest.fixture(scope="module")
def report(shipped):
    settings = EvalSettings(str(shipped), splits=("heldout",), num_prompts=HELDOUT_PROMPTS, mode="both", device="cpu")
    return run_eval(settings, progress=False)


def test_shipped_model_follows_heldout_prompts(report):
    """The release gate of issue 5 (>= 90% of attributes on held-out combinations), T2V and I2V."""
    assert heldout_failures(report, 0.9) == []
    for mode in ("t2v", "i2v"):
        table = report.table("heldout", mode)
        assert table.videos == HELDOUT_PROMPTS and table.counts["color"][1] == HELDOUT_PROMPTS


def test_generate_uses_the_shipped_model_by_default(shipped, tmp_path):
    """`motif-video generate` with no --model: the shipped model, its 64x64 defaults, a video the evaluator passes."""
    item = eval_prompts("heldout", 1)[0]
    out = tmp_path / "video.mp4"
    assert main(["generate", "--prompt", item.prompt, "--output", str(out), "--device", "cpu"]) == 0
    record = json.loads(out.with_suffix(".json").read_text())["settings"]
    assert record["model_source"] == str(small_model_dir())
    assert record["resolved"]["shift"] != 15.0 and record["resolved"]["negative_prompt"] == ""
    frames, _ = read_video(out)
    assert frames.shape == (17, 64, 64, 3)
    score = score_video(frames, item.spec)
    assert sum(score.checks.values()) >= len(score.checks) - 1, score.checks

    first = render(item.spec, 17, 64, 64)[0]  # image-to-video from the scene's first frame
    from PIL import Image

    Image.fromarray(first).save(tmp_path / "first.png")
    out_i2v = tmp_path / "i2v.mp4"
    args = ["generate", "--prompt", item.prompt, "--image", str(tmp_path / "first.png"), "--output", str(out_i2v)]
    assert main([*args, "--device", "cpu"]) == 0
    video, _ = read_video(out_i2v)
    assert np.abs(video[0].astype(float) - first.astype(float)).mean() < 12  # starts from the given frame


def test_diffusers_loads_and_runs_the_shipped_release(shipped):
    """The release layout is the official one: diffusers' own pipeline loads it (its transformer included)."""
    from diffusers import MotifVideoPipeline as ReferencePipeline

    pipe = ReferencePipeline.from_pretrained(str(shipped))
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        eval_prompts("heldout", 1)[0].prompt,
        height=64,
        width=64,
        num_frames=17,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    frames = np.asarray(out.frames[0])
    assert frames.shape == (17, 64, 64, 3) and np.isfinite(frames).all()
