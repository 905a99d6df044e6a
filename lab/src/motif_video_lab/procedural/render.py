"""Render a SceneSpec to frames: flat shapes on a flat background, anti-aliased by a 1-pixel coverage ramp.

Each shape is a signed distance d(x, y) in px (negative inside), evaluated at pixel centres (j + 0.5, i + 0.5); a
pixel's coverage is clip(0.5 - d, 0, 1), which is the exact area coverage for a straight edge at any angle up to a
small error, and the pixel is background * (1 - coverage) + colour * coverage. Shapes, with r the half-extent:

    circle    |p - c| - r
    square    max(|dx|, |dy|) - r                           (axis aligned, side 2r)
    triangle  max of the three edge half-planes, apex up:   (cx, cy - r), (cx - r, cy + r), (cx + r, cy + r),
              and of the square's distance, so no anti-aliasing ramp reaches past the 2r x 2r box at the tips

Every shape's bounding box is the 2r x 2r square centred on its position, so bbox fill ratios are pi/4, 1 and 1/2.
Motion is exact sub-pixel translation, so the pixel speed is exactly the spec's. All frames are drawn at once.
"""

from __future__ import annotations

import math

import numpy as np

from motif_video_lab.procedural.scene import BACKGROUNDS, COLORS, SceneSpec, fits, half_extent, trajectory

_INV_SQRT5 = 1.0 / math.sqrt(5.0)  # the triangle's slanted edges have normals (+-2, -1) / sqrt(5)


def check_size(num_frames: int, height: int, width: int) -> None:
    """The model's constraints: H and W multiples of 16, frames 4k + 1 (1 for an image)."""
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise ValueError(f"height and width must be positive multiples of 16, got {height}x{width}")
    if num_frames < 1 or (num_frames - 1) % 4:
        raise ValueError(f"num_frames must be 4k + 1 (1, 5, 9, 17, ...), got {num_frames}")


def signed_distance(shape: str, x: np.ndarray, y: np.ndarray, r: float) -> np.ndarray:
    """Signed distance in px to a shape of half-extent r centred at the origin; x, y: pixel offsets, any shape."""
    if shape == "circle":
        return np.hypot(x, y) - r
    if shape == "square":
        return np.maximum(np.abs(x), np.abs(y)) - r
    if shape == "triangle":
        slant = (2.0 * np.abs(x) - (y + r)) * _INV_SQRT5  # both slanted edges: x -> |x| mirrors one onto the other
        box = np.maximum(np.abs(x), np.abs(y)) - r  # inactive inside; stops the edge ramps bleeding past the tips
        return np.maximum(np.maximum(y - r, slant), box)
    raise ValueError(f"unknown shape {shape!r}")


def render(spec: SceneSpec, num_frames: int = 17, height: int = 64, width: int = 64) -> np.ndarray:
    """spec -> frames (T, H, W, 3) uint8. ValueError if the size is invalid or an object would leave the frame."""
    check_size(num_frames, height, width)
    if spec.image and num_frames != 1:
        raise ValueError(f"an image spec renders to num_frames=1, got {num_frames}")
    if not fits(spec, num_frames, height, width):
        raise ValueError(f"scene does not stay inside a {num_frames}x{height}x{width} clip: {spec}")
    centres = trajectory(spec, num_frames, height, width)  # (T, N, 2)
    ys = np.arange(height, dtype=np.float32)[None, :, None] + 0.5  # (1, H, 1)
    xs = np.arange(width, dtype=np.float32)[None, None, :] + 0.5  # (1, 1, W)
    video = np.empty((num_frames, height, width, 3), dtype=np.float32)
    video[:] = np.asarray(BACKGROUNDS[spec.background], dtype=np.float32)
    for index, obj in enumerate(spec.objects):
        cx = centres[:, index, 0].astype(np.float32)[:, None, None]  # (T, 1, 1)
        cy = centres[:, index, 1].astype(np.float32)[:, None, None]
        distance = signed_distance(obj.shape, xs - cx, ys - cy, half_extent(obj.size, height, width))  # (T, H, W)
        coverage = np.clip(0.5 - distance, 0.0, 1.0)[..., None]
        video += coverage * (np.asarray(COLORS[obj.color], dtype=np.float32) - video)
    return np.clip(np.rint(video), 0, 255).astype(np.uint8)
