"""Video/image file I/O: round trips per format, input layouts, errors, atomic writes, run records."""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from motif_video.core import video_io
from motif_video.core.run_record import record_path_for, to_jsonable, write_run_record
from motif_video.core.video_io import export_video, load_image, read_video, video_info


def gradient_video(frames: int = 6, height: int = 32, width: int = 48) -> np.ndarray:
    """(F, H, W, 3) float in [0, 1]: red ramps along x, green along y, blue with time (smooth, so codecs keep it)."""
    y = np.linspace(0.0, 1.0, height)[:, None].repeat(width, 1)
    x = np.linspace(0.0, 1.0, width)[None, :].repeat(height, 0)
    return np.stack([np.stack([x, y, np.full_like(x, (f + 1) / (frames + 1))], -1) for f in range(frames)])


def to_u8(video: np.ndarray) -> np.ndarray:
    return (video * 255).round().astype(np.uint8)


def mean_abs_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("fps", [24, Fraction(24000, 1001), 30, 8.0])
def test_mp4_round_trip_exact_fps_and_count(tmp_path, fps):
    video = gradient_video()
    out = export_video(video, tmp_path / "out.mp4", fps=fps)
    frames, read_fps = read_video(out)
    assert out == tmp_path / "out.mp4" and listing(tmp_path) == ["out.mp4"]
    assert frames.shape == (6, 32, 48, 3) and frames.dtype == np.uint8
    assert read_fps == float(fps)
    assert mean_abs_error(frames, to_u8(video)) < 10
    info = video_info(out)
    assert info == {"frames": 6, "height": 32, "width": 48, "fps": float(fps), "codec": "h264"}


def test_mp4_float_fps_snaps_to_ntsc_fraction(tmp_path):
    _, fps = read_video(export_video(gradient_video(frames=3), tmp_path / "a.mp4", fps=24000 / 1001))
    assert fps == float(Fraction(24000, 1001))


def test_mp4_odd_size_is_padded_by_edge_replication(tmp_path):
    video = to_u8(gradient_video(height=31, width=47))
    frames, _ = read_video(export_video(video, tmp_path / "odd.mp4"))
    assert frames.shape == (6, 32, 48, 3)
    assert mean_abs_error(frames[:, :31, :47], video) < 10
    # the padding repeats the last row/column
    assert mean_abs_error(frames[:, 31, :47], video[:, 30]) < 10
    assert mean_abs_error(frames[:, :31, 47], video[:, :, 46]) < 10


def test_webm_keeps_odd_size(tmp_path):
    video = to_u8(gradient_video(frames=4, height=31, width=47))
    frames, fps = read_video(export_video(video, tmp_path / "odd.webm", fps=Fraction(24000, 1001)))
    assert frames.shape == (4, 31, 47, 3)
    assert fps == float(Fraction(24000, 1001))
    assert mean_abs_error(frames, video) < 10
    assert video_info(tmp_path / "odd.webm")["frames"] == 4


def test_gif_round_trip(tmp_path):
    video = to_u8(gradient_video(frames=5, height=31, width=47))
    out = export_video(video, tmp_path / "out.gif", fps=25)
    frames, fps = read_video(out)
    assert frames.shape == (5, 31, 47, 3) and fps == 25.0
    assert mean_abs_error(frames, video) < 10
    with Image.open(out) as im:
        assert im.info["loop"] == 0  # loop forever
        assert im.info["duration"] == 40
    assert video_info(out) == {"frames": 5, "height": 31, "width": 47, "fps": 25.0, "codec": "gif"}


def test_gif_repeated_frames_are_expanded_on_read(tmp_path):
    # Pillow merges identical consecutive frames into one longer frame; read_video must undo that.
    video = np.stack([np.full((8, 8, 3), v, np.uint8) for v in (0, 0, 0, 90, 180, 180)])
    frames, fps = read_video(export_video(video, tmp_path / "rep.gif", fps=10))
    assert fps == 10.0
    np.testing.assert_array_equal(frames[:, 0, 0, 0], [0, 0, 0, 90, 180, 180])


def test_png_dir_round_trip_is_lossless(tmp_path):
    video = to_u8(gradient_video(frames=3, height=31, width=47))
    out = export_video(video, str(tmp_path / "frames") + "/", fps=Fraction(24000, 1001))
    assert out == tmp_path / "frames" and out.is_dir()
    assert listing(out) == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    frames, fps = read_video(out)
    np.testing.assert_array_equal(frames, video)
    assert fps == float(Fraction(24000, 1001))
    assert video_info(out) == {"frames": 3, "height": 31, "width": 47, "fps": fps, "codec": "png"}


