"""Video file writing: generated frames to mp4/webm/gif/png (`export_video`); reading lives in `video_read`.

Design:

* One entry point for writing, `export_video`, that picks the format from the path: `.mp4` (H.264 via PyAV), `.webm`
  (VP9 via PyAV), `.gif` (Pillow), or a path with no suffix / ending in `/` for a directory of `frame_00000.png`
  files. Every input layout (float or uint8 numpy, torch tensor, list of PIL images) is normalised once, by
  `frames_to_uint8`, into `frames: (F, H, W, 3) uint8`; the per-format writers only ever see that.
* Writes are atomic (`motif_video.atomic.atomic_path`): a writer fills a hidden temporary file (or directory) beside the
  target, and only a finished result is moved onto `path`; on any error, Ctrl-C included, the temporary is
  removed. A crash therefore never leaves a half-written video at `path`.
* Exact frame rate. fps is held as a `Fraction` (`24`, `24000/1001`, a float such as `23.976` snapped to the nearest
  fraction with denominator <= 1001), the codec time base is `1/fps` and frame `i` has pts `i`, so a reader gets back
  exactly that fps and frame count.
* Colour: RGB is converted to limited-range BT.709 YUV and the stream is tagged BT.709, which is what players assume
  for HD video; `read_video` converts back with the tagged matrix, so a round trip has no colour shift.
* Odd sizes. H.264 in yuv420p (the pixel format every player decodes) needs even width and height: an odd frame is
  padded by one row/column on the bottom/right by edge replication, so the mp4 is `ceil_even(H) x ceil_even(W)` and
  the original pixels are untouched. VP9 (`.webm`) stores odd sizes as they are; gif and png have no constraint.
* gif: delays are stored in centiseconds, so the frame time is `10 * round(100 / fps)` ms (at least 20 ms, since
  browsers slow anything shorter to 100 ms): fps is exact only for 100/k (10, 20, 25, 50, ...). Pillow merges
  identical consecutive frames into one longer frame; `read_video` expands them again.
* png directory: the exact fps is kept in a `motif_video:fps` text chunk of every frame. Replacing an existing
  directory is allowed only if it holds nothing but `frame_*.png` files, so a mistaken `--output ~/` can never
  delete anything else.

`read_video`, `video_info` and `load_image` are re-exported from `video_read`, so this module stays the one import
for video files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image, PngImagePlugin

from motif_video.atomic import atomic_path, remove_stale
from motif_video.core.video_read import FPS_KEY, FRAME_RE, load_image, read_video, to_rgb, video_info

FrameInput = np.ndarray | torch.Tensor | Sequence[Image.Image] | Sequence[np.ndarray]

PNG_DIR = "<directory of frame_00000.png files>"
DEFAULT_QUALITY = 6.5  # crf 17 for mp4: visually lossless


# ---------------------------------------------------------------------------------------------------- public API


def export_video(
    frames: FrameInput, path: str | os.PathLike, fps: float | Fraction = 24, *, quality: float = DEFAULT_QUALITY
) -> Path:
    """Write `frames` to `path` atomically and return `path`.

    frames: (F, H, W, 3) float in [0, 1] or uint8, as a numpy array or torch tensor, or a list of PIL images.
    path: `.mp4`, `.webm`, `.gif`, or no suffix / trailing `/` for a directory of `frame_00000.png` files.
    fps: frames per second; an int, a `Fraction` (e.g. `Fraction(24000, 1001)`) or a float.
    quality: 0-10, higher is better (the scale of diffusers' `export_to_video`): mp4 uses
        `crf = int((1 - quality / 10) * 51)` (10 is lossless, which some players cannot decode), webm the same
        over VP9's 0-63. gif and png ignore it.
    """
    target, kind = _resolve_output(path)
    rate = fps_fraction(fps)
    if not 0 <= quality <= 10:
        raise ValueError(f"quality must be in [0, 10] (higher is better), got {quality}")
    video = frames_to_uint8(frames)  # (F, H, W, 3) uint8
    writer = _WRITERS[kind]
    _check_parent(target)
    if kind == PNG_DIR:
        _check_replaceable_frame_dir(target)
    remove_stale(target.parent, bases=(target.stem, target.name))  # a killed earlier write of this file
    with atomic_path(target, directory=kind == PNG_DIR) as tmp:
        writer(video, tmp, rate, quality)
    return target


def frames_to_uint8(frames: FrameInput) -> np.ndarray:
    """Normalise any accepted frame layout to `(F, H, W, 3) uint8` (float input is in [0, 1])."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = (frames if frames.dtype == torch.uint8 else frames.float()).numpy()
    elif isinstance(frames, (list, tuple)):
        if not frames:
            raise ValueError("no frames to write: got an empty list")
        if all(isinstance(f, Image.Image) for f in frames):
            sizes = {f.size for f in frames}
            if len(sizes) > 1:
                raise ValueError(f"all frames must have the same size, got {sorted(sizes)}")
            frames = np.stack([np.asarray(to_rgb(f)) for f in frames])
        else:
            frames = np.stack([np.asarray(f) for f in frames])
    array = np.asarray(frames)
    if array.ndim != 4 or array.shape[-1] != 3:
        hint = " (channels-first? permute to (F, H, W, 3))" if array.ndim == 4 and array.shape[1] == 3 else ""
        raise ValueError(f"frames must be (F, H, W, 3) channels-last RGB, got shape {tuple(array.shape)}{hint}")
    if array.shape[0] == 0 or array.shape[1] == 0 or array.shape[2] == 0:
        raise ValueError(f"no frames to write: got shape {tuple(array.shape)}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError("frames contain NaN or inf: the generation diverged; nothing was written")
    low, high = float(array.min()), float(array.max())
    if low < -0.1 or high > 1.1:
        raise ValueError(
            f"float frames must be in [0, 1], got values in [{low:.3f}, {high:.3f}]"
            + (": if they are in [-1, 1], pass (frames + 1) / 2" if low < 0 else "")
            + (": if they are in [0, 255], pass them as uint8" if high > 2 else "")
        )
    return np.ascontiguousarray((np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def fps_fraction(fps: float | Fraction) -> Fraction:
    """fps as an exact Fraction: ints and Fractions as given, floats snapped to a denominator <= 1001."""
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1001)
    if rate <= 0:
        raise ValueError(f"fps {fps!r} is too small")
    return rate


# ---------------------------------------------------------------------------------------------------- writers


def _write_av(codec: str, container_format: str, even_size: bool) -> Callable[..., None]:
    def write(video: np.ndarray, tmp: Path, rate: Fraction, quality: float) -> None:
        if even_size:
            video = pad_to_even(video)
        _, height, width, _ = video.shape
        max_crf = 51 if codec == "libx264" else 63
        options = {"crf": str(int((1 - quality / 10) * max_crf))}
        options.update({"preset": "medium"} if codec == "libx264" else {"b": "0", "cpu-used": "4", "row-mt": "1"})
        container_options = {"movflags": "+faststart"} if container_format == "mp4" else {}
        with av.open(str(tmp), "w", format=container_format, options=container_options) as container:
            stream = container.add_stream(codec, rate=rate, options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            context = stream.codec_context
            context.time_base = 1 / rate
            context.colorspace = context.color_primaries = context.color_trc = 1  # AVCOL_*_BT709
            context.color_range = 1  # MPEG (limited) range
            for index, frame in enumerate(video):
                yuv = _encode_frame(frame)
                yuv.pts = index
                container.mux(stream.encode(yuv))
            container.mux(stream.encode())  # flush delayed (B-)frames

    return write


def _encode_frame(frame: np.ndarray) -> av.VideoFrame:
    """frame: (H, W, 3) uint8 RGB -> limited-range BT.709 yuv420p VideoFrame."""
    rgb = av.VideoFrame.from_ndarray(frame, format="rgb24")
    return rgb.reformat(format="yuv420p", dst_colorspace="ITU709", dst_color_range="MPEG")


def pad_to_even(video: np.ndarray) -> np.ndarray:
    """video: (F, H, W, 3) -> (F, H + H % 2, W + W % 2, 3), the extra row/column copied from the edge."""
    _, height, width, _ = video.shape
    if height % 2 == 0 and width % 2 == 0:
        return video
    return np.pad(video, ((0, 0), (0, height % 2), (0, width % 2), (0, 0)), mode="edge")


def _gif_frame_ms(rate: Fraction) -> int:
    return 10 * max(2, round(100 / rate))


def _write_gif(video: np.ndarray, tmp: Path, rate: Fraction, quality: float) -> None:
    images = [Image.fromarray(frame) for frame in video]
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=_gif_frame_ms(rate), loop=0)


def _write_png_dir(video: np.ndarray, tmp: Path, rate: Fraction, quality: float) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text(FPS_KEY, str(rate))
    for index, frame in enumerate(video):
        _save_png(frame, tmp / f"frame_{index:05d}.png", info)


def _save_png(frame: np.ndarray, file: Path, info: PngImagePlugin.PngInfo) -> None:
    """frame: (H, W, 3) uint8."""
    Image.fromarray(frame).save(file, format="PNG", pnginfo=info)


_WRITERS: dict[str, Callable[[np.ndarray, Path, Fraction, float], None]] = {
    ".mp4": _write_av("libx264", "mp4", even_size=True),
    ".webm": _write_av("libvpx-vp9", "webm", even_size=False),
    ".gif": _write_gif,
    PNG_DIR: _write_png_dir,
}


# ---------------------------------------------------------------------------------------------------- helpers


def _resolve_output(path: str | os.PathLike) -> tuple[Path, str]:
    """The target path and its format key in `_WRITERS`; raises ValueError for unsupported suffixes."""
    text = os.fspath(path)
    target = Path(text)
    if target.name in ("", ".", ".."):
        raise ValueError(f"output {text!r} has no name: give a file name (out.mp4) or a new directory (frames/)")
    if text.endswith(("/", os.sep)) or not target.suffix:
        kind = PNG_DIR
    else:
        kind = target.suffix.lower()
    if kind not in _WRITERS:
        raise ValueError(
            f"unsupported output {target}: the format is chosen by the suffix; supported: .mp4, .webm, .gif, "
            "or a path without a suffix (or ending in /) for a directory of PNG frames"
        )
    if kind != PNG_DIR and target.is_dir():
        raise ValueError(f"output {target} is an existing directory: choose a file name for --output")
    return target, kind


def _check_parent(target: Path) -> None:
    parent = target.parent
    if not parent.is_dir():
        raise ValueError(f"output directory {parent} does not exist: create it or choose another --output")


def check_output(path: str | os.PathLike) -> Path:
    """Every check of an output path that writes nothing lasting, for a caller that must refuse before working: a
    supported name, an existing parent we can write into (probed with a file created and removed), and no
    directory it must not replace."""
    target, kind = _resolve_output(path)
    _check_parent(target)
    if kind == PNG_DIR:
        _check_replaceable_frame_dir(target)
    probe = target.with_name(f".{target.name}.{os.getpid()}.probe")
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"cannot write into {target.parent}: {err.strerror or err}") from None
    return target


def _check_replaceable_frame_dir(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"output {target} is an existing file: a frame directory cannot replace it")
    foreign = [p.name for p in target.iterdir() if not FRAME_RE.match(p.name)]
    if foreign:
        raise ValueError(
            f"output directory {target} holds files other than frame_*.png ({', '.join(sorted(foreign)[:3])}, ...): "
            "refusing to replace it; choose another --output"
        )


__all__ = [
    "DEFAULT_QUALITY",
    "PNG_DIR",
    "check_output",
    "export_video",
    "fps_fraction",
    "frames_to_uint8",
    "load_image",
    "pad_to_even",
    "read_video",
    "video_info",
]
