"""Read videos and images back: the reading half of `video_io` (`read_video`, `video_info`, `load_image`).

Design:

* `read_video` decodes what `video_io.export_video` writes (and any mp4 / webm / gif / png directory) into
  `frames: (F, H, W, 3) uint8` and the fps. mp4/webm frames are converted to RGB with the matrix and range the
  stream is tagged with (BT.709 for ours), so a round trip has no colour shift.
* gif: Pillow merges identical consecutive frames into one longer frame when writing; reading expands them again
  (the shortest frame time is one video frame).
* png directory: frames `frame_00000.png`, ... in number order; the exact fps comes from the `motif_video:fps` text
  chunk `export_video` stores in every frame (NaN for frames written by another tool).
* `load_image`: an upright RGB PIL image (EXIF orientation applied, transparency composited onto white).
* Errors are one-line `ValueError("cannot read video FILE: reason")` / `("cannot read image FILE: reason")`.
"""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageOps, ImageSequence

FPS_KEY = "motif_video:fps"  # png text chunk holding the exact fps
FRAME_RE = re.compile(r"^frame_(\d+)\.png$")
# AVColorSpace tag of a decoded frame -> swscale matrix (BT.470BG and SMPTE 170M are both BT.601)
_SWS_COLORSPACE = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}


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
        return to_rgb(image)
    source = Path(image)
    if not source.exists():
        raise ValueError(f"cannot read image {source}: no such file")
    if source.is_dir():
        raise ValueError(f"cannot read image {source}: it is a directory")
    try:
        with Image.open(source) as im:
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except Image.UnidentifiedImageError:
        raise ValueError(f"cannot read image {source}: not a recognised image format") from None
    except Image.DecompressionBombError as e:  # a small file that would decode to gigabytes of pixels
        raise ValueError(f"cannot read image {source}: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated / corrupt files, permission errors
        raise ValueError(f"cannot read image {source}: {e}") from None


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
    numbered = [(int(m.group(1)), p) for p in source.iterdir() if (m := FRAME_RE.match(p.name))]
    if not numbered:
        raise ValueError(f"cannot read video {source}: no frame_*.png files in the directory")
    return [p for _, p in sorted(numbered)]


def _png_fps(file: Path) -> float:
    with Image.open(file) as im:
        text = getattr(im, "text", {}).get(FPS_KEY)
    return float(Fraction(text)) if text else math.nan


def _stream_fps(stream: Any) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    return float(rate) if rate else math.nan


def _info(frames: int, height: int, width: int, fps: float, codec: str) -> dict[str, Any]:
    return {"frames": frames, "height": height, "width": width, "fps": fps, "codec": codec}


def to_rgb(image: Image.Image) -> Image.Image:
    """`image` as RGB; transparent pixels composited onto white."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


__all__ = ["FPS_KEY", "FRAME_RE", "load_image", "read_video", "to_rgb", "video_info"]