def test_png_dir_without_suffix_replaces_previous_frames(tmp_path):
    export_video(to_u8(gradient_video(frames=4)), tmp_path / "frames")
    video = to_u8(gradient_video(frames=2))
    export_video(video, tmp_path / "frames")
    assert listing(tmp_path) == ["frames"]
    np.testing.assert_array_equal(read_video(tmp_path / "frames")[0], video)


def test_png_dir_refuses_to_replace_a_directory_with_other_files(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="refusing to replace"):
        export_video(to_u8(gradient_video(frames=1)), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert listing(tmp_path) == ["mine"]


def test_foreign_png_dir_reads_with_nan_fps(tmp_path):
    for i in range(2):
        Image.new("RGB", (5, 3), (i * 100, 0, 0)).save(tmp_path / f"frame_{i}.png")
    frames, fps = read_video(tmp_path)
    assert frames.shape == (2, 3, 5, 3) and math.isnan(fps)


# ---------------------------------------------------------------------------------------------------- input layouts


def test_input_layouts_all_produce_the_same_frames(tmp_path):
    video = gradient_video(frames=2, height=9, width=11)
    expected = to_u8(video)
    inputs = {
        "float64": video,
        "float32": video.astype(np.float32),
        "uint8": expected,
        "tensor_float": torch.from_numpy(video).float(),
        "tensor_bf16": torch.from_numpy(expected).float().div(255).bfloat16(),
        "tensor_uint8": torch.from_numpy(expected),
        "pil": [Image.fromarray(f) for f in expected],
        "pil_rgba": [Image.fromarray(f).convert("RGBA") for f in expected],
    }
    for name, frames in inputs.items():
        out = export_video(frames, tmp_path / name)
        got, _ = read_video(out)
        tolerance = 1 if name in ("float32", "tensor_float", "tensor_bf16") else 0  # x.5 rounding, bf16 precision
        assert np.abs(got.astype(int) - expected).max() <= tolerance, name


def test_float_input_slightly_outside_range_is_clipped():
    video = np.zeros((1, 2, 2, 3))
    video[0, 0, 0] = [-0.01, 1.01, 0.5]
    np.testing.assert_array_equal(video_io.frames_to_uint8(video)[0, 0, 0], [0, 255, 128])


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((2, 3, 8, 8), np.float32), "channels-first"),
        (np.zeros((8, 8, 3), np.uint8), r"\(F, H, W, 3\)"),
        (np.zeros((0, 8, 8, 3), np.uint8), "no frames"),
        ([], "no frames"),
        (np.full((1, 2, 2, 3), -1.0), r"\(frames \+ 1\) / 2"),
        (np.full((1, 2, 2, 3), 200.0), "as uint8"),
        (np.full((1, 2, 2, 3), np.nan), "NaN"),
        (np.zeros((1, 2, 2, 3), np.int32), "dtype"),
        ([Image.new("RGB", (2, 2)), Image.new("RGB", (3, 2))], "same size"),
    ],
)
def test_bad_frames_are_rejected_before_anything_is_written(tmp_path, frames, message):
    with pytest.raises(ValueError, match=message):
        export_video(frames, tmp_path / "out.mp4")
    assert listing(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- path errors


def test_missing_parent_directory_says_what_to_change(tmp_path):
    with pytest.raises(
        ValueError, match=r"output directory .*nope does not exist: create it or choose another --output"
    ):
        export_video(gradient_video(frames=1), tmp_path / "nope" / "out.mp4")


def test_unknown_suffix_lists_supported_formats(tmp_path):
    with pytest.raises(ValueError, match=r"supported: \.mp4, \.webm, \.gif"):
        export_video(gradient_video(frames=1), tmp_path / "out.avi")
    assert listing(tmp_path) == []


@pytest.mark.parametrize(("fps", "quality"), [(0, 5), (-24, 5), (float("nan"), 5), (24, 11), (24, -1)])
def test_bad_fps_or_quality(tmp_path, fps, quality):
    with pytest.raises(ValueError, match="fps|quality"):
        export_video(gradient_video(frames=1), tmp_path / "out.mp4", fps=fps, quality=quality)


@pytest.mark.parametrize("name", ["missing.mp4", "corrupt.mp4", "corrupt.gif"])
def test_read_missing_or_corrupt_video(tmp_path, name):
    if name.startswith("corrupt"):
        (tmp_path / name).write_bytes(b"not a video")
    with pytest.raises(ValueError, match=f"cannot read video .*{name}"):
        read_video(tmp_path / name)


# ---------------------------------------------------------------------------------------------------- atomic writes


class Boom(RuntimeError):
    pass


def fail_on_call(n: int, real):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise Boom("encoder crashed")
        return real(*args, **kwargs)

    return wrapper


def test_mp4_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(video_io, "_encode_frame", fail_on_call(4, video_io._encode_frame))
    with pytest.raises(Boom):
        export_video(gradient_video(frames=6), tmp_path / "out.mp4")
    assert listing(tmp_path) == []


def test_crash_keeps_the_previous_file_intact(tmp_path, monkeypatch):
    out = export_video(gradient_video(frames=2), tmp_path / "out.gif", fps=10)
    before = out.read_bytes()

    def half_write(video, tmp, rate, quality):
        tmp.write_bytes(b"GIF89a partial")
        raise Boom("disk full")

    monkeypatch.setitem(video_io._WRITERS, ".gif", half_write)
    with pytest.raises(Boom):
        export_video(gradient_video(frames=4), out, fps=10)
    assert listing(tmp_path) == ["out.gif"] and out.read_bytes() == before


def test_png_dir_crash_mid_write_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(video_io, "_save_png", fail_on_call(3, video_io._save_png))
    with pytest.raises(Boom):
        export_video(gradient_video(frames=5), tmp_path / "frames")
    assert listing(tmp_path) == []


# ---------------------------------------------------------------------------------------------------- images


def test_load_image(tmp_path):
    Image.new("L", (4, 3), 7).save(tmp_path / "gray.png")
    image = load_image(tmp_path / "gray.png")
    assert image.mode == "RGB" and image.size == (4, 3) and image.getpixel((0, 0)) == (7, 7, 7)
    transparent = Image.new("RGBA", (2, 2), (0, 0, 0, 0))
    assert load_image(transparent).getpixel((0, 0)) == (255, 255, 255)  # composited onto white


@pytest.mark.parametrize(
    ("name", "content", "reason"), [("missing.png", None, "no such file"), ("bad.png", b"nope", "")]
)
def test_load_image_errors_are_one_line(tmp_path, name, content, reason):
    if content is not None:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=f"cannot read image .*{name}: {reason}") as error:
        load_image(tmp_path / name)
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------------------------------------------- run records


