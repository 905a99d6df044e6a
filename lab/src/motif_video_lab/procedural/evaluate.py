"""Score a generated clip against what its prompt asked for, from pixels alone (numpy only).

segment.py finds the background and, per frame, the object-sized blobs with their colour class and shape scores.
Here, across frames:

1. Background class: the nearest BACKGROUNDS colour (RGB distance) of the median of the per-frame backgrounds.
2. Objects are tracked by colour class (a scene's objects differ in colour): per frame the largest blob of each
   class; a track present in >= PRESENT_MIN of the frames is an object. Its shape is the argmax of the median shape
   IoUs over SHAPE_FRAMES evenly spaced frames; its size is the nearest of small / large in log half-extent, the
   half-extent following from the median area and the shape (circle pi r^2, square 4 r^2, triangle 2 r^2).
3. Motion: least-squares slope of each track's centroid over frames, in px per frame / u (u = min(H, W) / 64),
   averaged over the matched objects; |v| < STILL_MAX is still, otherwise the dominant axis gives the direction
   and |v| < FAST_MIN (the geometric mean of slow 1 and fast 2) is slow. Relation: argmax of (-dx, dx, -dy, dy)
   between the two matched objects' mean centroids.
4. Expected objects are matched to tracks by the assignment with the fewest weighted colour / shape / size
   mismatches (colour 4, shape 2, size 1; a missing object costs 7).

Checks (only for what the prompt states): background, count, color, shape, size (all objects right), direction,
speed (only when moving was asked), relation, and for videos consistency: every object present in >= STABLE_MIN of
the frames with area coefficient of variation <= MAX_AREA_CV, and the per-frame blob count equal to the object
count in >= STABLE_MIN of the frames. With no object found, motion is not credited (not even 'still'). Decisions
are argmax-type (nearest colour, best shape, dominant axis), so imperfect generations are judged by what they most
resemble, not by strict tolerances.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from motif_video_lab.procedural.captions import parse_prompt
from motif_video_lab.procedural.scene import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZES,
    ObjectPrompt,
    PromptSpec,
    SceneSpec,
    unit,
)
from motif_video_lab.procedural.segment import AREA_FACTOR, Blob, as_float_frames, find_blobs, nearest_name, shape_ious

SHAPE_FRAMES = 5  # a track's shape is decided on this many evenly spaced frames
STILL_MAX = 0.4  # px per frame at 64x64
FAST_MIN = math.sqrt(2.0)
PRESENT_MIN, STABLE_MIN, MAX_AREA_CV = 0.5, 0.9, 0.25
ATTRIBUTES = ("background", "count", "color", "shape", "size", "direction", "speed", "relation", "consistency")
_BG_NAMES, _BG_RGB = list(BACKGROUNDS), np.array(list(BACKGROUNDS.values()), dtype=np.float32)


@dataclass
class Track:
    color: str
    blobs: list[Blob]
    shape: str = ""
    size: str = ""
    velocity: tuple[float, float] = (0.0, 0.0)  # px per frame / u

    @property
    def centre(self) -> tuple[float, float]:
        return float(np.mean([b.cx for b in self.blobs])), float(np.mean([b.cy for b in self.blobs]))


@dataclass
class VideoScore:
    """Per-attribute booleans (only the attributes the prompt states) and what was measured."""

    checks: dict[str, bool]
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def all_correct(self) -> bool:
        return all(self.checks.values())


def _size_of(area: float, shape: str, u: float) -> str:
    radius = math.sqrt(max(area, 1e-6) / AREA_FACTOR[shape]) / u
    return min(SIZES, key=lambda s: abs(math.log(radius / SIZES[s])))


def largest_blobs(blobs: list[Blob]) -> dict[tuple[str, int], Blob]:
    """{(colour class, frame): the largest blob of that colour in that frame}: an object as tracks see it."""
    best: dict[tuple[str, int], Blob] = {}
    for blob in blobs:
        key = (blob.color, blob.frame)
        if key not in best or blob.area > best[key].area:
            best[key] = blob
    return best


def build_tracks(blobs: list[Blob], frames: int, u: float) -> list[Track]:
    """Objects: per colour class, the largest blob of each frame; kept if present in >= PRESENT_MIN of frames."""
    best = largest_blobs(blobs)
    tracks = []
    for color in COLORS:
        own = sorted((b for (c, _), b in best.items() if c == color), key=lambda b: b.frame)
        if len(own) < max(1, PRESENT_MIN * frames):
            continue
        track = Track(color, own)
        sample = [own[i] for i in np.unique(np.linspace(0, len(own) - 1, SHAPE_FRAMES).round().astype(int))]
        track.shape = SHAPES[int(np.argmax(np.median([shape_ious(b.window, u) for b in sample], axis=0)))]
        track.size = _size_of(float(np.median([b.area for b in own])), track.shape, u)
        if len(own) >= 2:
            t = np.array([b.frame for b in own], dtype=np.float64)
            vx = np.polyfit(t, [b.cx for b in own], 1)[0]
            vy = np.polyfit(t, [b.cy for b in own], 1)[0]
            track.velocity = (float(vx) / u, float(vy) / u)
        tracks.append(track)
    return sorted(tracks, key=lambda tr: -sum(b.area for b in tr.blobs))


def classify_motion(vx: float, vy: float) -> tuple[str, str | None]:
    """(direction, speed) from a velocity in px per frame at 64x64."""
    magnitude = math.hypot(vx, vy)
    if magnitude < STILL_MAX:
        return "still", None
    direction = ("right" if vx > 0 else "left") if abs(vx) >= abs(vy) else ("down" if vy > 0 else "up")
    return direction, "slow" if magnitude < FAST_MIN else "fast"


def classify_relation(first: Track, second: Track) -> str:
    (x0, y0), (x1, y1) = first.centre, second.centre
    scores = {"left_of": x1 - x0, "right_of": x0 - x1, "above": y1 - y0, "below": y0 - y1}
    return max(scores, key=scores.__getitem__)


def _match(expected: tuple[ObjectPrompt, ...], tracks: list[Track]) -> list[Track | None]:
    """The tracks (or None) for the expected objects, minimising weighted mismatches (colour 4, shape 2, size 1)."""

    def cost(obj: ObjectPrompt, track: Track | None) -> float:
        if track is None:
            return 7.0
        return 4.0 * (obj.color != track.color) + 2.0 * (obj.shape != track.shape) + 1.0 * (obj.size != track.size)

    padded: list[Track | None] = [*tracks, *([None] * len(expected))]
    best = min(
        itertools.permutations(range(len(padded)), len(expected)),
        key=lambda perm: (sum(cost(o, padded[i]) for o, i in zip(expected, perm)), perm),
    )
    return [padded[i] for i in best]


def score_video(frames: np.ndarray, expected: PromptSpec | SceneSpec | str) -> VideoScore:
    """frames: (T, H, W, 3) uint8 or float in [0, 1]; expected: what the prompt asks (a spec, or the prompt text)."""
    prompt = parse_prompt(expected) if isinstance(expected, str) else expected
    prompt = prompt.prompt() if isinstance(prompt, SceneSpec) else prompt
    video = as_float_frames(frames)
    num_frames, height, width, _ = video.shape
    u = unit(height, width)
    blobs, background, noise = find_blobs(video)
    tracks = build_tracks(blobs, num_frames, u)
    matched = _match(prompt.objects, tracks)
    found = [t for t in matched if t is not None] or tracks
    velocity = tuple(float(np.mean([t.velocity[i] for t in found])) if found else 0.0 for i in range(2))
    direction, speed = classify_motion(*velocity) if found else (None, None)  # no object: no motion to credit
    relation = classify_relation(matched[0], matched[1]) if len(matched) == 2 and None not in matched else None
    bg_name = nearest_name(np.median(background, axis=0), _BG_NAMES, _BG_RGB)

    checks: dict[str, bool] = {}
    if prompt.background is not None:
        checks["background"] = bg_name == prompt.background
    checks["count"] = len(tracks) == len(prompt.objects)
    checks["color"] = all(t is not None and t.color == o.color for o, t in zip(prompt.objects, matched))
    checks["shape"] = all(t is not None and t.shape == o.shape for o, t in zip(prompt.objects, matched))
    if any(o.size is not None for o in prompt.objects):
        checks["size"] = all(
            o.size is None or (t is not None and t.size == o.size) for o, t in zip(prompt.objects, matched)
        )
    if num_frames > 1 and prompt.direction is not None:
        checks["direction"] = direction == prompt.direction
        if prompt.direction != "still" and prompt.speed is not None:
            checks["speed"] = speed == prompt.speed
    if prompt.relation is not None:
        checks["relation"] = relation == prompt.relation
    if num_frames > 1:
        checks["consistency"] = _consistent(tracks, blobs, num_frames)
    details = {
        "background": bg_name,
        "background_rgb": [round(float(c), 1) for c in np.median(background, axis=0)],
        "noise": round(noise, 2),
        "objects": [
            {"color": t.color, "shape": t.shape, "size": t.size, "frames": len(t.blobs),
             "area": round(float(np.median([b.area for b in t.blobs])), 1),
             "fill": round(float(np.median([b.fill for b in t.blobs])), 3),
             "velocity": [round(v, 3) for v in t.velocity]}
            for t in tracks
        ],
        # objects[i] for each object the prompt asks for, in its order (None: nothing matched it)
        "matched": [next((i for i, t in enumerate(tracks) if t is m), None) for m in matched],
        "direction": direction,
        "speed": speed,
        "relation": relation,
    }  # fmt: skip
    return VideoScore(checks, details)


def _consistent(tracks: list[Track], blobs: list[Blob], frames: int) -> bool:
    if not tracks:
        return False
    for track in tracks:
        areas = np.array([b.area for b in track.blobs])
        if len(track.blobs) < STABLE_MIN * frames or areas.std() > MAX_AREA_CV * areas.mean():
            return False
    per_frame = np.bincount([b.frame for b in blobs], minlength=frames)
    return float(np.mean(per_frame == len(tracks))) >= STABLE_MIN


# ---------------------------------------------------------------------------------------------------- tables


@dataclass
class ScoreTable:
    """Per-attribute (correct, scored) counts over a set of videos."""

    counts: dict[str, tuple[int, int]]
    videos: int
    all_correct: int

    def accuracy(self, attribute: str) -> float:
        correct, total = self.counts.get(attribute, (0, 0))
        return correct / total if total else math.nan

    @property
    def overall(self) -> float:
        """Attributes correct over attributes scored, all videos pooled."""
        correct = sum(c for c, _ in self.counts.values())
        total = sum(t for _, t in self.counts.values())
        return correct / total if total else math.nan


def score_prompts(results: Sequence[VideoScore]) -> ScoreTable:
    counts = {name: (0, 0) for name in ATTRIBUTES}
    for result in results:
        for name, ok in result.checks.items():
            correct, total = counts[name]
            counts[name] = (correct + int(ok), total + 1)
    return ScoreTable({k: v for k, v in counts.items() if v[1]}, len(results), sum(r.all_correct for r in results))


def format_table(tables: ScoreTable | Mapping[str, ScoreTable]) -> str:
    """Markdown: one row per attribute, one column per table (e.g. {'train': ..., 'held-out': ...})."""
    named = {"accuracy": tables} if isinstance(tables, ScoreTable) else dict(tables)
    cell = lambda value: "-" if math.isnan(value) else f"{100 * value:.1f}%"  # noqa: E731
    lines = ["| attribute | " + " | ".join(named) + " |", "|---|" + "---:|" * len(named)]
    for name in ATTRIBUTES:
        if any(name in table.counts for table in named.values()):
            row = [f"{cell(t.accuracy(name))} ({t.counts.get(name, (0, 0))[1]})" for t in named.values()]
            lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines.append("| **attributes correct** | " + " | ".join(cell(t.overall) for t in named.values()) + " |")
    videos = [cell(t.all_correct / t.videos if t.videos else math.nan) for t in named.values()]
    lines.append("| **all correct (videos)** | " + " | ".join(videos) + " |")
    return "\n".join(lines)
