"""What `prepare` reads: the manifest, the caption-variant draw, and each file fitted to a bucket as a `Clip`.

A manifest is a `.jsonl` file (one JSON object per line) or a `.csv` file with a header. Fields:

    path            video or image file; relative paths are relative to the manifest's folder
    caption         the long caption (required, non-empty)
    caption_short   a short caption (optional)
    key             the sample key (optional; default: the row number, `%09d`); unique, no '.', '/' or spaces
    fps             overrides the frame rate read from the file (optional)

Any other field is kept verbatim in `SampleMeta.extra["manifest"]`. A malformed manifest (bad JSON, a missing
field, a duplicate key) raises ValueError naming the line, before any model is loaded: fixing the manifest is
cheap, discovering it after hours of encoding is not. Files that are missing or undecodable are not the
manifest's business: `prepare` skips and counts them.

Caption variants (schema.CAPTION_VARIANTS): `long` = caption, `short` = caption_short, `first_sentence` = the
long caption up to its first sentence end ('.', '!' or '?' followed by whitespace). A variant is available when
its text is non-empty and differs from the long caption (a one-sentence caption has no separate first sentence).
Each sample takes ONE variant, drawn with the configured probabilities renormalised over the available variants,
from a uniform number that is a pure function of (seed, key): u = sha256("seed:key") / 2**64. The draw therefore
does not depend on manifest order, rank, world size or which samples were resumed.

Buckets. A bucket is (frames, height, width) in pixels (H, W multiples of 16, frames 4k+1). A clip may use a
bucket whose frames fit in it at the frame stride s, i.e. (frames - 1) * s + 1 <= clip frames (an image has one
frame, so only 1-frame buckets fit). Among those it takes the closest aspect ratio (|log(ar_bucket / ar_clip)|),
then the most frames, then the area closest to the clip's. A clip that fits no bucket is skipped ("no bucket").

Pixels. Frames 0, s, 2s, ..., (frames - 1) * s are kept: the START of the clip at stride s, stored fps = source
fps / s (the manifest's fps, when given, overrides the file's). Each frame is scaled so it covers the bucket (area
interpolation when shrinking, bilinear when growing), center-cropped to the bucket size and mapped to [-1, 1].
Whole videos are decoded (`video_io.read_video`), then only the kept frames are resized, 16 at a time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from motif_video import safe_read
from motif_video.core.shards import CAPTION_VARIANTS, Bucket, parse_bucket

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
KNOWN_FIELDS = ("path", "caption", "caption_short", "key", "fps")
MAX_MANIFEST_BYTES = 2**30  # a manifest of millions of rows; a larger file is not one
_KEY_RE = re.compile(r"^[A-Za-z0-9_\-]+$")  # WebDataset splits member names at the first '.'
_SENTENCE_END = re.compile(r"[.!?](?=\s)")
_RESIZE_CHUNK = 16  # frames resized at a time: bounds the float copy of a long high-resolution clip


@dataclass(frozen=True)
class CaptionProbs:
    """Probabilities of the caption variants; renormalised over the variants a sample has."""

    long: float = 0.5
    short: float = 0.3
    first_sentence: float = 0.2

    def __post_init__(self) -> None:
        values = [self.long, self.short, self.first_sentence]
        if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
            raise ValueError(f"caption probabilities must be >= 0 with a positive sum, got {values}")

    def as_dict(self) -> dict[str, float]:
        return {"long": self.long, "short": self.short, "first_sentence": self.first_sentence}

    @classmethod
    def parse(cls, text: str) -> CaptionProbs:
        """'0.5,0.3,0.2' (long, short, first_sentence) -> CaptionProbs."""
        try:
            long, short, first = (float(v) for v in text.split(","))
        except ValueError:
            raise ValueError(f"caption probabilities must be three numbers 'long,short,first', got {text!r}") from None
        return cls(long, short, first)


@dataclass(frozen=True)
class ManifestItem:
    """One manifest row, validated; `path` is resolved against the manifest's folder."""

    key: str
    path: Path
    caption: str
    caption_short: str | None = None
    fps: float | None = None
    line: int = 0  # 1-based line (jsonl) or row (csv, header = 1), for messages
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_image(self) -> bool:
        return self.path.suffix.lower() in IMAGE_SUFFIXES

    def caption_variants(self) -> dict[str, str]:
        """The available variants, name -> text, in CAPTION_VARIANTS order."""
        variants = {"long": self.caption}
        if self.caption_short and self.caption_short != self.caption:
            variants["short"] = self.caption_short
        first = first_sentence(self.caption)
        if first and first != self.caption:
            variants["first_sentence"] = first
        return variants