def test_record_path_for():
    assert record_path_for("runs/out.mp4") == Path("runs/out.json")
    assert record_path_for("runs/frames/") == Path("runs/frames.json")
    assert record_path_for(Path("runs/frames")) == Path("runs/frames.json")


def test_run_record_contents(tmp_path):
    video = export_video(gradient_video(frames=1), tmp_path / "out.mp4")
    settings = {
        "prompt": "a cat",
        "seed": 3,
        "dtype": torch.bfloat16,
        "device": torch.device("cpu"),
        "output": video,
        "size": (480, 832),
        "fps": Fraction(24000, 1001),
        "guidance": np.float32(5.0),
        "nested": {"tags": {"b"}, 1: float("inf")},
    }
    record_file = write_run_record(video, settings)
    assert record_file == tmp_path / "out.json"
    assert listing(tmp_path) == ["out.json", "out.mp4"]
    record = json.loads(record_file.read_text())
    assert record["settings"] == {
        "prompt": "a cat",
        "seed": 3,
        "dtype": "torch.bfloat16",
        "device": "cpu",
        "output": str(video),
        "size": [480, 832],
        "fps": "24000/1001",
        "guidance": 5.0,
        "nested": {"tags": ["b"], "1": "inf"},
    }
    env = record["environment"]
    assert env["torch"] == torch.__version__ and env["python"] and env["platform"]
    assert {"motif_video", "diffusers", "transformers", "cuda_device"} <= env.keys()
    assert record["created_utc"].endswith("+00:00")


def test_run_record_explicit_json_path_and_tensors(tmp_path):
    path = write_run_record(tmp_path / "custom.json", {"small": torch.arange(3), "big": torch.zeros(10, 10)})
    settings = json.loads(path.read_text())["settings"]
    assert settings == {"small": [0, 1, 2], "big": "Tensor(shape=[10, 10], dtype=torch.float32)"}
    assert to_jsonable(Path("a") / "b") == str(Path("a") / "b")
