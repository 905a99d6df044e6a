"""`torchrun ... -m motif_video generate --parallel`: rank 0 alone writes the video and its record (which names
the layout), with the frames of a single-process run; a failing rank ends the launch with one message and no
output; bad layouts are refused with exit 2 and one line before any model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest

import motif_video
from motif_video.cli import generate as generate_cli
from motif_video.cli import main

PROMPT = "a red dog runs on the beach"
SMALL = ["--preset", "tiny", "--height", "32", "--width", "32", "--num-frames", "5", "--steps", "2"]
SRC = Path(motif_video.__file__).resolve().parents[1]  # the tree under test, for the launched processes
FAIL_ON_RANK_1 = """\
import os
if os.environ.get("RANK") == "1":  # the transformer of rank 1 fails on its first forward
    from motif_video.models import transformer

    def failing(self, *args, **kwargs):
        raise RuntimeError("injected failure")

    transformer.MotifVideoTransformer.forward = failing
"""


def _torchrun(
    tmp_path: Path, output: Path, *extra: str, pythonpath: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(map(str, (*pythonpath, SRC))))
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    command += ["-m", "motif_video", "generate", "--prompt", PROMPT, *SMALL, "--output", str(output), *extra]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)


def _frames(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(PIL.Image.open(p), dtype=np.int16) for p in sorted(folder.glob("*.png"))])


def test_launch_writes_once_with_single_process_frames(tmp_path, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    single = tmp_path / "single" / "frames"
    single.parent.mkdir()
    # cp=1,cfg=1 in one process is the plain path
    assert main(["generate", "--prompt", PROMPT, *SMALL, "--parallel", "cp=1,cfg=1", "--output", f"{single}/"]) == 0
    out = tmp_path / "launch" / "frames"
    out.parent.mkdir()
    done = _torchrun(tmp_path, Path(f"{out}/"), "--parallel", "cp=2")
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.parent.iterdir()) == ["frames", "frames.json"]  # one video, one record
    assert done.stdout.split() == [str(out)]  # printed by rank 0 only
    record = json.loads((out.parent / "frames.json").read_text())["settings"]
    assert record["parallel"] == "cp=2" and record["resolved"]["parallel"] == dict(cp=2, cfg=1, world=2, fsdp=0)
    got, expected = _frames(out), _frames(single)
    assert got.shape == expected.shape == (5, 32, 32, 3)
    assert np.abs(got - expected).max() <= 1


def test_a_failing_rank_ends_the_launch_with_one_message(tmp_path):
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(FAIL_ON_RANK_1)
    out = tmp_path / "out"
    out.mkdir()
    done = _torchrun(tmp_path, out / "clip.mp4", "--parallel", "cp=2", pythonpath=(inject,))
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if "motif-video generate:" in line]
    assert len(ours) == 1 and ours[0].endswith("error: rank 1: injected failure"), done.stderr[-3000:]
    assert "motif_video/" not in done.stderr  # no traceback through our code (torchrun prints its own summary)
    assert list(out.iterdir()) == []  # no partial video or record


@pytest.mark.parametrize(
    "world, args, message",
    [
        (2, ["--parallel", "cp=4"], "needs cp x cfg = 4 processes, and there are 2"),
        (1, ["--parallel", "cp=2"], "needs cp x cfg = 2 processes, and there are 1"),
        (3, ["--parallel", "cfg=3"], "so cfg is 1 or 2"),
        (2, ["--parallel", "cfg=2", "--guidance", "none"], "no step of this call runs guidance"),
        (2, ["--parallel", "cp=2", "--height", "16", "--width", "16", "--num-frames", "1"], "each rank needs"),
        (2, ["--parallel", "tp=2"], "write cp=P,cfg=G"),
        (2, ["--parallel", "cp=2,fsdp=1", "--offload", "block"], "fsdp=1 already shards the weights"),
        (2, [], "without --parallel"),
        (2, ["--parallel", "cp=2", "--device", "cuda:1"], None),  # cuda:N refused (no CUDA here: not available)
    ],
    ids=["world", "no-torchrun", "cfg3", "unguided", "tokens", "syntax", "fsdp-offload", "missing", "cuda-index"],
)
def test_bad_layouts_are_refused_before_loading(tmp_path, monkeypatch, capsys, world, args, message):
    monkeypatch.setattr(generate_cli, "build_pipeline", lambda settings: pytest.fail("loaded a model"))
    monkeypatch.setenv("WORLD_SIZE", str(world))
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        output = str(tmp_path / "clip.mp4")
        code = main(["generate", "--prompt", PROMPT, *SMALL, "--output", output, *args])
        err = capsys.readouterr().err.strip()
        assert code == 2
        if world == 1 or rank == 0:  # one line, from rank 0 only under a launch
            assert len(err.splitlines()) == 1 and err.startswith("motif-video generate: error: "), err
            assert message is None or message in err, err
        else:
            assert err == ""
        if world == 1:
            break
    assert not (tmp_path / "clip.mp4").exists()
