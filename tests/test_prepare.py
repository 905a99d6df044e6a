"""`prepare`: manifest -> shards in the schema format, robust to bad files, rank-disjoint, resumable, deterministic.

One tiny release and one small synthetic dataset (mp4 clips of 5-17 frames at 32-64 px, a png, a corrupt mp4 and a
missing path) are shared by the module. The reference output is written by two "ranks" (rank 0 and 1 of world 2,
called one after the other); the resume test rewrites one of its shards with world 1 and must get the same bytes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as load_safetensors

from motif_video.cli.prepare import add_prepare_parser
from motif_video.core.shards import SampleMeta, ShardIndex, complete_shards
from motif_video.data.manifest import (
    CaptionProbs,
    assign_bucket,
    choose_caption_variant,
    first_sentence,
    read_manifest,
    resize_center_crop,
)
from motif_video.data.prepare import REPORT_PATTERN, parse_buckets, prepare
from motif_video.models.config import get_preset

BUCKETS = "1x32x32,1x32x48,9x32x32,9x32x48,9x48x32,17x32x32"
SHARD_SIZE = 3
# name -> (frames, height, width), frames None for a png; the expected bucket follows
CLIPS = {
    "a": ((17, 32, 32), (17, 32, 32)),
    "b": ((9, 32, 48), (9, 32, 48)),
    "c": ((9, 48, 32), (9, 48, 32)),
    "d": ((13, 40, 40), (9, 32, 32)),  # 13 frames: 17 does not fit, the longest that does is 9
    "e": ((5, 32, 32), (1, 32, 32)),  # too short for any 9-frame bucket: a 1-frame "video"
    "f": ((11, 64, 48), (9, 48, 32)),  # 0.75 is closer to 0.667 than to 1
    "g": ((9, 36, 60), (9, 32, 48)),
    "img": ((None, 40, 56), (1, 32, 48)),
}
BAD = {"corrupt": "corrupt.mp4", "missing": "nowhere/missing.mp4"}
TEXT = {
    "a": ("A dog runs on the beach at sunset. The waves are calm.", "a dog runs"),
    "b": ("A red car drives down a busy street.", None),  # one sentence, no short caption: only "long"
    "c": ("Two people walk in a park. Trees move in the wind. It is autumn.", "people walk"),
}


def _frames(rng: np.random.Generator, frames: int, height: int, width: int) -> np.ndarray:
    """Smooth moving gradients plus a little noise: (F, H, W, 3) uint8."""
    y, x = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 255, size=3)
    out = np.stack([(3 * x + 2 * y + 7 * t)[..., None] * [1.0, 0.6, 0.3] + base for t in range(frames)])
    return (out % 256 + rng.normal(0, 4, out.shape)).clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from motif_video.core.video_io import export_video
    from motif_video.pipeline.tiny import save_tiny_release

    root = tmp_path_factory.mktemp("prepare")
    release = save_tiny_release(root / "release")
    media = root / "data" / "media"
    media.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for name, ((frames, height, width), _) in CLIPS.items():
        caption, short = TEXT.get(name, (f"A {name} scene with trees. The sky is blue.", None))
        if frames is None:
            Image.fromarray(_frames(rng, 1, height, width)[0]).save(media / f"{name}.png")
            path = f"media/{name}.png"
        else:
            export_video(_frames(rng, frames, height, width), media / f"{name}.mp4", fps=8)
            path = str(media / f"{name}.mp4") if name == "a" else f"media/{name}.mp4"  # absolute and relative
        rows.append({"key": name, "path": path, "caption": caption, "caption_short": short, "score": 0.5})
    (media / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(rng.integers(0, 256, 500, np.uint8)))
    for key, path in BAD.items():
        rows.insert(3, {"key": key, "path": f"media/{path}", "caption": "A bad file."})
    manifest = root / "data" / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = root / "ranks"
    reports = [
        prepare(manifest, release, out, BUCKETS, SHARD_SIZE, rank=rank, world_size=2, seed=0, device="cpu")
        for rank in (0, 1)
    ]
    return dict(root=root, release=release, manifest=manifest, out=out, reports=reports)


def _samples(tar_path: Path) -> dict[str, tuple[SampleMeta, dict[str, torch.Tensor], int]]:
    """key -> (meta, tensors, byte offset of its first member)."""
    samples: dict[str, dict] = {}
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            key, ext = member.name.split(".", 1)
            entry = samples.setdefault(key, {"offset": member.offset})
            entry[ext] = tar.extractfile(member).read()
    return {
        k: (SampleMeta.from_json(v["json"]), load_safetensors(v["safetensors"]), v["offset"])
        for k, v in samples.items()
    }


def _all_samples(out: Path) -> dict[str, tuple[SampleMeta, dict[str, torch.Tensor], int]]:
    samples = {}
    for tar_path in sorted(out.glob("shard-*.tar")):
        samples.update(_samples(tar_path))
    return samples


def _all_failed(world: dict) -> dict[str, str]:
    return {k: v for report in world["reports"] for k, v in report.failed.items()}


def test_writes_schema_shards_and_counts_bad_files(world: dict) -> None:
    out, reports = world["out"], world["reports"]
    n_shards = -(-(len(CLIPS) + len(BAD)) // SHARD_SIZE)
    assert [p.name for p in complete_shards(out)] == [f"shard-{i:06d}.index.json" for i in range(n_shards)]
    failed = _all_failed(world)
    assert set(failed) == set(BAD) and "missing" in failed["missing"]  # counted, not fatal
    assert sum(r.samples_written for r in reports) == len(CLIPS) and not any(r.shards_resumed for r in reports)
    for report in reports:
        assert json.loads((out / REPORT_PATTERN.format(rank=report.rank)).read_text())["failed"] == report.failed
    assert not list(out.glob(".*.tmp"))

    preset = get_preset("tiny")
    from motif_video.pipeline.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    samples = _all_samples(out)
    assert set(samples) == set(CLIPS)
    for index_path in complete_shards(out):
        index = ShardIndex.read(index_path)
        shard = _samples(out / index.shard)
        assert [e.key for e in index.entries] == list(shard)
        for entry in index.entries:
            assert entry.bucket == shard[entry.key][0].bucket and entry.offset == shard[entry.key][2]
    for key, (meta, tensors, _) in samples.items():
        (frames, height, width) = bucket = CLIPS[key][1]
        assert meta.bucket == bucket and meta.is_image == (key == "img") and meta.extra["manifest"] == {"score": 0.5}
        latents, text = tensors["latents"], tensors["text"]
        assert latents.shape == (16, (frames - 1) // 4 + 1, height // 8, width // 8)
        assert latents.dtype == torch.bfloat16 and torch.isfinite(latents.float()).all()
        assert text.shape == (len(tokenizer(meta.caption)["input_ids"]), preset.text_embed_dim)  # valid tokens only
        assert ("first_frame" in tensors) == (not meta.is_image) and "image_tokens" not in tensors
        if not meta.is_image:
            assert tensors["first_frame"].shape == (16, 1, height // 8, width // 8)
            assert torch.equal(tensors["first_frame"], latents[:, :1])  # see the VAE test below
            assert meta.fps == pytest.approx(8.0)
    assert samples["d"][0].extra["source_frames"] == 13 and samples["d"][0].extra["source_size"] == [40, 40]


def test_latents_decode_to_the_bucket_size(world: dict) -> None:
    from diffusers import AutoencoderKLWan

    from motif_video.core.latent_space import denormalize_latents

    vae = AutoencoderKLWan.from_pretrained(str(world["release"] / "vae")).eval()
    samples = _all_samples(world["out"])
    for key in ("b", "img"):
        meta, tensors, _ = samples[key]
        with torch.no_grad():
            video = vae.decode(denormalize_latents(vae, tensors["latents"][None].float())).sample
        assert video.shape == (1, 3, *meta.bucket)


@pytest.mark.parametrize("frames", [5, 17])
def test_first_latent_frame_is_the_first_frame_encoded_alone(world: dict, frames: int) -> None:
    """`prepare` stores latents[:, :1] as the I2V first-frame latent: exact because Wan's VAE is causal in time,
    so the first latent frame of a clip is what the pipeline's `encode_first_frames` gives for its first frame."""
    from diffusers import AutoencoderKLWan

    from motif_video.core.latent_space import encode_first_frames, normalize_latents

    vae = AutoencoderKLWan.from_pretrained(str(world["release"] / "vae")).eval()
    video = torch.rand(1, 3, frames, 32, 48, generator=torch.Generator().manual_seed(frames)) * 2 - 1
    with torch.no_grad():
        latents = normalize_latents(vae, vae.encode(video).latent_dist.mode())
    assert torch.equal(encode_first_frames(vae, video[:, :, 0], None, sample=False), latents[:, :, :1])


