"""`motif-video generate` end to end: a playable mp4 and its settings JSON, and one-line errors for bad input."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from motif_video.cli import main
from motif_video.core.video_io import read_video
from motif_video.pipeline.settings import GenerationSettings
from motif_video.pipeline.tiny import save_tiny_release

SMALL = ["--preset", "tiny", "--height", "32", "--width", "48", "--num-frames", "9", "--steps", "2"]


def _generate(tmp_path: Path, *extra: str, output: str = "clip.mp4") -> tuple[int, Path]:
    out = tmp_path / output
    code = main(["generate", "--prompt", "a red dog runs on the beach", *SMALL, "--output", str(out), *extra])
    return code, out


def test_generate_writes_a_playable_mp4_with_its_settings(tmp_path):
    code, out = _generate(tmp_path, "--fps", "12", "--seed", "3")
    assert code == 0
    frames, fps = read_video(out)
    assert frames.shape == (9, 32, 48, 3) and fps == 12
    assert frames.std() > 1  # not a blank video
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["settings"]["seed"] == 3 and record["settings"]["prompt"] == "a red dog runs on the beach"
    resolved = record["settings"]["resolved"]
    assert resolved["shift"] == 15.0 and resolved["num_inference_steps"] == 2 and resolved["task"] == "t2v"
    assert resolved["guidance"]["method"] == "apg" and resolved["guidance"]["scale"] == 8.0
    assert "torch" in record["environment"]
    # the same seed gives the same video
    code, again = _generate(tmp_path, "--fps", "12", "--seed", "3", output="again.mp4")
    np.testing.assert_array_equal(read_video(again)[0], frames)


def test_generate_from_a_release_folder_image_to_video_and_prompt_file(tmp_path):
    release = save_tiny_release(tmp_path / "release")
    image = tmp_path / "first.png"
    PIL.Image.fromarray(np.full((40, 60, 3), (200, 30, 30), dtype=np.uint8)).save(image)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# two prompts\na red ball\n\na blue cube\n")
    out = tmp_path / "i2v.mp4"
    args = ["generate", "--model", str(release), "--prompt-file", str(prompts), "--image", str(image)]
    args += ["--height", "32", "--width", "32", "--num-frames", "9", "--steps", "2", "--output", str(out)]
    assert main(args) == 0
    for k in range(2):
        frames, _ = read_video(tmp_path / f"i2v-{k}.mp4")
        assert frames.shape == (9, 32, 32, 3)
        record = json.loads((tmp_path / f"i2v-{k}.json").read_text())
        assert record["settings"]["resolved"]["task"] == "i2v" and record["settings"]["resolved"]["shift"] == 8.0
    # the image conditions the video (the tiny VAE is random, so compare against another image, not colours)
    PIL.Image.fromarray(np.full((40, 60, 3), (30, 30, 200), dtype=np.uint8)).save(image)
    args[args.index(str(out))] = str(tmp_path / "blue.mp4")
    assert main(args) == 0
    blue, _ = read_video(tmp_path / "blue-0.mp4")
    red, _ = read_video(tmp_path / "i2v-0.mp4")
    assert np.abs(blue.astype(float) - red).mean() > 1


def test_without_model_the_shipped_small_model_is_the_default(tmp_path, monkeypatch):
    from motif_video.cli.generate import OFFICIAL_MODEL, default_model

    monkeypatch.setattr("motif_video.core.release.SMALL_MODEL_CANDIDATES", (tmp_path / "none",))
    assert default_model() == OFFICIAL_MODEL  # no shipped model: the official release
    release = save_tiny_release(tmp_path / "shipped")
    monkeypatch.setattr("motif_video.core.release.SMALL_MODEL_CANDIDATES", (tmp_path / "none", release))
    assert default_model() == str(release)
    out = tmp_path / "default.mp4"
    args = ["generate", "--prompt", "a red ball", "--steps", "1", "--output", str(out), "--device", "cpu"]
    assert main(args) == 0
    record = json.loads(out.with_suffix(".json").read_text())["settings"]
    assert record["model_source"] == str(release) and record["model"] is None


def _incomplete_release(tmp_path: Path) -> Path:
    folder = tmp_path / "incomplete"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "MotifVideoPipeline"}))
    return folder


BAD = [
    (["--height", "40"], "multiple of 16"),
    (["--num-frames", "10"], "4k\\+1"),
    (["--image", "{tmp}/missing.png"], "cannot read image"),
    (["--offload", "turbo"], "unknown offload mode"),
    (["--sampler", "ddim"], None),  # argparse's own choices error, also exit 2
    (["--output", "{tmp}/no/such/dir/clip.mp4"], "does not exist"),
    (["--output", "{tmp}/clip.avi"], "unsupported output format"),
    (["--prompt", "   "], "empty prompt"),
    (["--noise-correlation", "1.5"], "noise_correlation must lie in \\[0, 1\\]"),
]


@pytest.mark.parametrize("extra, message", BAD, ids=[" ".join(b[0])[:30] for b in BAD])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, extra, message):
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    with pytest.raises(SystemExit) if message is None else _no_exit():
        code, _ = _generate(tmp_path, *extra)
        assert code == 2
    err = capsys.readouterr().err
    if message is not None:
        lines = [line for line in err.splitlines() if "error:" in line]
        assert len(lines) == 1 and "Traceback" not in err
        assert __import__("re").search(message, lines[0]), lines[0]
    assert not (tmp_path / "clip.mp4").exists() and not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("which", ["missing", "incomplete", "no-index"])
def test_bad_model_folder(tmp_path, capsys, which):
    folder = {
        "missing": lambda: tmp_path / "nowhere",
        "incomplete": lambda: _incomplete_release(tmp_path),
        "no-index": lambda: (tmp_path / "empty").mkdir() or tmp_path / "empty",
    }[which]()
    out = tmp_path / "clip.mp4"
    code = main(
        [
            "generate",
            "--prompt",
            "x",
            "--model",
            str(folder),
            "--output",
            str(out),
            "--height",
            "32",
            "--width",
            "32",
            "--num-frames",
            "9",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err
    assert not out.exists()


def test_no_prompt_and_help(capsys):
    assert main(["generate", "--preset", "tiny"]) == 2
    assert "no prompt" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for default in ("default 0", "multiple of 16", "4k+1", "shipped small model", "default euler", "official 736"):
        assert default in help_text


def test_real_process_exits_2_without_traceback(tmp_path):
    out = tmp_path / "clip.mp4"
    proc = subprocess.run(
        [sys.executable, "-m", "motif_video", "generate", "--prompt", "x", "--num-frames", "8", "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "num_frames must be of the form 4k+1" in proc.stderr
    assert not out.exists()


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_size_precheck_uses_the_local_models_patch(tmp_path):
    from motif_video.cli.generate import GenerateSettings, local_patch

    release = tmp_path / "release"
    (release / "transformer").mkdir(parents=True)
    out = str(tmp_path / "clip.mp4")
    (release / "transformer" / "config.json").write_text(json.dumps({"patch_size": 1, "patch_size_t": 1}))
    assert local_patch(str(release)) == (1, 1)
    size = GenerationSettings(height=40, width=24)
    GenerateSettings(["a red circle"], model=str(release), generation=size, output=out).validate()  # 8 * 1
    (release / "transformer" / "config.json").write_text(json.dumps({"patch_size": 2, "patch_size_t": None}))
    with pytest.raises(ValueError, match="multiple of 16"):
        GenerateSettings(["a red circle"], model=str(release), generation=size, output=out).validate()
    assert local_patch("Motif-Technologies/Motif-Video-2B") == local_patch(None) == (2, 1)


def test_every_generation_setting_is_a_flag_with_its_default():
    """The command line is built from the settings dataclasses: one flag per field, the field's default."""
    from dataclasses import fields

    from motif_video.cli.main import build_parser

    args = build_parser().parse_args(["generate"])
    for f in fields(GenerationSettings):
        assert getattr(args, f.name) == f.default, f.name
    args = build_parser().parse_args(["generate", "--steps", "3", "--guidance", "cfg", "--text-encoder-cpu"])
    assert (args.steps, args.guidance, args.text_encoder_on_cpu) == (3, "cfg", True)


