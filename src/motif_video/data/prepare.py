"""`motif-video prepare`: encode a manifest of videos/images into training shards (format: data/schema.py).

Inputs (manifest, caption variants, bucket assignment, resize/crop) live in data/manifest.py. Here:

- Encoding. VAE latents are the posterior MODE (`latent_dist.mode()`), normalised to model space: deterministic,
  so a resumed or re-sharded run writes identical bytes; the Wan posterior std is tiny, and training-time noise is
  the flow objective's job. Videos also store the first-frame latent, encoded alone as at inference
  (`encode_first_frames(sample=False)`). The text is the chosen caption variant, encoded alone (no padding, so
  L = its valid tokens and no result depends on batch neighbours). SigLIP image tokens of the first frame are
  optional. Models run in their stored dtype; tensors are cast to `dtype` (bf16 default) only to be stored.
- Sharding. Items are partitioned in manifest order: shard i holds items [i * S, (i + 1) * S). Rank r of world W
  writes the shards with i % W == r, so torchrun processes never touch the same file and the shard contents do not
  depend on W. A shard's tar is written to a temporary name and renamed, then its index is written (also atomic):
  a shard with an index is complete and skipped on resume; a tar without an index is rewritten. Tar members have
  fixed metadata (mtime 0), so a rewritten shard is byte-identical.
- Robustness. A missing file, an undecodable/corrupt one or a clip that fits no bucket is skipped and counted
  (key -> reason) in the report, which is written to `out_dir/prepare-report-rank-XXXXX.json` after every shard.
  Errors while ENCODING are not caught: they mean a broken model or setup (e.g. out of memory), not a bad file.
  Samples skipped in a complete shard are not retried on resume (delete that shard's index to retry); their
  reasons are carried over from the previous reports.
- Environment. The library takes rank/world as arguments; only the command (`cli.prepare`) reads
  torchrun's RANK, WORLD_SIZE and LOCAL_RANK.
"""

from __future__ import annotations

import io
import json
import logging
import tarfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from motif_video import atomic, bounds
from motif_video.core.devices import check_device
from motif_video.core.release import check_release
from motif_video.core.run_folder import check_output_folder
from motif_video.core.shards import (
    INDEX_SUFFIX,
    NULL_TEXT_FILE,
    SHARD_PATTERN,
    Bucket,
    IndexEntry,
    SampleMeta,
    ShardIndex,
    bucket_name,
)
from motif_video.data.manifest import (
    CaptionProbs,
    Clip,
    ManifestItem,
    choose_caption_variant,
    load_clip,
    parse_buckets,
    read_manifest,
)

logger = logging.getLogger(__name__)

REPORT_PATTERN = "prepare-report-rank-{rank:05d}.json"
SHOWN_FAILURES = 20  # skipped keys listed by `summary`; the report file has them all
MAX_SEQUENCE_LENGTH = 8192
STORAGE_DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32}


# ---------------------------------------------------------------------------------------------------- encoding


