"""Write a procedural dataset as media files plus the `manifest.jsonl` that `motif-video prepare` reads; and the
fixed evaluation prompt sets.

Layout of `out_dir`:

    manifest.jsonl          one row per sample (data/manifest.py), in sample order:
                              path           "media/<key>.mp4" (video), "media/<key>.png" (image) or "media/<key>"
                                             (video as a directory of frame_00000.png files, video_format="png")
                              caption        the long caption (its first sentence is a complete prompt too)
                              caption_short  the short caption
                              key            "<split>-v000000" (videos) / "<split>-i000000" (images)
                              fps            videos only
                              scene, split, phrasing   kept by prepare in SampleMeta.extra["manifest"]
    media/                  the files

Videos are H.264 mp4 through `video_io.export_video` at its default quality (crf 17; the palette keeps a luma edge
on every object, so yuv420p's half-resolution chroma does not blur shapes: evaluate.py scores such files 100%), or
lossless PNG frame directories. Images are PNG. Everything is a pure function of the arguments: one
`numpy.random.default_rng(seed)` draws the scenes and phrasings in order, videos first, then images.
"""

from __future__ import annotations

import json
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from motif_video_lab.procedural.captions import NUM_PHRASINGS, caption
from motif_video_lab.procedural.render import check_size, render
from motif_video_lab.procedural.scene import (
    HELDOUT_COLOR_DIRECTION,
    HELDOUT_COLOR_SHAPE,
    Layout,
    SceneSpec,
    Split,
    check_scene_options,
    heldout_pairs,
    sample_scene,
)

MANIFEST_NAME = "manifest.jsonl"
MEDIA_DIR = "media"
DEFAULT_FPS = 8


@dataclass(frozen=True)
class EvalPrompt:
    """One evaluation prompt: the text given to the model, and the scene it describes (positions are incidental)."""

    key: str
    prompt: str
    spec: SceneSpec
    split: str  # "heldout" or "train": whether the prompt composes a held-out pair

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "prompt": self.prompt, "spec": self.spec.to_dict(), "split": self.split}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalPrompt:
        return cls(data["key"], data["prompt"], SceneSpec.from_dict(data["spec"]), data["split"])


def write_dataset(
    out_dir: str | Path,
    num_videos: int,
    num_images: int = 0,
    seed: int = 0,
    *,
    height: int = 64,
    width: int = 64,
    num_frames: int = 17,
    split: Split = "train",
    fps: int = DEFAULT_FPS,
    video_format: Literal["mp4", "png"] = "mp4",
    io_threads: int = 4,
    two_object_prob: float = 0.4,
    still_prob: float = 0.15,
    layout: Layout = "centred",
) -> Path:
    """Render num_videos clips and num_images stills of `split` into out_dir; returns the manifest's path.

    split "train" never contains a held-out pair (scene.is_heldout), "heldout" always does, "any" is unrestricted.
    two_object_prob, still_prob and layout are `sample_scene`'s (the share of two-object scenes, of still clips,
    and where the scene sits in the frame); the defaults are the small model's training data.
    The manifest is written last, atomically, so a manifest on disk always lists complete files. Scenes are drawn
    and rendered in order in this thread; only the file writes (mp4 encoding, which mostly waits on swscale and
    fsync) run on `io_threads` threads (0: inline), so the output does not depend on it.
    """
    check_size(num_frames, height, width)
    if num_frames == 1:
        raise ValueError("num_frames is the VIDEO length (4k + 1 >= 5); images are asked for with num_images")
    if num_videos < 0 or num_images < 0 or num_videos + num_images == 0:
        raise ValueError(f"need a positive number of samples, got {num_videos} videos and {num_images} images")
    if video_format not in ("mp4", "png"):
        raise ValueError(f"video_format must be 'mp4' or 'png', got {video_format!r}")
    check_scene_options(two_object_prob, still_prob, layout)
    root = Path(out_dir)
    (root / MEDIA_DIR).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(max(io_threads, 1)) as pool:
        for index in range(num_videos + num_images):
            image = index >= num_videos
            key = f"{split}-i{index - num_videos:06d}" if image else f"{split}-v{index:06d}"
            frames = 1 if image else num_frames
            spec = sample_scene(rng, split=split, image=image, num_frames=frames, height=height, width=width,
                                two_object_prob=two_object_prob, still_prob=still_prob, layout=layout)  # fmt: skip
            phrasing = [int(rng.integers(NUM_PHRASINGS)), int(rng.integers(NUM_PHRASINGS))]  # long, short
            suffix = ".png" if image else (".mp4" if video_format == "mp4" else "")
            relative = f"{MEDIA_DIR}/{key}{suffix}"
            video = render(spec, frames, height, width)  # (T, H, W, 3) uint8
            if io_threads > 0:
                pending.append(pool.submit(_write_media, video, root / relative, image, fps))
            else:
                _write_media(video, root / relative, image, fps)
            while len(pending) > 2 * io_threads:  # bounds the rendered frames held in memory
                pending.popleft().result()
            row: dict[str, Any] = {
                "key": key,
                "path": relative,
                "caption": caption(spec, "long", phrasing[0]),
                "caption_short": caption(spec, "short", phrasing[1]),
                **({} if image else {"fps": fps}),
            }
            rows.append({**row, "split": split, "phrasing": phrasing, "scene": spec.to_dict()})
        while pending:
            pending.popleft().result()  # re-raises a writer's error
    manifest = root / MANIFEST_NAME
    tmp = manifest.with_name(f".{MANIFEST_NAME}.tmp")
    tmp.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows), encoding="utf-8")
    tmp.replace(manifest)
    return manifest