def test_caption_variants_deterministic_and_follow_probabilities(world: dict) -> None:
    probs = CaptionProbs()
    keys = [f"clip-{i}" for i in range(10_000)]
    all_three = ["long", "short", "first_sentence"]
    draws = [choose_caption_variant(0, k, all_three, probs) for k in keys]
    assert draws == [choose_caption_variant(0, k, all_three, probs) for k in keys]
    freq = Counter(draws)
    for name, p in probs.as_dict().items():
        assert abs(freq[name] / len(keys) - p) < 0.02, (name, freq)
    other_seed = [choose_caption_variant(1, k, all_three, probs) for k in keys]
    assert 0.4 < np.mean([a != b for a, b in zip(draws, other_seed)]) < 0.8  # independent draws per seed
    no_short = Counter(choose_caption_variant(0, k, ["long", "first_sentence"], probs) for k in keys)
    assert abs(no_short["long"] / len(keys) - 0.5 / 0.7) < 0.02 and no_short["short"] == 0
    assert {choose_caption_variant(3, k, ["long"], probs) for k in keys[:100]} == {"long"}
    assert choose_caption_variant(0, "x", all_three, CaptionProbs(0, 0, 1)) == "first_sentence"

    assert first_sentence("It is 3.5 m tall. Then it falls!") == "It is 3.5 m tall."
    items = {item.key: item for item in read_manifest(world["manifest"])}
    assert list(items["b"].caption_variants()) == ["long"]
    assert list(items["c"].caption_variants()) == ["long", "short", "first_sentence"]
    for key, (meta, _, _) in _all_samples(world["out"]).items():
        variants = items[key].caption_variants()
        assert meta.caption_variant == choose_caption_variant(0, key, list(variants), probs)
        assert meta.caption == variants[meta.caption_variant]