class SampleEncoder:
    """VAE, text encoder and (optionally) SigLIP of a release folder; turns one clip + caption into tensors."""

    def __init__(
        self,
        model_folder: str | Path,
        device: torch.device,
        dtype: torch.dtype,
        image_tokens: bool,
        teacher: tuple[str, str | None] | None = None,
    ) -> None:
        from motif_video.core.release import load_components

        # the frozen encoders only: the 2B transformer, the scheduler and the guider are not needed to encode data
        parts = load_components(str(model_folder), ("vae", "text_encoder", "tokenizer", "feature_extractor"))
        if parts["vae"] is None or parts["text_encoder"] is None or parts["tokenizer"] is None:
            raise ValueError(f"model {model_folder} needs vae/, text_encoder/ and tokenizer/ to prepare data")
        self.vision_tower = getattr(parts["text_encoder"], "vision_tower", None) if image_tokens else None
        if image_tokens and (self.vision_tower is None or parts["feature_extractor"] is None):
            raise ValueError(f"--image-tokens: model {model_folder} has no SigLIP vision tower / feature_extractor")
        self.vae = parts["vae"].to(device).eval()
        self.text_encoder = parts["text_encoder"].to(device).eval()
        self.tokenizer, self.feature_extractor = parts["tokenizer"], parts["feature_extractor"]
        self.device, self.dtype, self.image_tokens = device, dtype, image_tokens
        self.teacher = None
        if teacher is not None:  # REPA targets on the latent token grid (read with feature_source="shards")
            from motif_video.core.teachers import load_teacher, teacher_options

            kind, path = teacher
            self.teacher = load_teacher(kind, path, torch.float32, device, **teacher_options(kind))

    @torch.no_grad()
    def null_text(self, max_sequence_length: int) -> torch.Tensor:
        """The empty prompt's encoding (L, D): what prompt dropout trains on (written as null_text.safetensors)."""
        from motif_video.core.encoders import encode_text

        embeds, mask = encode_text(
            self.tokenizer, self.text_encoder, [""], max_sequence_length, self.device, torch.float32
        )
        return embeds[0][mask[0]].to("cpu", torch.float32).contiguous()

    @torch.no_grad()
    def encode(self, clip: Clip, caption: str, is_image: bool, max_sequence_length: int) -> dict[str, torch.Tensor]:
        """-> latents (16, F', h, w), text (L, D), first_frame (16, 1, h, w) if a video, image_tokens (L_img, D_img)."""
        from motif_video.core.encoders import encode_text, siglip_tokens
        from motif_video.core.latent_space import normalize_latents

        vae_dtype = next(self.vae.parameters()).dtype
        video = clip.pixels.permute(1, 0, 2, 3)[None].to(self.device, vae_dtype)  # (1, 3, F, H, W)
        latents = normalize_latents(self.vae, self.vae.encode(video).latent_dist.mode())[0]  # (16, F', h, w)
        embeds, mask = encode_text(
            self.tokenizer, self.text_encoder, [caption], max_sequence_length, self.device, torch.float32
        )
        out = {"latents": latents, "text": embeds[0][mask[0]]}  # text: (L_valid, D)
        first = clip.pixels[:1]  # (1, 3, H, W) in [-1, 1]
        if not is_image:  # (16, 1, h, w): Wan's VAE is causal in time, so its first latent frame IS the first
            # frame's own encoding (what `encode_first_frames` gives the pipeline at I2V; tested bit-exact)
            out["first_frame"] = latents[:, :1].clone()
        if self.image_tokens:
            out["image_tokens"] = siglip_tokens(self.vision_tower, self.feature_extractor, first, self.device)[0]
        if self.teacher is not None:
            from motif_video.core.teachers import latent_token_grid, teacher_targets

            grid = latent_token_grid(*video.shape[2:])
            out["teacher"] = teacher_targets(self.teacher, video.float(), grid)[0]  # (N, D_t)
        return {name: t.to("cpu", self.dtype).contiguous() for name, t in out.items()}


# ---------------------------------------------------------------------------------------------------- sharding


def shard_ranges(num_items: int, samples_per_shard: int) -> list[range]:
    """Shard i holds manifest items range(i * S, min((i + 1) * S, N))."""
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    return [range(i, min(i + samples_per_shard, num_items)) for i in range(0, num_items, samples_per_shard)]


def shards_of_rank(num_shards: int, rank: int, world_size: int) -> list[int]:
    """The shard numbers rank `rank` writes: i % world_size == rank."""
    return [i for i in range(num_shards) if i % world_size == rank]


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644  # fixed metadata: a rewritten shard is byte-identical
    tar.addfile(info, io.BytesIO(data))


