"""A killed run resumes exactly: six kill points of a three-stage curriculum (two while its synthetic data is being
written), Ctrl-C in the command (also during the final export), SIGTERM and SIGINT of a real process, a second
`train` on a held folder, a full disk, and the leftovers of killed writes."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hostile_helpers import error_line, snapshot
from motif_video.cli import main
from motif_video.core import synthetic_shards
from motif_video.training import checkpoint as checkpoint_module
from motif_video.training.recipe import Recipe, get_recipe_preset
from motif_video.training.run import final_checkpoint, run_recipe
from motif_video.training.trainer import StopTraining
from training_helpers import kill_after, tiny_recipe

RECIPE = tiny_recipe(4)


def _recipe() -> Recipe:
    recipe = get_recipe_preset("cpu-tiny")
    stages = tuple(dataclasses.replace(s, steps=3) for s in recipe.stages)
    return dataclasses.replace(recipe, stages=stages, checkpoint_every=2, log_every=1)


def _final(run_dir: Path, recipe: Recipe) -> dict[str, torch.Tensor]:
    """Every model and EMA tensor of the run's final checkpoint, read from disk."""
    from motif_video.training.checkpoint import read_tensors, stored_tensors

    path = final_checkpoint(recipe, run_dir)
    request: dict = {"model": {}, "ema": {}}
    for key, md in stored_tensors(path).items():
        group, _, name = key.partition(".")
        if group in request and hasattr(md, "properties"):
            request[group][name] = torch.empty(md.size, dtype=md.properties.dtype)
    read_tensors(request, path)
    return {f"{group}.{name}": t for group, tensors in request.items() for name, t in tensors.items()}


@pytest.fixture(scope="module")
def expected(tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("uninterrupted")
    run_recipe(_recipe(), run)
    return _final(run, _recipe())


def _die_writing(monkeypatch, folder: str, shard: int, mid_tar: bool) -> None:
    """Ctrl-C while `folder`'s synthetic shard `shard` is written: before it starts, or half-way through its tar."""
    real_write, real_member = synthetic_shards.write_shard, synthetic_shards._add_member
    members = []

    def write_shard(directory, index, samples):
        if Path(directory).name == folder and index == shard and not mid_tar:
            raise KeyboardInterrupt(f"killed before shard {index}")
        return real_write(directory, index, samples)

    def add_member(tar, name, payload):
        members.append(name)
        if mid_tar and folder in str(tar.name) and len([m for m in members if m.startswith(f"s{shard:05d}")]) > 3:
            raise KeyboardInterrupt(f"killed inside shard {shard}")
        return real_member(tar, name, payload)

    monkeypatch.setattr(synthetic_shards, "write_shard", write_shard)
    monkeypatch.setattr(synthetic_shards, "_add_member", add_member)


def _die_saving(monkeypatch, stage: str, step: int) -> None:
    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        if stage in str(path) and f"step-{step:08d}.partial" in str(path):
            raise KeyboardInterrupt("killed while saving")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)


KILLS = {  # name -> how the run dies (global steps: stage 1 is 1-3, stage 2 is 4-6, stage 3 is 7-9)
    "data-between-shards": lambda mp: (_die_writing(mp, "images-image", 2, mid_tar=False), None)[1],
    "step-1-before-a-checkpoint": lambda mp: kill_after(1),
    "saving-a-checkpoint": lambda mp: (_die_saving(mp, "01-joint", 2), None)[1],
    "data-inside-a-tar": lambda mp: (_die_writing(mp, "joint-video", 1, mid_tar=True), None)[1],
    "stage-boundary": lambda mp: kill_after(6),
    "after-a-checkpoint-of-stage-3": lambda mp: kill_after(8),
}


@pytest.mark.parametrize("kill", list(KILLS))
def test_a_run_killed_anywhere_resumes_bit_identical(tmp_path, monkeypatch, expected, kill):
    run = tmp_path / "run"
    with monkeypatch.context() as mp:
        on_step_end = KILLS[kill](mp)
        with pytest.raises((StopTraining, KeyboardInterrupt)):
            run_recipe(_recipe(), run, on_step_end=on_step_end)
    if kill.startswith("data"):  # the bug this guards: a partial set once looked complete
        folder = next(p for p in (run / "data").iterdir() if not (p / synthetic_shards.SET_MARKER).exists())
        assert not list(folder.glob(".*tmp*")), "a killed tar write leaves no temporary"
    resumed = run_recipe(_recipe(), run)
    assert resumed[-1]["step"] == 9
    got = _final(run, _recipe())
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), (kill, key)