def _write_media(video: np.ndarray, path: Path, image: bool, fps: int) -> None:
    """video: (T, H, W, 3) uint8 -> a PNG (image), an mp4 or a PNG frame directory (video)."""
    if image:
        Image.fromarray(video[0]).save(path, format="PNG", compress_level=1)
        return
    from motif_video.core.video_io import export_video  # imports torch: only where videos are written

    export_video(video, path, fps=fps)


def eval_prompts(
    split: Literal["heldout", "train"] = "heldout",
    num: int = 48,
    seed: int = 0,
    *,
    variant: str = "long",
    num_frames: int = 17,
    height: int = 64,
    width: int = 64,
    image: bool = False,
) -> list[EvalPrompt]:
    """A fixed prompt set (a pure function of the arguments) for generating videos to score.

    "heldout": prompt i contains held-out pair i mod 7 (the 3 colour-shape and 4 colour-direction pairs in turn),
    so every pair is tested equally often. "train": scenes of the training distribution (no held-out pair), an
    in-distribution baseline. Phrasings cycle through all NUM_PHRASINGS. Prompts are videos; with `image`, still
    images (num_frames is then ignored; held-out prompts cycle through the 3 colour-shape pairs, the only ones an
    image can show) under their own keys "<split>-i000" and rng stream.
    """
    if split not in ("heldout", "train"):
        raise ValueError(f"split must be 'heldout' or 'train', got {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "heldout" else 1] + ([2] if image else []))
    targets = sorted(HELDOUT_COLOR_SHAPE) + ([] if image else sorted(HELDOUT_COLOR_DIRECTION))
    frames, kind = (1, "i") if image else (num_frames, "p")
    prompts = []
    for index in range(num):
        target = targets[index % len(targets)]
        where = (lambda s, pair=target: pair in heldout_pairs(s)) if split == "heldout" else None
        spec = sample_scene(rng, split=split, image=image, num_frames=frames, height=height, width=width, where=where)
        text = caption(spec, variant, index % NUM_PHRASINGS)
        prompts.append(EvalPrompt(f"{split}-{kind}{index:03d}", text, spec, split))
    return prompts


def save_prompts(prompts: list[EvalPrompt], path: str | Path) -> Path:
    target = Path(path)
    target.write_text("".join(json.dumps(p.to_dict(), sort_keys=True) + "\n" for p in prompts), encoding="utf-8")
    return target


def load_prompts(path: str | Path) -> list[EvalPrompt]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [EvalPrompt.from_dict(json.loads(line)) for line in lines if line.strip()]