def test_two_ranks_write_disjoint_shards_covering_everything(world: dict) -> None:
    written = [set(r.shards_written) for r in world["reports"]]
    assert written[0].isdisjoint(written[1])
    assert written[0] | written[1] == {p.name for p in world["out"].glob("shard-*.tar")}
    assert all(int(name[6:12]) % 2 == r for r, names in enumerate(written) for name in names)
    per_rank = [  # keys each rank handled: written to its shards or reported as skipped
        set().union(*(set(_samples(world["out"] / name)) for name in names)) | set(report.failed)
        for names, report in zip(written, world["reports"])
    ]
    assert per_rank[0].isdisjoint(per_rank[1]) and per_rank[0] | per_rank[1] == {*CLIPS, *BAD}
    assert all(r.shards_total == len(written[0] | written[1]) for r in world["reports"])


def test_resume_rewrites_only_the_incomplete_shard(world: dict) -> None:
    """Rerun with world size 1 (rank 0 of 1 owns every shard): only the shard without an index is rewritten,
    byte-identical to what rank 0 of 2 wrote (content depends on neither world size nor resumption), and the
    skip reasons of resumed shard 1 (written by rank 1 of 2) are carried over from rank 1's report."""
    out = world["root"] / "resume"
    shutil.copytree(world["out"], out)
    (out / "shard-000002.index.json").unlink()  # killed after the tar's rename, before its index
    (out / ".shard-000002.tar.dead.tmp").write_bytes(b"partial")  # killed mid-tar
    names = sorted(p.name for p in out.glob("shard-*.tar"))
    before = {name: (out / name).stat().st_mtime_ns for name in names}
    report = prepare(world["manifest"], world["release"], out, BUCKETS, SHARD_SIZE, device="cpu")
    assert report.shards_written == ["shard-000002.tar"]
    assert report.shards_resumed == [n for n in names if n != "shard-000002.tar"]
    assert report.failed == _all_failed(world)  # the bad files sit in shard 1, resumed here
    for name in names:
        assert (out / name).read_bytes() == (world["out"] / name).read_bytes()
        if name != "shard-000002.tar":
            assert (out / name).stat().st_mtime_ns == before[name]
    assert (out / "shard-000002.index.json").is_file() and not list(out.glob(".*.tmp"))
    again = prepare(world["manifest"], world["release"], out, BUCKETS, SHARD_SIZE, device="cpu")
    assert not again.shards_written and again.samples_resumed == len(CLIPS)


