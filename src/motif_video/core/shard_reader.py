"""Run-time reader of one rank's shards: bucket-homogeneous batches with a rolling shuffle and exact resume.

The run-time half of the report's offline bucket-balanced sampler (Motif-Video 2B, arXiv 2604.16503): each rank
reads the shards its plan (`sampler_plan.py`) gave it, one after another, shuffles through a rolling window of 4096
samples, and trains on batches that hold a single bucket.

Design:

* Reading: shards are streamed in plan order with Python's `tarfile` (mode "r|", no seeking), one sample at a time
  (its `.json` and `.safetensors` members, in either order; other members are ignored). The JSON is decoded with
  `SampleMeta.from_json` and the tensors with `safetensors.torch.load`.
* Errors, not skips: a sample that cannot be decoded, lacks a member or a required tensor, or a tar that cannot be
  read raises `ShardReadError` naming the shard and the key. Silently skipping would change which samples every
  later batch holds, and a prepared shard set is supposed to be valid (re-run `prepare` on the named shard).
* Shuffle: a reservoir-style buffer of `shuffle_window` samples. Once full, each new sample replaces a uniformly
  chosen buffered one, which moves on to its bucket's pool; at the end of the epoch the buffer is drained in random
  order. As soon as a bucket's pool holds `batch_sizes[bucket]` samples they are emitted as one batch. At the end of
  an epoch leftover pools are dropped (`drop_last`) or emitted as short batches, in bucket order; every epoch is
  self-contained. Memory is about `shuffle_window` decoded samples plus the pools.
* Randomness: one `random.Random` per epoch, seeded from `numpy.random.SeedSequence([seed, rank, epoch])`; the
  same (shards, seed, rank) always yields the same batches, and each epoch reshuffles differently.
* Exact resume: the reader is a state machine that advances one sample per step and is only observed between
  batches. `state_dict()` records (epoch, shard position, samples consumed in that shard, the RNG state, and the
  (shard, key) of every buffered and pooled sample, in order). `load_state_dict()` re-reads those samples from
  their shards, reopens the current shard and skips the consumed samples (their payloads are not decoded), so the
  restored reader yields exactly the batches the uninterrupted one would have. The state is plain JSON data.
* Collation (`collate`): latents (B, 16, F', h, w) stacked; text (B, L, D) right-padded with zeros to the longest
  with a bool mask (B, L); first_frame (B, 16, 1, h, w), teacher (B, N_t, D_t) stacked and image_tokens
  (B, L_img, D_img) padded with its own mask - each only when every sample of the batch has it, else None.
"""

from __future__ import annotations

import random
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as load_tensors

from motif_video.core.plan_files import PLAN_SUMMARY, read_plan
from motif_video.core.shards import (
    INDEX_SUFFIX,
    REQUIRED_TENSORS,
    Bucket,
    SampleMeta,
    ShardIndex,
    bucket_name,
    complete_shards,
    parse_bucket,
)

STATE_VERSION = 1
_MEMBERS = (".json", ".safetensors")


class ShardReadError(RuntimeError):
    """A shard or one of its samples cannot be read; the message names the shard and the key."""


@dataclass
class Sample:
    key: str
    shard: int  # position of its shard in the reader's shard list
    meta: SampleMeta
    tensors: dict[str, torch.Tensor]


@dataclass
class Batch:
    """One bucket-homogeneous batch."""

    bucket: Bucket
    latents: torch.Tensor  # (B, 16, F', h, w)
    text: torch.Tensor  # (B, L, D_text), zero right-padding
    text_mask: torch.Tensor  # (B, L) bool, True on real tokens
    meta: list[SampleMeta]
    first_frame: torch.Tensor | None = None  # (B, 16, 1, h, w)
    image_tokens: torch.Tensor | None = None  # (B, L_img, D_img), zero right-padding
    image_tokens_mask: torch.Tensor | None = None  # (B, L_img) bool
    teacher: torch.Tensor | None = None  # (B, N_t, D_t)

    @property
    def keys(self) -> list[str]:
        return [m.key for m in self.meta]


