"""Synthetic training shards: tiny, real tar shards in the exact `schema.py` format, for tests and benchmarks.

Design:

* `write_shard` writes one shard the way `prepare` must: the tar goes to a temporary name and is renamed, then the
  `ShardIndex` is written last (so a shard without an index is incomplete). Each sample is two consecutive members,
  `<key>.json` (SampleMeta) then `<key>.safetensors`; the index records each sample's byte offset (the position of
  its first member header).
* `write_synthetic_shards` makes a deliberately skewed shard set: every shard has its own bucket mix drawn from a
  Zipf-like law (bucket at rank k of a per-shard permutation gets weight 1 / (k + 1) ** zipf_a, multiplied by a
  global Zipf weight so some buckets are rare overall), and shard sizes vary. This mimics real data, where a shard
  is written from one source at a time and so holds mostly one or two resolutions - the situation the report's
  bucket-balanced planner (Motif-Video 2B, arXiv 2604.16503, "offline bucket-balanced sampler") is for.
* Tensors are tiny: latents (16, F', h, w) with F' = (frames - 1) // 4 + 1, h = height // 8, w = width // 8 (the Wan
  VAE's strides); text (L, text_dim) with a random L; first_frame for videos; optional image_tokens and teacher.
* All randomness comes from one `numpy.random.default_rng(seed)`, so a shard set is a pure function of its arguments.
* `ensure_synthetic_shards` writes a whole set or nothing that counts: `synthetic.json` (the arguments) is written
  last, and a folder without it (a write killed midway) is emptied and written again, so a resumed run trains on
  exactly the data an uninterrupted one would.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as save_tensors

from motif_video import atomic, safe_read
from motif_video.atomic import atomic_path
from motif_video.core.shards import (
    INDEX_SUFFIX,
    SHARD_PATTERN,
    Bucket,
    IndexEntry,
    SampleMeta,
    ShardIndex,
    complete_shards,
)

TEXT_DIM = 8  # tiny stand-in for the text encoder width
IMAGE_DIM = 6  # tiny stand-in for the SigLIP width
TEACHER_DIM = 4  # tiny stand-in for the REPA teacher width


def latent_shape(bucket: Bucket) -> tuple[int, int, int, int]:
    """(16, F', h, w) of a bucket's latents under the Wan VAE strides (4 in time, 8 in space)."""
    frames, height, width = bucket
    return 16, (frames - 1) // 4 + 1, height // 8, width // 8


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_shard(
    directory: Path, index: int, samples: Sequence[tuple[SampleMeta, dict[str, torch.Tensor] | bytes]]
) -> Path:
    """Write `shard-<index>.tar` and its index (last) in `directory`; returns the index path.

    A sample's tensors may be given as raw bytes instead of a dict (used to write deliberately corrupt members)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tar_path = directory / SHARD_PATTERN.format(index=index)
    entries = []
    with atomic_path(tar_path) as tmp, tarfile.open(tmp, "w") as tar:
        for meta, tensors in samples:
            entries.append(IndexEntry(meta.key, tuple(meta.bucket), offset=tar.offset))
            _add_member(tar, meta.key + ".json", meta.to_json().encode())
            payload = tensors if isinstance(tensors, bytes) else save_tensors(tensors)
            _add_member(tar, meta.key + ".safetensors", payload)
    index_path = tar_path.with_name(tar_path.name[: -len(".tar")] + INDEX_SUFFIX)
    ShardIndex(shard=tar_path.name, entries=entries).write(index_path)
    return index_path


def synthetic_sample(
    key: str,
    bucket: Bucket,
    rng: np.random.Generator,
    image_tokens: bool = True,
    teacher: bool = True,
    text_dim: int = TEXT_DIM,
) -> tuple[SampleMeta, dict[str, torch.Tensor]]:
    """One tiny sample of `bucket` with random tensors (text length and image-token count vary per sample)."""
    is_image = bucket[0] == 1
    lat = latent_shape(bucket)
    tensors = {
        "latents": torch.from_numpy(rng.standard_normal(lat).astype(np.float32)),
        "text": torch.from_numpy(rng.standard_normal((int(rng.integers(3, 11)), text_dim)).astype(np.float32)),
    }
    if not is_image:
        tensors["first_frame"] = torch.from_numpy(rng.standard_normal((16, 1, lat[2], lat[3])).astype(np.float32))
    if image_tokens:
        n_img = int(rng.integers(4, 7))
        tensors["image_tokens"] = torch.from_numpy(rng.standard_normal((n_img, IMAGE_DIM)).astype(np.float32))
    if teacher:
        n_tok = lat[1] * (lat[2] // 2) * (lat[3] // 2)  # the token grid: latents in 2 x 2 patches
        tensors["teacher"] = torch.from_numpy(rng.standard_normal((n_tok, TEACHER_DIM)).astype(np.float32))
    meta = SampleMeta(key=key, bucket=bucket, caption=f"synthetic clip {key}", source="synthetic", is_image=is_image)
    return meta, tensors


def write_synthetic_shards(
    directory: Path,
    num_shards: int,
    buckets: Sequence[Bucket],
    samples_per_shard: tuple[int, int] = (8, 40),
    zipf_a: float = 1.5,
    seed: int = 0,
    image_tokens: bool = True,
    teacher: bool = True,
    text_dim: int = TEXT_DIM,
) -> list[Path]:
    """Write `num_shards` Zipf-skewed shards (sizes uniform in `samples_per_shard`, inclusive); returns index paths.

    Keys are `s<shard>-<sample>`, unique across the set."""
    rng = np.random.default_rng(seed)
    num_buckets = len(buckets)
    global_weight = 1.0 / np.arange(1, num_buckets + 1) ** zipf_a  # bucket 0 is the most common overall
    paths = []
    for s in range(num_shards):
        local = np.empty(num_buckets)
        local[rng.permutation(num_buckets)] = 1.0 / np.arange(1, num_buckets + 1) ** zipf_a
        p = local * global_weight
        size = int(rng.integers(samples_per_shard[0], samples_per_shard[1] + 1))
        choice = rng.choice(num_buckets, size=size, p=p / p.sum())
        samples = [
            synthetic_sample(f"s{s:05d}-{i:05d}", tuple(buckets[int(b)]), rng, image_tokens, teacher, text_dim)
            for i, b in enumerate(choice)
        ]
        paths.append(write_shard(directory, s, samples))
    return paths


SET_MARKER = "synthetic.json"


def ensure_synthetic_shards(
    directory: Path,
    num_shards: int,
    buckets: Sequence[Bucket],
    *,
    seed: int = 0,
    image_tokens: bool = True,
    teacher: bool = True,
    text_dim: int = TEXT_DIM,
) -> list[Path]:
    """The complete synthetic set of these arguments in `directory` (index paths): kept when its marker matches,
    else written from the start with the marker last."""
    directory = Path(directory)
    spec = dict(num_shards=num_shards, buckets=[list(b) for b in buckets], seed=seed, image_tokens=image_tokens,
                teacher=teacher, text_dim=text_dim)  # fmt: skip
    marker = directory / SET_MARKER
    if marker.is_file():
        try:
            if safe_read.read_json(marker, "synthetic set") == spec:
                return complete_shards(directory)
        except ValueError:
            pass  # a damaged marker: the set is written again
    if directory.is_dir():
        marker.unlink(missing_ok=True)
        for old in directory.glob("shard-*"):
            old.unlink()
        atomic.remove_stale(directory)
    write_synthetic_shards(directory, num_shards, buckets, seed=seed, image_tokens=image_tokens, teacher=teacher,
                           text_dim=text_dim)  # fmt: skip
    atomic.write_json(marker, spec)
    return complete_shards(directory)
