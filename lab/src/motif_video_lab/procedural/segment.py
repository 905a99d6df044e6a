"""From pixels to blobs: the background, the foreground components of each frame, and each one's colour and shape.

Per frame:

1. Background: the median colour of the frame's 2-pixel border (evaluate.py classifies the median over frames).
   Noise level: the median border distance to that colour.
2. Foreground: pixels farther than max(MIN_CONTRAST, NOISE_FACTOR * noise) from the frame's background, split into
   4-connected components (`label_components`, numpy only). A component's colour is the median of its core (pixels
   within 80% of its strongest contrast); its shape is re-thresholded at HALF contrast along (colour - background),
   which is unbiased under blur and anti-aliasing, in a luma-weighted space (chroma x CHROMA_WEIGHT) because mp4
   blurs chroma. Components smaller than MIN_AREA_PX (x u^2, u = min(H, W) / 64) are ignored.
3. Colour class = nearest COLORS entry (RGB distance). Shape (`shape_ious`): each candidate (circle, square,
   apex-up triangle) is drawn with the blob's area and centroid (render.signed_distance), blurred by each of
   BLUR_SIGMAS and cut at 0.5 like the mask, and compared with the half-contrast mask by IoU; the best IoU over the
   blurs is the shape's score. Whole-region evidence: a stray edge pixel, which would wreck a bounding-box feature,
   moves IoU by < 1%; the blurred templates keep a blurry square a square, although its cut loses the corners.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from motif_video_lab.procedural.render import signed_distance
from motif_video_lab.procedural.scene import COLORS, SHAPES, unit

MIN_CONTRAST = 48.0  # RGB distance; every object colour is >= 115 from every background
NOISE_FACTOR = 2.6  # x the median border distance: ~4 sigma of Gaussian noise (that median is ~1.54 sigma)
MIN_AREA_PX = 40.0  # at 64x64: 40% of the small triangle (98 px); mp4 chroma fringes reach ~25 px
MAX_COMPONENTS = 8  # largest components examined per frame (noise can make hundreds)
AREA_FACTOR = {"circle": math.pi, "square": 4.0, "triangle": 2.0}  # area = factor * r^2, r the half-extent
WINDOW_MARGIN = 3  # px around the mask where the shape templates are compared
BLUR_SIGMAS = (0.0, 1.0, 2.0, 3.0)  # templates are also compared blurred (px at 64x64): blurry outputs keep corners
_COLOR_NAMES, _COLOR_RGB = list(COLORS), np.array(list(COLORS.values()), dtype=np.float32)
# RGB -> (luma, weighted Cb, weighted Cr), BT.709. The half-contrast mask is taken in this space: mp4 (yuv420p)
# halves chroma resolution, so the luma edge is the sharp one (every palette colour differs in luma from every
# background by >= 42); chroma still counts, at CHROMA_WEIGHT, for objects that differ from the background mainly
# in hue.
CHROMA_WEIGHT = 0.3
_SHAPE_SPACE = np.array(
    [[0.2126, 0.7152, 0.0722], [-0.1146, -0.3854, 0.5], [0.5, -0.4542, -0.0458]], dtype=np.float32
) * np.array([[1.0], [CHROMA_WEIGHT], [CHROMA_WEIGHT]], dtype=np.float32)


@dataclass(frozen=True, eq=False)
class Blob:
    """One object-sized component in one frame."""

    frame: int
    color: str
    rgb: tuple[float, float, float]
    area: float  # px at half contrast
    cx: float
    cy: float
    fill: float  # area / bounding-box area (reported only)
    window: np.ndarray  # (h, w) bool: the half-contrast mask around the blob


def as_float_frames(frames: np.ndarray) -> np.ndarray:
    """(T, H, W, 3) or (H, W, 3), uint8 or float in [0, 1] -> (T, H, W, 3) float32 in [0, 255]."""
    video = np.asarray(frames)
    if video.ndim == 3:
        video = video[None]
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {video.shape}")
    if video.dtype == np.uint8:
        return video.astype(np.float32)
    if not np.issubdtype(video.dtype, np.floating):
        raise ValueError(f"frames must be uint8 or float in [0, 1], got {video.dtype}")
    return np.clip(video.astype(np.float32), 0.0, 1.0) * 255.0


def label_components(mask: np.ndarray) -> np.ndarray:
    """mask: (T, H, W) bool -> labels (T, H, W) int64, -1 off the mask; 4-connected within each frame."""
    big = np.int64(mask.size)
    labels = np.where(mask, np.arange(mask.size, dtype=np.int64).reshape(mask.shape), big)
    while True:
        new = labels.copy()
        np.minimum(new[:, 1:], labels[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], labels[:, 1:], out=new[:, :-1])
        np.minimum(new[:, :, 1:], labels[:, :, :-1], out=new[:, :, 1:])
        np.minimum(new[:, :, :-1], labels[:, :, 1:], out=new[:, :, :-1])
        new = np.where(mask, new, big)
        flat = new.ravel()
        new = np.where(mask, flat[np.minimum(new, big - 1)], big)  # pointer jumping: a label is a pixel index
        if np.array_equal(new, labels):
            return np.where(mask, labels, -1)
        labels = new


def nearest_name(rgb: np.ndarray, names: list[str], palette: np.ndarray) -> str:
    return names[int(np.argmin(np.linalg.norm(palette - rgb, axis=-1)))]


def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
    """(size, size) matrix G with G @ x = x blurred along axis 0 (zero outside; rows sum to 1 away from edges)."""
    offsets = np.arange(size, dtype=np.float32)
    weights = np.exp(-0.5 * ((offsets[:, None] - offsets[None, :]) / sigma) ** 2)
    return weights / (sigma * math.sqrt(2 * math.pi))


def shape_ious(mask: np.ndarray, u: float = 1.0) -> tuple[float, ...]:
    """mask: (h, w) bool window holding one object -> IoU with each of SHAPES of the same area and centroid.

    Each template is the shape's coverage, blurred by each of BLUR_SIGMAS (x u) and cut at 0.5 like the mask was;
    a shape's score is its best IoU over the blurs.
    """
    area = float(mask.sum())
    ys_in, xs_in = np.nonzero(mask)
    cy, cx = float(ys_in.mean()) + 0.5, float(xs_in.mean()) + 0.5
    ys = np.arange(mask.shape[0], dtype=np.float32)[:, None] + 0.5 - cy
    xs = np.arange(mask.shape[1], dtype=np.float32)[None, :] + 0.5 - cx
    blurs = [(_gaussian_matrix(mask.shape[0], s * u), _gaussian_matrix(mask.shape[1], s * u)) for s in BLUR_SIGMAS if s]
    ious = []
    for shape in SHAPES:
        r = math.sqrt(area / AREA_FACTOR[shape])
        shift = r / 3 if shape == "triangle" else 0.0  # a triangle's centroid lies r/3 below its bbox centre
        coverage = np.clip(0.5 - signed_distance(shape, xs, ys + shift, r), 0.0, 1.0)
        templates = [coverage >= 0.5] + [(gy @ coverage @ gx.T) >= 0.5 for gy, gx in blurs]
        ious.append(max(float((t & mask).sum() / max((t | mask).sum(), 1)) for t in templates))
    return tuple(ious)


def find_blobs(video: np.ndarray) -> tuple[list[Blob], np.ndarray, float]:
    """video: (T, H, W, 3) float in [0, 255] -> (blobs, per-frame background (T, 3), noise level)."""
    frames, height, width, _ = video.shape
    border = np.concatenate(
        [video[:, :2].reshape(frames, -1, 3), video[:, -2:].reshape(frames, -1, 3),
         video[:, :, :2].reshape(frames, -1, 3), video[:, :, -2:].reshape(frames, -1, 3)], axis=1
    )  # fmt: skip
    background = np.median(border, axis=1)  # (T, 3)
    noise = float(np.median(np.linalg.norm(border - background[:, None], axis=-1)))
    distance = np.linalg.norm(video - background[:, None, None], axis=-1)  # (T, H, W)
    labels = label_components(distance > max(MIN_CONTRAST, NOISE_FACTOR * noise))
    min_area = MIN_AREA_PX * unit(height, width) ** 2
    flat = labels.ravel()
    pixels = np.flatnonzero(flat >= 0)
    pixels = pixels[np.argsort(flat[pixels], kind="stable")]  # grouped by component
    ids, starts, counts = np.unique(flat[pixels], return_index=True, return_counts=True)
    blobs = []
    for t in range(frames):
        in_frame = np.flatnonzero((ids // (height * width) == t) & (counts >= min_area))
        for index in in_frame[np.argsort(-counts[in_frame])][:MAX_COMPONENTS]:
            _, ys, xs = np.unravel_index(pixels[starts[index] : starts[index] + counts[index]], labels.shape)
            blob = _measure(t, video[t, ys, xs], ys, xs, background[t], min_area)
            if blob is not None:
                blobs.append(blob)
    return blobs, background, noise


def _measure(t: int, rgb: np.ndarray, ys: np.ndarray, xs: np.ndarray, bg: np.ndarray, min_area: float) -> Blob | None:
    contrast = np.linalg.norm(rgb - bg, axis=-1)
    core = contrast >= 0.8 * np.percentile(contrast, 95)
    color = np.median(rgb[core], axis=0)
    axis = _SHAPE_SPACE @ (color - bg)
    half = (rgb - bg) @ _SHAPE_SPACE.T @ axis >= 0.5 * float(axis @ axis)  # half contrast along (colour - background)
    if half.sum() < min_area:
        return None
    ys, xs = ys[half], xs[half]
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    area, cx, cy = float(half.sum()), float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
    y0, x0 = top - WINDOW_MARGIN, left - WINDOW_MARGIN  # the window may reach past the frame: it is our array
    window = np.zeros((bottom + WINDOW_MARGIN - y0, right + WINDOW_MARGIN - x0), dtype=bool)
    window[ys - y0, xs - x0] = True
    return Blob(
        frame=t,
        color=nearest_name(color, _COLOR_NAMES, _COLOR_RGB),
        rgb=tuple(float(c) for c in color),
        area=area,
        cx=cx,
        cy=cy,
        fill=area / float((bottom - top) * (right - left)),
        window=window,
    )