def test_cli_prepare_reads_torchrun_env(world: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    manifest = tmp_path / "m.csv"
    media = world["manifest"].parent / "media"
    manifest.write_text(f"path,caption,caption_short\n{media / 'b.mp4'},A car. It drives.,\n{media / 'img.png'},Sky,\n")
    parser = argparse.ArgumentParser()
    add_prepare_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "out"
    args = parser.parse_args(
        ["prepare", "--manifest", str(manifest), "--model", str(world["release"]), "--out", str(out)]
        + ["--buckets", BUCKETS, "--samples-per-shard", "1", "--dtype", "float32", "--image-tokens", "--device", "cpu"]
    )
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert args.func(args) == 0
    assert "rank 1/2: 1 shards written" in capsys.readouterr().out
    assert [p.name for p in out.glob("shard-*.tar")] == ["shard-000001.tar"]
    (meta, tensors, _) = _samples(out / "shard-000001.tar")["000000001"]
    preset = get_preset("tiny")
    assert meta.is_image and tensors["latents"].dtype == torch.float32
    assert tensors["image_tokens"].shape == (16, preset.image_embed_dim)  # SigLIP 32 px / patch 8 -> 16 tokens

    args.buckets = "17x30x32"
    with pytest.raises(ValueError, match="multiple of 16"):
        args.func(args)
    monkeypatch.setenv("RANK", "2")
    args.buckets = BUCKETS
    with pytest.raises(ValueError, match="rank"):
        args.func(args)


def test_bucket_assignment_and_resize() -> None:
    buckets = parse_buckets(BUCKETS)
    for (frames, height, width), expected in CLIPS.values():
        assert assign_bucket(frames or 1, height, width, buckets) == expected
    assert assign_bucket(17, 32, 32, buckets, stride=2) == (9, 32, 32)  # 17 frames at stride 2 fit 9
    assert assign_bucket(3, 32, 32, [(9, 32, 32)]) is None
    with pytest.raises(ValueError, match="4k\\+1"):
        parse_buckets("8x32x32")
    with pytest.raises(ValueError, match="FRAMESxHEIGHTxWIDTH"):
        parse_buckets("32x32")
    frames = np.zeros((2, 40, 80, 3), np.uint8)
    frames[:, :, 20:60] = 255  # a white center band, cropped to exactly the output
    out = resize_center_crop(frames, 32, 32)
    assert out.shape == (2, 3, 32, 32) and out.min() >= -1 and out.max() <= 1
    assert torch.allclose(out[:, :, :, 2:-2], torch.ones(()))  # the band fills the crop (edges interpolate)


def test_malformed_manifests_fail_fast(tmp_path: Path) -> None:
    cases = {
        "dup.jsonl": ('{"path": "a.mp4", "caption": "x", "key": "k"}\n' * 2, "duplicate key"),
        "nocap.jsonl": ('{"path": "a.mp4"}\n', "caption"),
        "badjson.jsonl": ("{not json}\n", "not valid JSON"),
        "badkey.jsonl": ('{"path": "a.mp4", "caption": "x", "key": "a.b"}\n', "key"),
        "m.txt": ("", "jsonl or .csv"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=message):
            read_manifest(tmp_path / name)
    with pytest.raises(ValueError, match="rank"):
        prepare(tmp_path / "dup.jsonl", tmp_path, tmp_path / "o", BUCKETS, rank=0)