def _stack(samples: list[Sample], name: str) -> torch.Tensor:
    shapes = {tuple(s.tensors[name].shape) for s in samples}
    if len(shapes) > 1:
        detail = ", ".join(f"{s.key}: {tuple(s.tensors[name].shape)}" for s in samples)
        raise ShardReadError(f"'{name}' shapes differ within bucket {samples[0].meta.bucket}: {detail}")
    return torch.stack([s.tensors[name] for s in samples])


def _pad(samples: list[Sample], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_i, D) per sample -> (B, L_max, D) zero-padded on the right, and a (B, L_max) bool mask."""
    items = [s.tensors[name] for s in samples]
    if len({t.shape[1:] for t in items}) > 1 or items[0].dim() != 2:
        raise ShardReadError(f"'{name}' must be (L, D) with one D per batch: {[tuple(t.shape) for t in items]}")
    length = max(t.shape[0] for t in items)
    out = items[0].new_zeros(len(items), length, items[0].shape[1])
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    for i, t in enumerate(items):
        out[i, : t.shape[0]] = t
        mask[i, : t.shape[0]] = True
    return out, mask


def collate(samples: list[Sample]) -> Batch:
    """Samples of one bucket -> a Batch (shapes in the module docstring)."""
    text, text_mask = _pad(samples, "text")
    batch = Batch(samples[0].meta.bucket, _stack(samples, "latents"), text, text_mask, [s.meta for s in samples])
    has = {name: all(name in s.tensors for s in samples) for name in ("first_frame", "image_tokens", "teacher")}
    if has["first_frame"]:
        batch.first_frame = _stack(samples, "first_frame")
    if has["teacher"]:
        batch.teacher = _stack(samples, "teacher")
    if has["image_tokens"]:
        batch.image_tokens, batch.image_tokens_mask = _pad(samples, "image_tokens")
    return batch


def read_tar(path: Path, skip: int = 0, only: set[str] | None = None) -> Iterator[tuple[str, bytes, bytes]]:
    """Stream (key, json bytes, safetensors bytes) from a shard, in order.

    The first `skip` samples, and with `only` every sample whose key is not in it, are passed over without reading
    their payloads and not yielded."""
    done = 0
    try:
        with tarfile.open(path, mode="r|") as tar:
            key, parts = None, {}
            for member in tar:
                ext = next((e for e in _MEMBERS if member.isfile() and member.name.endswith(e)), None)
                if ext is None:
                    continue
                name = member.name[: -len(ext)]
                if parts and name != key:
                    missing = [e for e in _MEMBERS if e not in parts]
                    raise ShardReadError(f"shard {path}: sample {key!r} lacks its {missing} member")
                key = name
                wanted = done >= skip and (only is None or key in only)
                parts[ext] = tar.extractfile(member).read() if wanted else b""
                if len(parts) == len(_MEMBERS):
                    done += 1
                    if wanted:
                        yield key, parts[".json"], parts[".safetensors"]
                    key, parts = None, {}
            if parts:
                raise ShardReadError(f"shard {path}: sample {key!r} is truncated (members {sorted(parts)})")
    except tarfile.TarError as err:
        raise ShardReadError(f"shard {path}: unreadable tar after {done} samples ({err})") from err


def decode_sample(path: Path, shard: int, key: str, meta_bytes: bytes, tensor_bytes: bytes) -> Sample:
    """Decode one sample's members; any failure raises ShardReadError naming the shard and the key."""
    try:
        meta = SampleMeta.from_json(meta_bytes)
    except Exception as err:
        raise ShardReadError(f"shard {path}: sample {key!r}: cannot decode {key}.json ({err})") from err
    try:
        tensors = load_tensors(tensor_bytes)
    except Exception as err:
        raise ShardReadError(f"shard {path}: sample {key!r}: cannot decode {key}.safetensors ({err})") from err
    missing = [name for name in REQUIRED_TENSORS if name not in tensors]
    if missing:
        raise ShardReadError(f"shard {path}: sample {key!r}: {key}.safetensors lacks {missing}")
    return Sample(key=key, shard=shard, meta=meta, tensors=tensors)


