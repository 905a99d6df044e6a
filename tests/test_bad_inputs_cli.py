"""A catalogue of bad command-line inputs: each is refused before any work with one line naming the flag, file or
field and what to change, exit 2, and the folder it was given is left exactly as it was."""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from hostile_helpers import copy_release, edit_json, error_line, replace_weights_with_pickle, snapshot
from motif_video.cli import main

GEN = ["generate", "--prompt", "a red ball", "--preset", "tiny", "--output", "{w}/clip.mp4"]
REL = ["generate", "--prompt", "a red ball", "--model", "{r}", "--output", "{w}/clip.mp4", "--num-frames", "5"]
FWD = ["forward", "--preset", "tiny"]
TRAIN = ["train", "--config", "{w}/recipe.toml", "--output", "{w}/run"]
PREP = ["prepare", "--manifest", "{w}/m.jsonl", "--model", "{r}", "--out", "{w}/shards", "--buckets", "1x32x32"]
RECIPE = """
log_every = 1
checkpoint_every = 2
tensorboard = false
[model]
preset = "tiny"
[[stages]]
name = "only"
steps = 3
[stages.sources.video]
path = "synthetic"
buckets = ["5x32x32"]
"""


def _write(name: str, data: str | bytes) -> Callable[[Path, Path | None], None]:
    def setup(w: Path, r: Path | None) -> None:
        path = Path(name.format(w=w, r=r))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data if isinstance(data, bytes) else data.encode())

    return setup


def _recipe(old: str, new: str) -> Callable[[Path, Path | None], None]:
    assert old in RECIPE
    return _write("{w}/recipe.toml", RECIPE.replace(old, new, 1))


def _config(**changes: object) -> Callable[[Path, Path | None], None]:
    return lambda w, r: edit_json(r / "transformer" / "config.json", **changes)


def _index(**changes: object) -> Callable[[Path, Path | None], None]:
    return lambda w, r: edit_json(r / "model_index.json", **changes)


def _pickled(component: str, name: str) -> Callable[[Path, Path | None], None]:
    return lambda w, r: replace_weights_with_pickle(r / component, name, w / "marker")