@dataclass
class PrepareReport:
    """What one rank did; also written as `out_dir/prepare-report-rank-XXXXX.json`."""

    rank: int
    world_size: int
    manifest_items: int
    shards_total: int
    shards_written: list[str] = field(default_factory=list)
    shards_resumed: list[str] = field(default_factory=list)  # complete before this run: skipped
    samples_written: int = 0
    samples_resumed: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason (missing, undecodable, no bucket)
    bucket_counts: dict[str, int] = field(default_factory=dict)  # of the samples written in this run
    variant_counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def write(self, out_dir: Path) -> Path:
        path = out_dir / REPORT_PATTERN.format(rank=self.rank)
        return atomic.write_text(path, json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")

    def summary(self) -> str:
        lines = [
            f"rank {self.rank}/{self.world_size}: {len(self.shards_written)} shards written, "
            f"{len(self.shards_resumed)} already complete (of {self.shards_total} in all)",
            f"samples: {self.samples_written} written, {self.samples_resumed} resumed, {len(self.failed)} skipped",
            f"buckets: {json.dumps(self.bucket_counts, sort_keys=True)}",
            f"caption variants: {json.dumps(self.variant_counts, sort_keys=True)}",
        ]
        shown = sorted(self.failed.items())[:SHOWN_FAILURES]
        lines += [f"  skipped {key}: {reason}" for key, reason in shown]
        if len(self.failed) > len(shown):
            lines.append(f"  ... {len(self.failed) - len(shown)} more in {REPORT_PATTERN.format(rank=self.rank)}")
        return "\n".join(lines)


@dataclass(frozen=True)
class SampleSettings:
    """How every sample is made; identical on all ranks."""

    buckets: list[Bucket]
    seed: int = 0  # the caption-variant draw
    caption_probs: CaptionProbs = field(default_factory=CaptionProbs)
    frame_stride: int = 1
    max_sequence_length: int = 512


def prepare(
    manifest: str | Path,
    model_folder: str | Path,
    out_dir: str | Path,
    buckets: list[Bucket] | str,
    samples_per_shard: int = 256,
    rank: int | None = None,
    world_size: int | None = None,
    seed: int = 0,
    *,
    caption_probs: CaptionProbs | None = None,
    frame_stride: int = 1,
    dtype: str | torch.dtype = "bfloat16",
    image_tokens: bool = False,
    max_sequence_length: int = 512,
    device: str | torch.device = "auto",
    teacher: tuple[str, str | None] | None = None,
) -> PrepareReport:
    """Encode this rank's shards of `manifest` into `out_dir` (see the module docstring); rank/world None: 0 of 1.

    teacher: (name, local folder or hub id or None) of a REPA teacher whose targets are stored per sample.
    Rank 0 also writes `null_text.safetensors` (the empty prompt's encoding, key `text`) once.
    Raises ValueError for bad arguments or a malformed manifest (before any model is loaded); bad input FILES
    are skipped and reported, never raised.
    """
    start = time.perf_counter()
    rank, world_size = (0, 1) if rank is None and world_size is None else (rank, world_size)
    if rank is None or world_size is None or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size (or neither), got rank={rank} world_size={world_size}")
    if bounds.integer("frame_stride", frame_stride) < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    bounds.integer("max_sequence_length", max_sequence_length, 1, MAX_SEQUENCE_LENGTH)
    bounds.integer("samples_per_shard", samples_per_shard, 1)
    bounds.seed("seed", seed)
    if str(device) != "auto":
        check_device(str(device))
    buckets = parse_buckets(buckets) if isinstance(buckets, str) else list(buckets)
    if not buckets:
        raise ValueError("give at least one bucket, e.g. 17x64x64")
    settings = SampleSettings(buckets, seed, caption_probs or CaptionProbs(), frame_stride, max_sequence_length)
    store_dtype = _storage_dtype(dtype)
    items = read_manifest(manifest)
    ranges = shard_ranges(len(items), samples_per_shard)
    out = check_output_folder(out_dir, "--out")
    if Path(model_folder).is_dir():  # the encoders' folders, checked before anything is written
        check_release(Path(model_folder), ("vae", "text_encoder", "tokenizer", "feature_extractor"))
    out.mkdir(parents=True, exist_ok=True)
    atomic.remove_stale(out)  # temporaries of shards a kill interrupted
    report = PrepareReport(rank, world_size, len(items), len(ranges))
    previous = _previous_failures(out)
    todo = []
    for i in shards_of_rank(len(ranges), rank, world_size):
        tar_path = out / SHARD_PATTERN.format(index=i)
        index_path = _index_path(tar_path)
        if index_path.is_file() and tar_path.is_file():
            report.shards_resumed.append(tar_path.name)
            report.samples_resumed += len(ShardIndex.read(index_path).entries)
            keys = {items[j].key for j in ranges[i]}
            report.failed.update({k: v for k, v in previous.items() if k in keys})  # their reasons still hold
        else:
            todo.append(i)
    null_path = out / NULL_TEXT_FILE
    if todo or (rank == 0 and not null_path.is_file()):
        encoder = SampleEncoder(model_folder, _device(device), store_dtype, image_tokens, teacher)
        if rank == 0 and not null_path.is_file():
            with atomic.atomic_path(null_path) as tmp:
                save_file({"text": encoder.null_text(max_sequence_length)}, str(tmp))
        for i in todo:
            _write_shard(out / SHARD_PATTERN.format(index=i), [items[j] for j in ranges[i]], encoder, settings, report)
            report.seconds = time.perf_counter() - start
            report.write(out)  # progress survives a kill
    report.seconds = time.perf_counter() - start
    report.write(out)
    return report


def _write_shard(
    tar_path: Path, items: list[ManifestItem], encoder: SampleEncoder, settings: SampleSettings, report: PrepareReport
) -> None:
    """Encode `items` into `tar_path`: tar under a temporary name, rename, then the index (= complete)."""
    from safetensors.torch import save as save_safetensors

    for stale in tar_path.parent.glob(f".{tar_path.stem}.*{atomic.TMP_SUFFIX}*"):
        stale.unlink(missing_ok=True)  # a killed run's temporaries: only this rank writes this shard
    entries: list[IndexEntry] = []
    with atomic.atomic_path(tar_path) as tmp, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for item in items:
            try:
                clip = load_clip(item, settings.buckets, settings.frame_stride)
            except Exception as err:  # decoders raise many types; a failure here means the FILE is unusable
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                report.failed[item.key] = reason
                logger.warning("skipping %s: %s", item.key, reason)
                continue
            variants = item.caption_variants()
            variant = choose_caption_variant(settings.seed, item.key, list(variants), settings.caption_probs)
            tensors = encoder.encode(clip, variants[variant], item.is_image, settings.max_sequence_length)
            meta = SampleMeta(
                key=item.key,
                bucket=clip.bucket,
                caption=variants[variant],
                caption_variant=variant,
                source=str(item.path),
                fps=clip.fps,
                is_image=item.is_image,
                extra={
                    "source_frames": clip.source_frames,
                    "source_size": list(clip.source_size),
                    "frame_stride": settings.frame_stride,
                    **({"manifest": item.extra} if item.extra else {}),
                },
            )
            entries.append(IndexEntry(item.key, clip.bucket, tar.offset))
            _add_member(tar, f"{item.key}.json", meta.to_json().encode())
            _add_member(tar, f"{item.key}.safetensors", save_safetensors(tensors))
            name = bucket_name(clip.bucket)
            report.bucket_counts[name] = report.bucket_counts.get(name, 0) + 1
            report.variant_counts[variant] = report.variant_counts.get(variant, 0) + 1
    ShardIndex(shard=tar_path.name, entries=entries).write(_index_path(tar_path))
    report.shards_written.append(tar_path.name)
    report.samples_written += len(entries)
    logger.info("wrote %s: %d samples", tar_path.name, len(entries))


def _index_path(tar_path: Path) -> Path:
    return tar_path.with_name(tar_path.stem + INDEX_SUFFIX)


def _previous_failures(out: Path) -> dict[str, str]:
    """key -> reason from every rank's earlier report (the world size may have changed since)."""
    failed: dict[str, str] = {}
    for path in sorted(out.glob("prepare-report-rank-*.json")):
        try:
            failed.update(json.loads(path.read_text()).get("failed", {}))
        except (OSError, ValueError, AttributeError, TypeError):
            continue  # an unreadable report only loses reasons, never shards
    return failed


def _storage_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in STORAGE_DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in STORAGE_DTYPES:
        return STORAGE_DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be bfloat16 or float32, got {dtype}")


def _device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto") from None