def first_samples(folder: Path | str, count: int) -> list[Sample]:
    """The first `count` samples of a data folder's complete shards, in shard order (for analysis scripts)."""
    samples: list[Sample] = []
    for index, shard in enumerate(resolve_shards(folder, rank=0)):
        for key, meta, tensors in read_tar(shard):
            samples.append(decode_sample(shard, index, key, meta, tensors))
            if len(samples) == count:
                return samples
    return samples


def resolve_shards(source: Path | str | Sequence[Path | str], rank: int) -> list[Path]:
    """A plan folder (this rank's plan), a data folder (its complete shards), or a list of tar / index paths."""
    if isinstance(source, (str, Path)):
        folder = Path(source)
        if (folder / PLAN_SUMMARY).is_file():
            return [Path(p) for p in read_plan(folder, rank).shards]
        source = complete_shards(folder)
    shards = []
    for item in map(Path, source):
        if item.name.endswith(INDEX_SUFFIX):
            item = item.parent / ShardIndex.read(item).shard
        shards.append(item)
    return shards


class ShardReader:
    """Iterator of bucket-homogeneous `Batch`es over one rank's shards (see the module docstring).

    `num_epochs=None` loops forever; otherwise iteration stops after that many epochs."""

    def __init__(
        self,
        source: Path | str | Sequence[Path | str],
        rank: int,
        batch_sizes: dict[Bucket, int] | int,
        seed: int = 0,
        shuffle_window: int = 4096,
        drop_last: bool = True,
        num_epochs: int | None = None,
    ):
        self.shards = resolve_shards(source, rank)
        if not self.shards:
            raise ShardReadError(f"no shards to read for rank {rank} from {source}")
        self.rank, self.seed, self.batch_sizes = rank, seed, batch_sizes
        self.shuffle_window, self.drop_last, self.num_epochs = shuffle_window, drop_last, num_epochs
        self._stream: Iterator[tuple[str, bytes, bytes]] | None = None
        self._start_epoch(0)

    # --- the state machine -------------------------------------------------------------------------------------

    def _start_epoch(self, epoch: int) -> None:
        self.close()
        self.epoch, self._shard_pos, self._in_shard, self._epoch_batches = epoch, 0, 0, 0
        entropy = np.random.SeedSequence([self.seed, self.rank, epoch]).generate_state(4, dtype=np.uint64)
        self._rng = random.Random(int.from_bytes(entropy.tobytes(), "little"))
        self._buffer: list[Sample] = []
        self._pools: dict[Bucket, list[Sample]] = {}

    def _batch_size(self, bucket: Bucket) -> int:
        if isinstance(self.batch_sizes, int):
            return self.batch_sizes
        if bucket not in self.batch_sizes:
            raise KeyError(f"no batch size for bucket {bucket_name(bucket)}")
        return self.batch_sizes[bucket]

    def _route(self, sample: Sample) -> Batch | None:
        bucket = tuple(sample.meta.bucket)
        pool = self._pools.setdefault(bucket, [])
        pool.append(sample)
        if len(pool) < self._batch_size(bucket):
            return None
        del self._pools[bucket]
        return self._emit(pool)

    def _emit(self, samples: list[Sample]) -> Batch:
        self._epoch_batches += 1
        return collate(samples)

    def _read_one(self) -> Sample | None:
        """The next sample of the current shard, or None (and move to the next shard) when it is exhausted."""
        path = self.shards[self._shard_pos]
        if self._stream is None:
            self._stream = read_tar(path, skip=self._in_shard)
        item = next(self._stream, None)
        if item is None:
            self._stream, self._shard_pos, self._in_shard = None, self._shard_pos + 1, 0
            return None
        self._in_shard += 1
        return decode_sample(path, self._shard_pos, *item)

    def _step(self) -> Batch | None:
        """Advance by one sample (or one end-of-epoch action); returns a batch when one is complete."""
        if self._shard_pos < len(self.shards):
            sample = self._read_one()
            if sample is None:
                return None
            if self.shuffle_window <= 0:
                return self._route(sample)
            if len(self._buffer) < self.shuffle_window:
                self._buffer.append(sample)
                return None
            j = self._rng.randrange(len(self._buffer))
            out, self._buffer[j] = self._buffer[j], sample
            return self._route(out)
        if self._buffer:  # drain in random order
            j = self._rng.randrange(len(self._buffer))
            out = self._buffer[j]
            self._buffer[j] = self._buffer[-1]
            self._buffer.pop()
            return self._route(out)
        while self._pools:  # leftovers, in bucket order
            pool = self._pools.pop(min(self._pools))
            if not self.drop_last:
                return self._emit(pool)
        if self._epoch_batches == 0:
            raise ShardReadError(f"rank {self.rank}: epoch {self.epoch} yielded no batch (too few samples?)")
        self._start_epoch(self.epoch + 1)
        return None

    def __iter__(self) -> ShardReader:
        return self

    def __next__(self) -> Batch:
        while True:
            if self.num_epochs is not None and self.epoch >= self.num_epochs:
                raise StopIteration
            batch = self._step()
            if batch is not None:
                return batch

    def close(self) -> None:
        """Close the open shard (the reader can go on; the shard is reopened where it was)."""
        if self._stream is not None:
            self._stream.close()  # type: ignore[attr-defined]
            self._stream = None

    # --- exact resume ------------------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Plain JSON data from which `load_state_dict` restores this exact position."""
        version, internal, gauss = self._rng.getstate()
        return {
            "version": STATE_VERSION,
            "seed": self.seed,
            "rank": self.rank,
            "shards": [str(p) for p in self.shards],
            "epoch": self.epoch,
            "shard_pos": self._shard_pos,
            "in_shard": self._in_shard,
            "epoch_batches": self._epoch_batches,
            "rng": [version, list(internal), gauss],
            "buffer": [[s.shard, s.key] for s in self._buffer],
            "pools": [[bucket_name(b), [[s.shard, s.key] for s in pool]] for b, pool in self._pools.items()],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"reader state version {state.get('version')} != {STATE_VERSION}")
        # Shards compare by file name and order: the data folder may have moved (or be read through another mount
        # point or working directory) since the checkpoint, and its tar names still say which shards these are.
        mine = {"seed": self.seed, "rank": self.rank, "shards": [Path(p).name for p in self.shards]}
        theirs = {**state, "shards": [Path(p).name for p in state["shards"]]}
        for name, value in mine.items():
            if theirs[name] != value:
                raise ValueError(f"reader state was taken with a different {name}; cannot resume exactly")
        self._start_epoch(int(state["epoch"]))
        self._shard_pos, self._in_shard = int(state["shard_pos"]), int(state["in_shard"])
        self._epoch_batches = int(state["epoch_batches"])
        version, internal, gauss = state["rng"]
        self._rng.setstate((version, tuple(internal), gauss))
        pools = [(parse_bucket(name), refs) for name, refs in state["pools"]]
        refs = [tuple(r) for r in state["buffer"]] + [tuple(r) for _, pool in pools for r in pool]
        wanted: dict[int, set[str]] = {}
        for shard, key in refs:
            wanted.setdefault(int(shard), set()).add(key)
        found: dict[tuple[int, str], Sample] = {}
        for shard, keys in sorted(wanted.items()):
            path = self.shards[shard]
            for item in read_tar(path, only=keys):
                found[(shard, item[0])] = decode_sample(path, shard, *item)
        lost = [f"{self.shards[s]}:{k}" for s, k in refs if (int(s), k) not in found]
        if lost:
            raise ShardReadError(f"cannot resume: buffered samples are gone from their shards: {lost[:5]}")
        self._buffer = [found[(int(s), k)] for s, k in state["buffer"]]
        self._pools = {b: [found[(int(s), k)] for s, k in pool] for b, pool in pools}