def test_the_pipeline_runs_settings_as_it_runs_keyword_arguments():
    from motif_video.pipeline import MotifVideoPipeline
    from motif_video.pipeline.tiny import build_tiny_components

    pipe = MotifVideoPipeline.from_components(build_tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    settings = GenerationSettings(height=32, width=32, num_frames=5, steps=2, seed=5, guidance="cfg", shift=3.0)
    by_settings = pipe.generate("a red ball", settings).frames
    by_kwargs = pipe(
        "a red ball", height=32, width=32, num_frames=5, num_inference_steps=2, guidance="cfg", shift=3.0,
        generator=torch.Generator().manual_seed(5),
    ).frames  # fmt: skip
    np.testing.assert_array_equal(by_settings, by_kwargs)
    with pytest.raises(ValueError, match="generator"):
        pipe.generate("a red ball", settings, generator=torch.Generator())


KNOWN_PROMPT = "a large red circle moves to the left slowly on a black background."


def test_generate_warns_about_words_the_shipped_models_tokenizer_does_not_know(tmp_path, caplog):
    """The shipped small model has a word-level vocabulary: a word outside it reaches the model as <unk>."""
    from motif_video.cli.generate import GenerateSettings, build_pipeline, generate
    from motif_video.core.release import small_model_dir

    def run(prompt: str) -> list[str]:
        quick = GenerationSettings(num_frames=5, steps=1)
        out = str(tmp_path / "clip.mp4")
        settings = GenerateSettings([prompt], model=str(small_model_dir()), device="cpu", generation=quick, output=out)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="motif_video.cli.generate"):
            generate(settings, pipe)
        return [r.getMessage() for r in caplog.records if r.name == "motif_video.cli.generate"]

    pipe = build_pipeline(GenerateSettings(["x"], model=str(small_model_dir()), device="cpu"))
    pipe.set_progress_bar_config(disable=True)
    assert run(KNOWN_PROMPT) == []
    warnings = run("a large zebra circle moves to the left on a xylophone background.")
    assert len(warnings) == 1 and "zebra, xylophone" in warnings[0] and "large" not in warnings[0].split(":")[0]
