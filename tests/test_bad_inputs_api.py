"""A catalogue of bad inputs to the Python API: each raises ValueError, TypeError or OSError (or a subclass) whose
message names the argument, field or file, before any work, and leaves no file behind."""

from __future__ import annotations

import errno
import json
import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from hostile_helpers import copy_release, edit_json, snapshot
from motif_video import MotifVideoConfig, MotifVideoTransformer
from motif_video.models.checkpoint_io import CheckpointError


@pytest.fixture(scope="module")
def pipe():
    from motif_video.pipeline import MotifVideoPipeline
    from motif_video.pipeline.tiny import build_tiny_components

    pipe = MotifVideoPipeline.from_components(build_tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(**kwargs: Any) -> Callable[[Path, Any], Any]:
    def run(tmp: Path, pipe: Any) -> Any:
        args = dict(prompt="a red ball", height=32, width=32, num_frames=5, num_inference_steps=1)
        return pipe(**{**args, **kwargs})

    return run


def _transformer(edit: Callable[[Path], None]) -> Callable[[Path, Any], Any]:
    def run(tmp: Path, pipe: Any) -> Any:
        folder = tmp / "transformer"
        MotifVideoTransformer.from_preset("tiny").save_pretrained(str(folder))
        edit(folder)
        before = snapshot(tmp)
        try:
            return MotifVideoTransformer.from_pretrained(str(folder))
        finally:
            assert snapshot(tmp) == before

    return run


def _weights(data: bytes) -> Callable[[Path], None]:
    return lambda folder: (folder / "diffusion_pytorch_model.safetensors").write_bytes(data)


def _header_past_the_end(folder: Path) -> None:
    raw = json.dumps({"proj_out.weight": {"dtype": "F32", "shape": [64, 32], "data_offsets": [0, 8192]}}).encode()
    (folder / "diffusion_pytorch_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 16)


def _settings(**fields: Any) -> Callable[[Path, Any], Any]:
    from motif_video.pipeline.settings import GenerationSettings

    return lambda tmp, pipe: GenerationSettings(**fields).validate()


def _recipe(**changes: Any) -> Callable[[Path, Any], Any]:
    from motif_video.training.recipe import recipe_from_dict

    stage = {"name": "a", "steps": 1, "sources": {"v": {"path": "synthetic", "buckets": ["1x32x32"]}}}
    data = {"model": {"preset": "tiny"}, "stages": [stage], **changes}
    return lambda tmp, pipe: recipe_from_dict(data)


def _load_recipe(text: str, name: str = "r.json") -> Callable[[Path, Any], Any]:
    from motif_video.training.recipe import load_recipe

    def run(tmp: Path, pipe: Any) -> Any:
        (tmp / name).write_text(text)
        before = snapshot(tmp)
        try:
            return load_recipe(tmp / name)
        finally:
            assert snapshot(tmp) == before

    return run


def _release(edit: Callable[[Path], None], names: tuple[str, ...] = ("tokenizer",)) -> Callable[[Path, Any], Any]:
    from motif_video.core.release import load_components

    def run(tmp: Path, pipe: Any) -> Any:
        release = copy_release(run.source, tmp / "release")
        edit(release)
        return load_components(release, names)

    return run


def _full_disk(tmp: Path, pipe: Any) -> Any:
    from motif_video import atomic

    def no_space(file: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(file))

    original, atomic._fsync = atomic._fsync, no_space
    try:
        return atomic.write_text(tmp / "settings.json", "{}")
    finally:
        atomic._fsync = original


def _export_to_file(tmp: Path, pipe: Any) -> Any:
    from motif_video.training.export import export_transformer

    (tmp / "out").write_text("a file")
    return export_transformer(MotifVideoTransformer.from_preset("tiny"), tmp / "out")


def _metadata(data: bytes) -> Callable[[Path, Any], Any]:
    from motif_video.training.dcp_reader import read_metadata

    def run(tmp: Path, pipe: Any) -> Any:
        (tmp / ".metadata").write_bytes(data)
        return read_metadata(tmp)

    return run


CASES: list[tuple[str, Callable[[Path, Any], Any], type, str]] = [
    ("prompt-int", _call(prompt=123), TypeError, "prompt must be a string or a list of strings, got int"),
    ("prompt-list-int", _call(prompt=["a", 5]), TypeError, "prompts must be strings, got int"),
    ("prompt-not-utf8", _call(prompt="a\udcff"), ValueError, "prompt is not valid UTF-8"),
    ("negative-not-utf8", _call(negative_prompt="\udcff"), ValueError, "negative_prompt is not valid UTF-8"),
    ("generator-str", _call(generator="seed"), TypeError, "generator must be a torch.Generator"),
    ("generators-too-many", _call(generator=[torch.Generator()] * 3), ValueError, "3 generators for 1 videos"),
    ("height-str", _call(height="32"), TypeError, "height must be an integer, got '32'"),
    ("steps-float", _call(num_inference_steps=2.5), TypeError, "num_inference_steps must be an integer"),
    ("steps-0", _call(num_inference_steps=0), ValueError, r"num_inference_steps must be in \[1, 1000\]"),
    ("guidance-nan", _call(guidance_scale=math.nan), ValueError, "guidance_scale must be a finite number"),
    ("shift-0", _call(shift=0.0), ValueError, "shift must be > 0"),
    ("sequence-0", _call(max_sequence_length=0), ValueError, "max_sequence_length must be in"),
    ("videos-str", _call(num_videos_per_prompt="2"), TypeError, "num_videos_per_prompt must be an integer"),
    ("size-beyond-memory", _call(height=8192, width=8192, num_frames=2001), ValueError, "GiB of host memory"),
    ("settings-seed", _settings(seed=2**70), ValueError, "seed must fit in 64 bits"),
    ("settings-steps-float", _settings(steps=2.5), TypeError, "steps must be an integer"),
    ("settings-shift-negative", _settings(shift=-1.0), ValueError, "shift must be > 0"),
    ("config-layers", lambda t, p: MotifVideoConfig.from_dict({"num_layers": 10**6}), ValueError, "num_layers"),
    ("config-heads", lambda t, p: MotifVideoConfig.from_dict({"num_attention_heads": "four"}), TypeError, "'four'"),
    ("config-mlp-nan", lambda t, p: MotifVideoConfig(mlp_ratio=math.nan), ValueError, "mlp_ratio must be a finite"),
    ("weights-garbage", _transformer(_weights(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")), CheckpointError,
     r"diffusion_pytorch_model.safetensors: the safetensors header is not valid JSON"),
    ("weights-past-the-end", _transformer(_header_past_the_end), CheckpointError, "does not fit the file"),
    ("config-a-list", _transformer(lambda f: (f / "config.json").write_text("[]")), CheckpointError,
     r"config .*config.json must hold an object"),
    ("config-bad-json", _transformer(lambda f: (f / "config.json").write_text("{")), CheckpointError,
     r"config.json is not valid JSON"),
    ("config-nested", _transformer(lambda f: (f / "config.json").write_text("[" * 5000 + "]" * 5000)),
     CheckpointError, "nests deeper"),
    ("config-layers-file", _transformer(lambda f: edit_json(f / "config.json", num_layers=10**6)), CheckpointError,
     r"config.json: config.num_layers must be in \[0, 512\]"),
    ("recipe-lr-fast", _recipe(stage_defaults={"lr": "fast"}), ValueError, "lr must be a number, got 'fast'"),
    ("recipe-log-every-0", _recipe(log_every=0), ValueError, "log_every must be >= 1"),
    ("recipe-a-list", _load_recipe("[1, 2]"), ValueError, "must hold a table/object"),
    ("recipe-stages-a-table", _load_recipe('{"model": {"preset": "tiny"}, "stages": {"a": 1}}'), ValueError,
     "stages a list of tables"),
    ("release-auto-map", _release(lambda r: edit_json(r / "tokenizer" / "tokenizer_config.json",
                                                      auto_map={"AutoTokenizer": ["x.Evil", None]})),
     CheckpointError, "names remote code"),
    ("release-class", _release(lambda r: edit_json(r / "model_index.json", tokenizer=["transformers", "AutoModel"])),
     CheckpointError, "transformers.AutoModel, which motif-video does not load"),
    ("full-disk", _full_disk, OSError, r"No space left on device.*settings.json"),
    ("export-to-a-file", _export_to_file, ValueError, "output .*out is an existing file"),
    ("metadata-truncated", _metadata(b"\x80\x04\x95"), ValueError, r"\.metadata is truncated or corrupt"),
    ("metadata-not-dcp", _metadata(b"\x80\x04K\x01."), ValueError, "does not hold DCP metadata"),
    ("read-dev-zero", lambda t, p: __import__("motif_video.safe_read").safe_read.read_text("/dev/zero", "prompt file"),
     ValueError, "prompt file /dev/zero is larger than"),
    ("video-unwritable", lambda t, p: __import__("motif_video.core.video_io").core.video_io.export_video(
        torch.zeros(1, 16, 16, 3), "/proc/clip.mp4"), OSError, "/proc/clip.mp4"),
]  # fmt: skip


@pytest.mark.parametrize("run, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_api_input_raises_a_named_error_and_leaves_nothing(tmp_path, pipe, tiny_release, run, error, message):
    run.source = tiny_release  # for the release cases
    work = tmp_path / "w"
    work.mkdir()
    before = snapshot(tmp_path)
    with pytest.raises(error, match=message):
        run(work, pipe)
    after = snapshot(tmp_path)
    made = {k for k in after if k not in before}
    assert all(k.startswith(("w/transformer", "w/release", "w/r.json", "w/.metadata", "w/out")) for k in made), made
    assert not any(".tmp" in k for k in after)  # no temporary left by an interrupted write


def test_the_api_catalogue_is_large():
    assert len(CASES) >= 30