def first_sentence(text: str) -> str:
    """Text up to and including the first '.', '!' or '?' that is followed by whitespace (3.5 is no end)."""
    text = text.strip()
    match = _SENTENCE_END.search(text)
    return text[: match.end()] if match else text


def key_uniform(seed: int, key: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, key): a counter-based generator."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64


def choose_caption_variant(seed: int, key: str, available: list[str], probs: CaptionProbs) -> str:
    """One of `available` drawn with `probs` renormalised over it, deterministic in (seed, key).

    If every available variant has probability 0, the first available one (in CAPTION_VARIANTS order) is taken.
    """
    names = [name for name in CAPTION_VARIANTS if name in available]
    if not names:
        raise ValueError(f"no caption variant available for key {key!r}")
    weights = [probs.as_dict()[name] for name in names]
    total = sum(weights)
    if total <= 0:
        return names[0]
    u = key_uniform(seed, key) * total
    cumulative = 0.0
    for name, weight in zip(names, weights):
        cumulative += weight
        if u < cumulative:
            return name
    return next(name for name, weight in zip(reversed(names), reversed(weights)) if weight > 0)  # float round-off


def read_manifest(path: str | Path) -> list[ManifestItem]:
    """Read and validate a `.jsonl` or `.csv` manifest (see the module docstring); ValueError if malformed."""
    source = Path(path)
    if not source.is_file():
        raise ValueError(f"manifest {source} does not exist")
    suffix = source.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows = _jsonl_rows(source)
    elif suffix == ".csv":
        rows = _csv_rows(source)
    else:
        raise ValueError(f"manifest {source} must be .jsonl or .csv, got {suffix or 'no suffix'}")
    items = [_item(row, line, index, source) for index, (line, row) in enumerate(rows)]
    if not items:
        raise ValueError(f"manifest {source} has no rows")
    seen: dict[str, int] = {}
    for item in items:
        if item.key in seen:
            raise ValueError(f"{source}:{item.line}: duplicate key {item.key!r} (first on line {seen[item.key]})")
        seen[item.key] = item.line
    return items


def _jsonl_rows(source: Path) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, text in enumerate(safe_read.read_text(source, "manifest", MAX_MANIFEST_BYTES).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{source}:{line}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{source}:{line}: expected a JSON object, got {type(row).__name__}")
        rows.append((line, row))
    return rows


def _csv_rows(source: Path) -> list[tuple[int, dict[str, Any]]]:
    text = safe_read.read_text(source, "manifest", MAX_MANIFEST_BYTES)
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "path" not in reader.fieldnames:
            raise ValueError(f"{source}: the csv header must name at least 'path' and 'caption'")
        # csv has no null: an empty cell is a missing optional field
        return [(reader.line_num, {k: v for k, v in row.items() if k and v not in (None, "")}) for row in reader]


def _item(row: dict[str, Any], line: int, index: int, source: Path) -> ManifestItem:
    where = f"{source}:{line}"
    path, caption = row.get("path"), row.get("caption")
    if not isinstance(path, str) or not path.strip():
        raise ValueError(f"{where}: 'path' must be a non-empty string")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"{where}: 'caption' must be a non-empty string")
    short = row.get("caption_short")
    if short is not None and not isinstance(short, str):
        raise ValueError(f"{where}: 'caption_short' must be a string")
    key = str(row["key"]) if row.get("key") is not None else f"{index:09d}"
    if not _KEY_RE.match(key):
        raise ValueError(f"{where}: key {key!r} may hold only letters, digits, '_' and '-'")
    fps = row.get("fps")
    if fps is not None:
        try:
            fps = float(fps)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: 'fps' must be a number, got {fps!r}") from None
        if not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"{where}: 'fps' must be positive, got {fps}")
    resolved = Path(path).expanduser()
    if not resolved.is_absolute():
        resolved = source.parent / resolved
    extra = {k: v for k, v in row.items() if k not in KNOWN_FIELDS}
    return ManifestItem(
        key=key,
        path=resolved,
        caption=caption.strip(),
        caption_short=short.strip() if short and short.strip() else None,
        fps=fps,
        line=line,
        extra=extra,
    )


