"""The training-shard format: what `motif-video prepare` writes and the trainer's reader reads.

Shards are plain tar files in WebDataset layout (samples are consecutive members sharing a key prefix):

    <key>.json          SampleMeta as JSON (bucket, frames, size, caption variant, source, ...)
    <key>.safetensors   tensors, all for ONE sample (no batch dim):
                          latents       (16, F', h, w)   normalised VAE latents (model space), bf16 or fp32
                          text          (L, D_text)      text-encoder states, L = valid tokens (no padding)
                          first_frame   (16, 1, h, w)    normalised latent of the first frame (video only)
                          image_tokens  (L_img, D_img)   SigLIP tokens of the first frame (optional)
                          teacher       (N_t, D_t)       REPA teacher features on the latent token grid (optional)

Next to each `shard-XXXXXX.tar` sits `shard-XXXXXX.index.json` (ShardIndex): one entry per sample with its key,
bucket and byte offset, so planners and readers never have to open the tar to know what is inside. A shard is
written to a temporary name and renamed, with its index written last: a shard without an index is incomplete
and is ignored (and rewritten by a resumed `prepare`).

A bucket is (frames, height, width) in PIXELS of the clip after resizing; images are frames = 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from motif_video import atomic, safe_read

SHARD_PATTERN = "shard-{index:06d}.tar"
INDEX_SUFFIX = ".index.json"
NULL_TEXT_FILE = "null_text.safetensors"  # the empty prompt's encoding, key `text` (L, D); prompt dropout
TENSOR_KEYS = ("latents", "text", "first_frame", "image_tokens", "teacher")
REQUIRED_TENSORS = ("latents", "text")
CAPTION_VARIANTS = ("long", "short", "first_sentence")

Bucket = tuple[int, int, int]  # (frames, height, width) in pixels


def bucket_name(bucket: Bucket) -> str:
    frames, height, width = bucket
    return f"{frames}x{height}x{width}"


def parse_bucket(name: str) -> Bucket:
    frames, height, width = (int(v) for v in name.split("x"))
    return frames, height, width


@dataclass
class SampleMeta:
    """The JSON member of one sample."""

    key: str
    bucket: Bucket
    caption: str
    caption_variant: str = "long"  # one of CAPTION_VARIANTS
    source: str = ""  # the input file it came from
    fps: float | None = None
    is_image: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        out = asdict(self)
        out["bucket"] = list(self.bucket)
        return json.dumps(out, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> SampleMeta:
        data = json.loads(text)
        data["bucket"] = tuple(data["bucket"])
        return cls(**data)


@dataclass
class IndexEntry:
    key: str
    bucket: Bucket
    offset: int = 0  # byte offset of the sample's first tar member header (for seeking; 0 if unknown)


@dataclass
class ShardIndex:
    """`shard-XXXXXX.index.json`: what a shard holds, written after the shard itself."""

    shard: str  # file name of the tar, relative to the index's folder
    entries: list[IndexEntry]

    def bucket_counts(self) -> dict[Bucket, int]:
        counts: dict[Bucket, int] = {}
        for entry in self.entries:
            counts[entry.bucket] = counts.get(entry.bucket, 0) + 1
        return counts

    def write(self, path: Path) -> None:
        payload = {
            "shard": self.shard,
            "entries": [dict(key=e.key, bucket=list(e.bucket), offset=e.offset) for e in self.entries],
        }
        atomic.write_text(path, json.dumps(payload))

    @classmethod
    def read(cls, path: Path) -> ShardIndex:
        data = safe_read.read_json(path, "shard index", max_bytes=2**28)
        safe_read.inside(Path(path).parent, data.get("shard"), "shard")  # the tar sits beside its index
        entries = [IndexEntry(e["key"], tuple(e["bucket"]), int(e.get("offset", 0))) for e in data["entries"]]
        return cls(shard=data["shard"], entries=entries)


def complete_shards(directory: Path) -> list[Path]:
    """Index files of the complete shards in `directory`, sorted (a tar without its index is incomplete)."""
    directory = Path(directory)
    indexes = sorted(directory.glob("shard-*" + INDEX_SUFFIX))
    return [p for p in indexes if (directory / ShardIndex.read(p).shard).is_file()]
