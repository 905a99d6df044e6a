"""Video and image file I/O: write generated frames to mp4/webm/gif/png, read them back, load conditioning images.

Design:

* One entry point for writing, `export_video`, that picks the format from the path: `.mp4` (H.264 via PyAV), `.webm`
  (VP9 via PyAV), `.gif` (Pillow), or a path with no suffix / ending in `/` for a directory of `frame_00000.png`
  files. Every input layout (float or uint8 numpy, torch tensor, list of PIL images) is normalised once, by
  `frames_to_uint8`, into `frames: (F, H, W, 3) uint8`; the per-format writers only ever see that.
* Writes are atomic. A writer fills a hidden temporary file (or directory) beside the target, and only a finished
  result is moved onto `path` with `os.replace`; on any error, Ctrl-C included, the temporary is removed. A crash
  therefore never leaves a half-written video at `path`. `atomic_output` is that mechanism and is reused by
  `run_record`.
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
* png directory: the exact fps is kept in a `motif_video:fps` text chunk of every frame (fps is NaN when reading
  frames written by another tool). Replacing an existing directory is allowed only if it holds nothing but
  `frame_*.png` files, so a mistaken `--output ~/` can never delete anything else.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from PIL import Image, ImageOps, ImageSequence, PngImagePlugin

FrameInput = np.ndarray | torch.Tensor | Sequence[Image.Image] | Sequence[np.ndarray]

PNG_DIR = "<directory of frame_00000.png files>"
DEFAULT_QUALITY = 6.5  # crf 17 for mp4: visually lossless
_FPS_KEY = "motif_video:fps"
_FRAME_RE = re.compile(r"^frame_(\d+)\.png$")
# AVColorSpace tag of a decoded frame -> swscale matrix (BT.470BG and SMPTE 170M are both BT.601)
_SWS_COLORSPACE = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}


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
    if kind == PNG_DIR:
        _check_replaceable_frame_dir(target)
    with atomic_output(target, directory=kind == PNG_DIR) as tmp:
        writer(video, tmp, rate, quality)
    return target


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode a video written by `export_video` (or any mp4/webm/gif/png directory).

    Returns `frames: (F, H, W, 3) uint8` and fps (NaN for a png directory without our fps chunk).
    """
    source = Path(path)
    if not source.exists():
        raise ValueError(f"cannot read video {source}: no such file or directory")
    if not source.is_dir() and source.suffix.lower() != ".gif":
        return _read_av(source)
    try:
        return _read_png_dir(source) if source.is_dir() else _read_gif(source)
    except (OSError, SyntaxError) as e:  # Pillow: missing, truncated or corrupt image data
        raise ValueError(f"cannot read video {source}: {e}") from None


def video_info(path: str | os.PathLike) -> dict[str, Any]:
    """Frame count, size, fps and codec of a video, without decoding pixels (gif frames are decoded)."""
    source = Path(path)
    if not source.exists():
        raise ValueError(f"cannot read video {source}: no such file or directory")
    if source.is_dir():
        files = _frame_files(source)
        with Image.open(files[0]) as first:
            width, height = first.size
        return _info(len(files), height, width, _png_fps(files[0]), "png")
    if source.suffix.lower() == ".gif":
        with Image.open(source) as im:
            repeats, frame_ms = _gif_timing(im)
            return _info(sum(repeats), im.height, im.width, 1000 / frame_ms, "gif")
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        count = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        return _info(count, stream.height, stream.width, _stream_fps(stream), stream.codec_context.name)