# ---------------------------------------------------------------------------------------------------- clips


def parse_buckets(text: str) -> list[Bucket]:
    """'1x64x64,17x64x64' -> [(1, 64, 64), (17, 64, 64)]; ValueError for malformed or invalid sizes."""
    from motif_video.core.latent_space import check_video_size

    buckets: list[Bucket] = []
    for name in (part.strip() for part in text.split(",")):
        try:
            bucket = parse_bucket(name)
        except ValueError:
            raise ValueError(f"bucket {name!r} must be FRAMESxHEIGHTxWIDTH, e.g. 17x64x64") from None
        frames, height, width = bucket
        try:
            check_video_size(height, width, frames)
        except ValueError as err:
            raise ValueError(f"bucket {name}: {err}") from None
        if bucket not in buckets:
            buckets.append(bucket)
    return buckets


def assign_bucket(frames: int, height: int, width: int, buckets: list[Bucket], stride: int = 1) -> Bucket | None:
    """The bucket for a clip of `frames` frames of height x width (see the module docstring), or None."""
    fitting = [b for b in buckets if (b[0] - 1) * stride + 1 <= frames]
    if not fitting:
        return None
    aspect, area = math.log(width / height), math.log(width * height)

    def rank(b: Bucket) -> tuple[float, int, float]:
        return (round(abs(math.log(b[2] / b[1]) - aspect), 9), -b[0], abs(math.log(b[1] * b[2]) - area))

    return min(fitting, key=rank)


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """frames: (F, H, W, 3) uint8 -> (F, 3, height, width) float32 in [-1, 1], scaled to cover, center-cropped."""
    _, src_h, src_w, _ = frames.shape
    scale = max(height / src_h, width / src_w)
    new_h, new_w = max(height, round(src_h * scale)), max(width, round(src_w * scale))
    top, left = (new_h - height) // 2, (new_w - width) // 2
    out = torch.empty(frames.shape[0], 3, height, width)
    for start in range(0, frames.shape[0], _RESIZE_CHUNK):
        x = torch.tensor(frames[start : start + _RESIZE_CHUNK]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        if (new_h, new_w) != (src_h, src_w):
            kwargs: dict[str, Any] = {"mode": "area"} if scale < 1 else {"mode": "bilinear", "align_corners": False}
            x = torch.nn.functional.interpolate(x, size=(new_h, new_w), **kwargs)
        out[start : start + x.shape[0]] = x[:, :, top : top + height, left : left + width]
    return out.clamp_(-1.0, 1.0)


@dataclass
class Clip:
    """A decoded input fitted to its bucket: pixels (F, 3, H, W) in [-1, 1]."""

    pixels: torch.Tensor
    bucket: Bucket
    fps: float | None
    source_frames: int
    source_size: tuple[int, int]  # (H, W)


def load_clip(item: ManifestItem, buckets: list[Bucket], stride: int = 1) -> Clip:
    """Decode `item` and fit it to its bucket; ValueError (or a decoder's own error) if it cannot be used."""
    from motif_video.core.video_io import load_image, read_video

    if not item.path.exists():
        raise ValueError(f"missing: {item.path} does not exist")
    if item.is_image:
        video, fps = np.asarray(load_image(item.path))[None], None  # (1, H, W, 3)
    else:
        video, file_fps = read_video(item.path)  # (F, H, W, 3) uint8
        fps = item.fps or (file_fps if math.isfinite(file_fps) else None)
    count, src_h, src_w, _ = video.shape
    bucket = assign_bucket(count, src_h, src_w, buckets, stride)
    if bucket is None:
        raise ValueError(f"no bucket: {count} frames of {src_h}x{src_w} fit none at stride {stride}")
    kept = video[: (bucket[0] - 1) * stride + 1 : stride]  # (F_bucket, H, W, 3)
    pixels = resize_center_crop(kept, bucket[1], bucket[2])
    return Clip(pixels, bucket, fps / stride if fps else None, count, (src_h, src_w))