def _bomb_png(w: Path, r: Path | None) -> None:
    """A 300-byte PNG that claims 40000 x 40000 pixels: Pillow refuses it as a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    data = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    (w / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + data)


def _shard_index(name: str) -> Callable[[Path, Path | None], None]:
    def setup(w: Path, r: Path | None) -> None:
        folder = r / "transformer"
        (folder / "diffusion_pytorch_model.safetensors").rename(w / "x.safetensors")
        index = {"metadata": {}, "weight_map": {"proj_out.weight": name.format(w=w)}}
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))

    return setup


def _many_tensors(w: Path, r: Path | None) -> None:
    """A header listing 100,000 empty tensors (a million is the same refusal, only slower to write here)."""
    header = {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(100_000)}
    raw = json.dumps(header).encode()
    (r / "transformer" / "diffusion_pytorch_model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)


CASES: list[tuple[str, list[str], str, Callable | None]] = [
    # generate: options
    ("height-0", [*GEN, "--height", "0"], "height must be positive", None),
    ("height-negative", [*GEN, "--height", "-16"], "height must be positive", None),
    ("width-17", [*GEN, "--width", "17"], "multiple of 16", None),
    ("frames-10", [*GEN, "--num-frames", "10"], r"4k\+1", None),
    ("frames-0", [*GEN, "--num-frames", "0"], "num_frames must be positive", None),
    ("steps-0", [*GEN, "--steps", "0"], "steps must be positive", None),
    ("steps-huge", [*GEN, "--steps", "100000"], r"steps must be in \[1, 1000\]", None),
    ("fps-0", [*GEN, "--fps", "0"], r"--fps must be in \(0", None),
    ("fps-negative", [*GEN, "--fps", "-1"], r"--fps must be in \(0", None),
    ("shift-negative", [*GEN, "--shift", "-1"], "shift must be > 0", None),
    ("shift-nan", [*GEN, "--shift", "nan"], "shift must be a finite number", None),
    ("guidance-nan", [*GEN, "--guidance-scale", "nan"], "guidance_scale must be a finite number", None),
    ("guidance-negative", [*GEN, "--guidance-scale", "-1"], "guidance_scale must be >= 0", None),
    ("guidance-inf", [*GEN, "--guidance-scale", "inf"], "guidance_scale must be a finite number", None),
    ("apg-eta-nan", [*GEN, "--apg-eta", "nan"], "apg_eta must be a finite number", None),
    ("seed-70-bits", [*GEN, "--seed", str(2**70)], "seed must fit in 64 bits", None),
    ("seed-negative-70-bits", [*GEN, "--seed", str(-(2**70))], "seed must fit in 64 bits", None),
    ("correlation-1.5", [*GEN, "--noise-correlation", "1.5"], r"noise_correlation must lie in \[0, 1\]", None),
    ("correlation-nan", [*GEN, "--noise-correlation", "nan"], "noise_correlation must be a finite number", None),
    ("videos-0", [*GEN, "--num-videos-per-prompt", "0"], "num_videos_per_prompt must be at least 1", None),
    ("videos-huge", [*GEN, "--num-videos-per-prompt", "100000"], r"num_videos_per_prompt must be in \[1", None),
    ("size-beyond-memory", [*GEN, "--height", "8192", "--width", "8192", "--num-frames", "2001"], "GiB of host", None),
    ("device-bogus", [*GEN, "--device", "bogus"], "--device 'bogus' is not a device", None),
    ("device-cuda-7", [*GEN, "--device", "cuda:7"], "cuda", None),
    ("dtype-float64", [*GEN, "--dtype", "float64"], "unknown dtype 'float64'", None),
    ("offload-on-cpu", [*GEN, "--offload", "model", "--device", "cpu"], "needs --device cuda", None),
    # generate: prompts and input files
    ("prompt-blank", ["generate", "--prompt", "   ", *GEN[3:]], "empty prompt", None),
    ("prompt-not-utf8", ["generate", "--prompt", "a\udcffb", *GEN[3:]], "--prompt is not valid UTF-8", None),
    ("negative-not-utf8", [*GEN, "--negative-prompt", "\udcff"], "negative_prompt is not valid UTF-8", None),
    ("prompt-file-missing", ["generate", "--prompt-file", "{w}/none.txt", *GEN[3:]], "cannot read --prompt-file", None),
    ("prompt-file-not-utf8", ["generate", "--prompt-file", "{w}/p.txt", *GEN[3:]], "--prompt-file .* is not UTF-8",
     _write("{w}/p.txt", b"a red \xff ball\n")),
    ("prompt-file-dev-zero", ["generate", "--prompt-file", "/dev/zero", *GEN[3:]], "larger than 1,048,576", None),
    ("prompt-file-directory", ["generate", "--prompt-file", "{w}", *GEN[3:]], "is a directory", None),
    ("prompt-file-comments", ["generate", "--prompt-file", "{w}/p.txt", *GEN[3:]], "holds no prompt",
     _write("{w}/p.txt", "# only a comment\n\n")),
    ("image-missing", [*GEN, "--image", "{w}/none.png"], "cannot read image", None),
    ("image-bomb", [*GEN, "--image", "{w}/bomb.png"], "cannot read image .*(bomb|exceeds limit)", _bomb_png),
    ("image-text", [*GEN, "--image", "{w}/t.png"], "not a recognised image format", _write("{w}/t.png", "text")),
    # generate: output paths
    ("output-empty", [*GEN[:-2], "--output", ""], "--output is empty", None),
    ("output-directory", [*GEN[:-2], "--output", "{w}/d.mp4"], "is an existing directory",
     lambda w, r: (w / "d.mp4").mkdir()),
    ("output-unwritable", [*GEN[:-2], "--output", "/proc/clip.mp4"], "cannot write into /proc", None),
    ("output-avi", [*GEN[:-2], "--output", "{w}/clip.avi"], "unsupported output format", None),
    ("output-no-parent", [*GEN[:-2], "--output", "{w}/no/clip.mp4"], "does not exist", None),
    ("output-foreign-folder", [*GEN[:-2], "--output", "{w}/frames"], "holds files other than frame",
     _write("{w}/frames/notes.txt", "mine")),
    # generate: a release folder that is damaged or hostile
    ("model-missing", [*REL[:4], "{w}/none", *REL[5:]], "is not a folder", None),
    ("index-a-list", REL, "must hold an object", _write("{r}/model_index.json", "[1, 2]")),
    ("index-not-utf8", REL, "is not UTF-8", _write("{r}/model_index.json", b'{"a": "\xff"}')),
    ("index-nested", REL, "nests deeper", _write("{r}/model_index.json", "[" * 200_000 + "]" * 200_000)),
    ("index-class-unlisted", REL, "StableDiffusionPipeline, which motif-video does not load",
     _index(vae=["diffusers", "StableDiffusionPipeline"])),
    ("index-library-os", REL, "os.system, which motif-video does not load", _index(scheduler=["os", "system"])),
    ("index-defaults-typed", REL, "height must be an integer", _index(_motif_video_defaults={"height": "64"})),
    ("config-layers-1e6", REL, r"num_layers must be in \[0, 512\], got 1000000", _config(num_layers=10**6)),
    ("config-heads-four", REL, "num_attention_heads must be an integer, got 'four'",
     _config(num_attention_heads="four")),
    ("config-patch-string", REL, "patch_size must be an integer, got '2'", _config(patch_size="2")),
    ("config-truncated", REL, "not valid JSON", _write("{r}/transformer/config.json", '{"num_layers": 2,')),
    ("transformer-pickle", REL, "never loads pickled weights", _pickled("transformer", "diffusion_pytorch_model.bin")),
    ("vae-pickle", REL, "never loads pickled weights.*safetensors", _pickled("vae", "diffusion_pytorch_model.bin")),
    ("text-encoder-pickle", REL, "never loads pickled weights", _pickled("text_encoder", "pytorch_model.pth")),
    ("tokenizer-auto-map", REL, "remote code",
     lambda w, r: edit_json(r / "tokenizer" / "tokenizer_config.json", auto_map={"AutoTokenizer": ["x.Evil", None]})),
    ("text-encoder-auto-map", REL, "remote code",
     lambda w, r: edit_json(r / "text_encoder" / "config.json", auto_map={"AutoModel": "x.Evil"})),
    ("tokenizer-class-unlisted", REL, "tokenizer_class 'XLNetTokenizer'",
     lambda w, r: edit_json(r / "tokenizer" / "tokenizer_config.json", tokenizer_class="XLNetTokenizer")),
    ("shard-dot-dot", REL, "points outside the folder", _shard_index("../../x.safetensors")),
    ("shard-absolute", REL, "points outside the folder", _shard_index("{w}/x.safetensors")),
    ("header-100k-tensors", REL, "lists 100,000 tensors", _many_tensors),
    ("weights-garbage", REL, "not a safetensors file|safetensors header",
     _write("{r}/transformer/diffusion_pytorch_model.safetensors", b"\x01\x02")),
    # forward
    ("forward-height-0", [*FWD, "--height", "0"], "positive multiples of 16", None),
    ("forward-frames-6", [*FWD, "--num-frames", "6"], r"4k\+1", None),
    ("forward-text-0", [*FWD, "--text-tokens", "0"], "--text-tokens must be in", None),
    ("forward-device", [*FWD, "--device", "bogus"], "--device 'bogus' is not a device", None),
    ("forward-too-large", [*FWD, "--height", "65536", "--width", "65536", "--num-frames", "401"], "GiB", None),
    ("forward-layers-1e6", ["forward", "--model", "{r}/transformer"], "num_layers must be in",
     _config(num_layers=10**6)),
    # train
    ("train-output-file", [*TRAIN[:3], "--output", "{w}/f"], "is an existing file",
     lambda w, r: (_recipe("", "")(w, r), (w / "f").write_text("x"))),
    ("train-output-under-file", [*TRAIN[:3], "--output", "{w}/f/run"], "is a file, so no folder",
     lambda w, r: (_recipe("", "")(w, r), (w / "f").write_text("x"))),
    ("train-output-empty", [*TRAIN[:3], "--output", ""], "--output is required", _recipe("", "")),
    ("train-device", [*TRAIN, "--device", "bogus"], "--device 'bogus' is not a device", _recipe("", "")),
    ("recipe-list", [*TRAIN[:2], "{w}/r.json", *TRAIN[3:]], "must hold a table/object", _write("{w}/r.json", "[1]")),
    ("recipe-not-utf8", TRAIN, "recipe .* is not UTF-8", _write("{w}/recipe.toml", b"seed = 1 # \xff\n")),
    ("recipe-nested", [*TRAIN[:2], "{w}/r.json", *TRAIN[3:]], "nests deeper", _write("{w}/r.json", "[" * 10**5)),
    ("lr-fast", TRAIN, "lr must be a number, got 'fast'", _recipe("steps = 3", 'steps = 3\nlr = "fast"')),
    ("lr-nan", TRAIN, "lr must be a finite number", _recipe("steps = 3", "steps = 3\nlr = nan")),
    ("checkpoint-every-0", TRAIN, "checkpoint_every must be >= 1",
     _recipe("checkpoint_every = 2", "checkpoint_every = 0")),
    ("log-every-0", TRAIN, "log_every must be >= 1", _recipe("log_every = 1", "log_every = 0")),
    ("steps-2.5", TRAIN, "steps must be an integer, got 2.5", _recipe("steps = 3", "steps = 2.5")),
    ("steps-ten", TRAIN, "steps must be an integer, got 'ten'", _recipe("steps = 3", 'steps = "ten"')),
    ("ema-1.5", TRAIN, r"ema_decay must be in \[0.0, 1.0\)",
     _recipe("log_every = 1", "log_every = 1\nema_decay = 1.5")),
    ("grad-clip-0", TRAIN, "grad_clip must be > 0", _recipe("log_every = 1", "log_every = 1\ngrad_clip = 0")),
    ("warmup-negative", TRAIN, "warmup_steps must be >= 0", _recipe("steps = 3", "steps = 3\nwarmup_steps = -1")),
    ("seed-70-bits-recipe", TRAIN, "seed must be in", _recipe("log_every = 1", f"log_every = 1\nseed = {2**70}")),
    ("betas-1.5", TRAIN, "betas must be in", _recipe("log_every = 1", "log_every = 1\nbetas = [1.5, 0.9]")),
    ("batch-size-0", TRAIN, "batch_size must be >= 1",
     _recipe('buckets = ["5x32x32"]', 'buckets = ["5x32x32"]\nbatch_size = 0')),
    ("bucket-malformed", TRAIN, "must be FRAMESxHEIGHTxWIDTH", _recipe('["5x32x32"]', '["5xAx32"]')),
    ("source-missing", TRAIN, "is not a folder of shards", _recipe('"synthetic"', '"no/such/folder"')),
    ("model-config-1e6", TRAIN, "num_layers must be in",
     lambda w, r: (_recipe('preset = "tiny"', f'config = "{w}/c.json"')(w, r),
                   (w / "c.json").write_text('{"num_layers": 1000000}'))),
    # export
    ("export-checkpoint-missing", ["export", "--checkpoint", "{w}/none", "--output", "{w}/out"], "is not a folder",
     None),
    ("export-no-checkpoint", ["export", "--checkpoint", "{w}/run", "--output", "{w}/out"], "no complete checkpoint",
     lambda w, r: (w / "run").mkdir()),
    ("export-output-file", ["export", "--checkpoint", "{w}", "--output", "{w}/f"], "output .* is an existing file",
     _write("{w}/f", "x")),
    ("export-lora-alpha-nan", ["export", "--checkpoint", "{w}", "--output", "{w}/o", "--lora-alpha", "nan"],
     "lora_alpha must be a finite number", None),
    # prepare and plan
    ("prepare-samples-0", [*PREP, "--samples-per-shard", "0"], "samples_per_shard must be >= 1", None),
    ("prepare-stride-0", [*PREP, "--frame-stride", "0"], "frame_stride must be >= 1", None),
    ("prepare-text-0", [*PREP, "--max-text-tokens", "0"], "max_sequence_length must be in", None),
    ("prepare-device", [*PREP, "--device", "bogus"], "--device 'bogus' is not a device", None),
    ("prepare-dtype", [*PREP, "--dtype", "float64"], "dtype must be bfloat16 or float32", None),
    ("prepare-manifest-not-utf8", PREP, "manifest .* is not UTF-8", _write("{w}/m.jsonl", b'{"path": "\xff"}\n')),
    ("prepare-out-file", [*PREP[:5], "--out", "{w}/m.jsonl", *PREP[7:]], "--out .* is an existing file",
     _write("{w}/m.jsonl", '{"path": "a.png", "caption": "a red ball"}\n')),
    ("plan-world-0", ["plan", "--data", "{w}", "--world-size", "0", "--out", "{w}/p"], "--world-size must be >= 1",
     None),
    ("plan-moves-negative", ["plan", "--data", "{w}", "--world-size", "1", "--out", "{w}/p", "--moves", "-1"],
     "--moves must be >= 0", None),
    ("plan-data-missing", ["plan", "--data", "{w}/none", "--world-size", "1", "--out", "{w}/p"], "is not a folder",
     None),
]  # fmt: skip


@pytest.mark.parametrize("argv, message, setup", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, tiny_release, capsys, argv, message, setup):
    work = tmp_path / "w"
    work.mkdir()
    needs_release = any("{r}" in a for a in argv)
    release = copy_release(tiny_release, tmp_path / "release") if needs_release else None
    if setup is not None:
        setup(work, release)
    if "prepare" in argv and not (work / "m.jsonl").exists():
        (work / "m.jsonl").write_text('{"path": "a.png", "caption": "a red ball"}\n')
    before = snapshot(tmp_path)
    argv = [a.format(w=work, r=release) for a in argv]
    assert main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert __import__("re").search(message, line), line
    assert snapshot(tmp_path) == before  # nothing written, nothing left behind
    assert not (work / "marker").exists()  # no pickle in the folder was ever loaded


def test_the_catalogue_is_large():
    assert len(CASES) >= 60


def test_a_real_process_prints_one_line_for_a_hostile_release(tmp_path, tiny_release):
    """Out of process too: no traceback, exit 2, for a release whose tokenizer asks for remote code."""
    import subprocess
    import sys

    release = copy_release(tiny_release, tmp_path / "release")
    (release / "tokenizer" / "evil.py").write_text(f"open({str(tmp_path / 'marker')!r}, 'w')\n")
    edit_json(release / "tokenizer" / "tokenizer_config.json", auto_map={"AutoTokenizer": ["evil.Evil", None]})
    out = tmp_path / "clip.mp4"
    argv = [sys.executable, "-m", "motif_video", "generate", "--prompt", "x", "--model", str(release)]
    proc = subprocess.run([*argv, "--output", str(out)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(__import__("sys").path)})  # fmt: skip
    assert proc.returncode == 2 and "remote code" in error_line(proc.stderr)
    assert not out.exists() and not (tmp_path / "marker").exists()