def load_image(image: str | os.PathLike | Image.Image) -> Image.Image:
    """An RGB PIL image from a path or a PIL image.

    EXIF orientation is applied (phone photos come out upright); transparent pixels are composited onto white.
    A missing or unreadable file raises ValueError("cannot read image FILE: reason").
    """
    if isinstance(image, Image.Image):
        return _to_rgb(image)
    source = Path(image)
    if not source.exists():
        raise ValueError(f"cannot read image {source}: no such file")
    if source.is_dir():
        raise ValueError(f"cannot read image {source}: it is a directory")
    try:
        with Image.open(source) as im:
            im.load()
            return _to_rgb(ImageOps.exif_transpose(im))
    except Image.UnidentifiedImageError:
        raise ValueError(f"cannot read image {source}: not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt files, permission errors
        raise ValueError(f"cannot read image {source}: {e}") from None


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
            frames = np.stack([np.asarray(_to_rgb(f)) for f in frames])
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


@contextmanager
def atomic_output(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; move it onto `path` when the block succeeds, delete it otherwise.

    The parent directory must exist. With `directory=True` the temporary is an (empty) directory and an existing
    target directory is replaced (moved aside, then deleted once the new one is in place).
    """
    target = Path(path)
    _check_parent(target)
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
    if directory:
        tmp.mkdir()  # honours the umask, unlike tempfile.mkdtemp (0700)
    try:
        yield tmp
        if directory:
            _replace_dir(tmp, target)
        else:
            _fsync(tmp)
            os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


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
    info.add_text(_FPS_KEY, str(rate))
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


# ---------------------------------------------------------------------------------------------------- readers


def _read_av(source: Path) -> tuple[np.ndarray, float]:
    try:
        with av.open(str(source)) as container:
            stream = container.streams.video[0]
            frames = [_decode_frame(frame) for frame in container.decode(stream)]
            fps = _stream_fps(stream)
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"cannot read video {source}: {e}") from None
    if not frames:
        raise ValueError(f"cannot read video {source}: it has no frames")
    return np.stack(frames), fps


def _decode_frame(frame: av.VideoFrame) -> np.ndarray:
    """Decoded frame -> (H, W, 3) uint8 RGB, using the matrix and range the stream is tagged with.

    Explicit because older PyAV (14 and before) converts with BT.601 whatever the tags say (kept for untagged video).
    Matrix and range are passed by name: the enum classes behind them changed across PyAV versions, the names did not.
    """
    space = _SWS_COLORSPACE.get(frame.colorspace, "ITU601")
    color_range = "JPEG" if frame.color_range == 2 else "MPEG"  # AVCOL_RANGE_JPEG; unspecified means limited
    rgb = frame.reformat(format="rgb24", src_colorspace=space, src_color_range=color_range)
    return rgb.to_ndarray()


def _read_gif(source: Path) -> tuple[np.ndarray, float]:
    with Image.open(source) as im:
        repeats, frame_ms = _gif_timing(im)
        im.seek(0)
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(im)]
    video = np.stack([f for f, n in zip(frames, repeats) for _ in range(n)])
    return video, 1000 / frame_ms


def _gif_timing(im: Image.Image) -> tuple[list[int], int]:
    """How many video frames each stored gif frame stands for (Pillow merges repeats), and the frame time in ms."""
    durations = []
    for frame in ImageSequence.Iterator(im):
        durations.append(int(frame.info.get("duration") or 100))  # 100 ms: the de-facto browser default
    frame_ms = min(durations)
    return [max(1, round(d / frame_ms)) for d in durations], frame_ms


def _read_png_dir(source: Path) -> tuple[np.ndarray, float]:
    files = _frame_files(source)
    frames = [np.asarray(load_image(file)) for file in files]
    if len({f.shape for f in frames}) > 1:
        raise ValueError(f"cannot read video {source}: its frames have different sizes")
    return np.stack(frames), _png_fps(files[0])


def _frame_files(source: Path) -> list[Path]:
    numbered = [(int(m.group(1)), p) for p in source.iterdir() if (m := _FRAME_RE.match(p.name))]
    if not numbered:
        raise ValueError(f"cannot read video {source}: no frame_*.png files in the directory")
    return [p for _, p in sorted(numbered)]


def _png_fps(file: Path) -> float:
    with Image.open(file) as im:
        text = getattr(im, "text", {}).get(_FPS_KEY)
    return float(Fraction(text)) if text else math.nan


def _stream_fps(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else math.nan


def _info(frames: int, height: int, width: int, fps: float, codec: str) -> dict[str, Any]:
    return {"frames": frames, "height": height, "width": width, "fps": fps, "codec": codec}


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


def _check_replaceable_frame_dir(target: Path) -> None:
    if not target.exists():
        return
    if not target.is_dir():
        raise ValueError(f"output {target} is an existing file: a frame directory cannot replace it")
    foreign = [p.name for p in target.iterdir() if not _FRAME_RE.match(p.name)]
    if foreign:
        raise ValueError(
            f"output directory {target} holds files other than frame_*.png ({', '.join(sorted(foreign)[:3])}, ...): "
            "refusing to replace it; choose another --output"
        )


def _replace_dir(tmp: Path, target: Path) -> None:
    if not target.exists():
        os.replace(tmp, target)
        return
    aside = target.parent / f".{target.name}.{secrets.token_hex(4)}.old"
    os.replace(target, aside)
    os.replace(tmp, target)
    shutil.rmtree(aside, ignore_errors=True)


def _fsync(file: Path) -> None:
    """Flush the file to disk before it is renamed, so a power cut cannot leave an empty file at the target."""
    fd = os.open(file, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