def test_ctrl_c_in_the_command_then_rerun_exports_the_same_model(tmp_path, capsys, monkeypatch):
    import motif_video.models.checkpoint_io as checkpoint_io
    import motif_video.training.trainer as trainer

    (tmp_path / "r.toml").write_text(RECIPE)
    train = ["train", "--config", str(tmp_path / "r.toml"), "--output"]
    assert main([*train, str(tmp_path / "reference")]) == 0
    run = tmp_path / "run"
    real_step, calls = trainer.training_step, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    with monkeypatch.context() as mp:  # Ctrl-C during step 3 (the step-2 checkpoint exists)
        mp.setattr(trainer, "training_step", step)
        assert main([*train, str(run)]) == 130
    assert "interrupted" in error_line(capsys.readouterr().err)
    with monkeypatch.context() as mp:  # Ctrl-C while the final export writes its weights
        real_file = checkpoint_io.save_file

        def save_file(*args, **kwargs):
            real_file(*args, **kwargs)
            raise KeyboardInterrupt

        mp.setattr(checkpoint_io, "save_file", save_file)
        assert main([*train, str(run)]) == 130
    assert "interrupted" in error_line(capsys.readouterr().err)
    assert not list(run.rglob("*.partial")) and not list(run.rglob(".*tmp*"))
    assert main([*train, str(run)]) == 0
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        reference = (tmp_path / "reference" / "final" / "transformer" / name).read_bytes()
        assert (run / "final" / "transformer" / name).read_bytes() == reference, name


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interr")])
def test_a_signalled_train_is_one_line_and_resumes(tmp_path, capsys, signum, code, word):
    (tmp_path / "r.toml").write_text(RECIPE.replace("steps = 4", "steps = 40"))
    run = tmp_path / "run"
    argv = ["train", "--config", str(tmp_path / "r.toml"), "--output", str(run), "--no-export"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "motif_video", *argv], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None:
            metrics = run / "metrics.jsonl"
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        assert main(argv) == 2  # the folder is held: a second train is refused, naming the first
        assert f"in use by process {proc.pid}" in error_line(capsys.readouterr().err)
        proc.send_signal(signum)
        stderr = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert word in error_line(stderr)
    assert not list(run.rglob("*.partial")) and not (run / ".lock").exists()
    stale = run / f".recipe.{_dead_pid()}.tmp.json"
    stale.write_text("half")  # as a SIGKILL mid-write would leave it
    assert main(argv) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41)) and not stale.exists()


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from motif_video import atomic

    def no_space(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(atomic, "_fsync", no_space)
    out = tmp_path / "clip.mp4"
    argv = ["generate", "--prompt", "a red ball", "--preset", "tiny", "--height", "32", "--width", "32"]
    assert main([*argv, "--num-frames", "5", "--steps", "1", "--output", str(out)]) == 2
    line = error_line(capsys.readouterr().err)
    assert "No space left on device" in line and str(out) in line
    assert list(tmp_path.iterdir()) == []


def test_a_killed_generates_leftover_is_removed_by_the_next(tmp_path):
    stale = tmp_path / f".clip.{_dead_pid()}.tmp.mp4"
    stale.write_bytes(b"half a video")
    argv = ["generate", "--prompt", "a red ball", "--preset", "tiny", "--height", "32", "--width", "32"]
    assert main([*argv, "--num-frames", "5", "--steps", "1", "--output", str(tmp_path / "clip.mp4")]) == 0
    assert not stale.exists() and (tmp_path / "clip.mp4").is_file()


def test_a_refused_recipe_leaves_its_folder_and_the_fixed_one_runs(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    (tmp_path / "r.toml").write_text(RECIPE.replace('path = "synthetic"', 'path = "no/such/folder"'))
    before = snapshot(tmp_path)
    assert main(["train", "--config", str(tmp_path / "r.toml"), "--output", str(run)]) == 2
    assert "is not a folder of shards" in error_line(capsys.readouterr().err)
    assert snapshot(tmp_path) == before
    (tmp_path / "r.toml").write_text(RECIPE.replace("steps = 4", "steps = 1"))
    assert main(["train", "--config", str(tmp_path / "r.toml"), "--output", str(run), "--no-export"]) == 0
    assert (run / "notes.txt").read_text() == "mine"


def test_a_run_without_a_checkpoint_takes_a_corrected_recipe(tmp_path):
    recipe = dataclasses.replace(_recipe(), stages=_recipe().stages[:1])
    with pytest.raises(StopTraining):
        run_recipe(recipe, tmp_path / "run", on_step_end=kill_after(1))  # before the first checkpoint
    corrected = dataclasses.replace(recipe, stages=(dataclasses.replace(recipe.stages[0], lr=1e-3),))
    assert run_recipe(corrected, tmp_path / "run")[-1]["step"] == 3
    with pytest.raises(ValueError, match="different recipe"):  # once a checkpoint exists, an edit is refused
        run_recipe(recipe, tmp_path / "run")
