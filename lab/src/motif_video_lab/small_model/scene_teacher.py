"""A small frozen REPA teacher for the procedural world: a DINOv2-architecture ViT trained here to see the scene.

Motif-Video 2B aligns its early blocks with a frozen DINOv2 (images) and V-JEPA (videos) through REPA
(`training/repa.py`). Neither can be downloaded here, and neither has seen our world, so the small model's teacher is
trained by our code on procedural frames: a `transformers.Dinov2Model` (small config), so the existing
`load_teacher("dinov2", folder)` and online REPA targets load it as they would the real one.

What it learns (supervised, unlike DINOv2's self-supervision): at every patch, what the frame shows there, as the
fraction of the patch covered by each class, with "none" for what no object covers (soft cross-entropy per head):

    background  the background colour (every patch)
    color       the covering object's colour     shape  its shape     size  its size
    slot        where its object sits: "centre" for one object, or the side the relation gives it

An interior patch of a large square looks like one of a large circle, so the shape head needs the whole object:
the ViT's attention carries it, and its last hidden state (what REPA aligns to) then holds each object's identity
at each of its patches. Frames are single frames of train-split clips (`sample_scene(split="train")`, one and
two objects, a random frame of each clip), so a held-out (colour, shape) pair is two known answers; `evaluate`
measures the heads on held-out scenes. Everything is a pure function of `seed`.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from motif_video.core.teachers import prepare_frames
from motif_video_lab.procedural import BACKGROUNDS, COLORS, SHAPES, SIZES, SceneSpec, render, sample_scene
from motif_video_lab.procedural.render import signed_distance
from motif_video_lab.procedural.scene import half_extent, trajectory
from motif_video_lab.small_model.supervised import fit_probe, warmup_cosine
from motif_video_lab.small_model.text_pretraining import SLOTS, object_slots

logger = logging.getLogger(__name__)

NONE = "none"
HEADS: dict[str, tuple[str, ...]] = {
    "background": tuple(BACKGROUNDS),
    "color": (*COLORS, NONE),
    "shape": (*SHAPES, NONE),
    "size": (*SIZES, NONE),
    "slot": (*SLOTS, NONE),
}
FRAME_SIZE = 64  # the small model's frames (SMALL_DEFAULTS)


@dataclass(frozen=True)
class SceneTeacherConfig:
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    patch_size: int = 8  # an 8 x 8 grid on a 64 x 64 frame; REPA pools it to the model's 4 x 4 token grid
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    two_object_prob: float = 0.5

    def __post_init__(self) -> None:
        if FRAME_SIZE % self.patch_size or self.steps < 0 or self.batch_size < 1:
            raise ValueError(f"invalid SceneTeacherConfig {self}: patch_size must divide {FRAME_SIZE}, steps >= 0")


def build_scene_teacher(seed: int = 0, config: SceneTeacherConfig = SceneTeacherConfig()) -> Any:
    """A freshly initialised `Dinov2Model` of the teacher's size, a pure function of `seed`."""
    from transformers import Dinov2Config, Dinov2Model

    dino = Dinov2Config(hidden_size=config.hidden_size, num_hidden_layers=config.num_layers,
                        num_attention_heads=config.num_heads, mlp_ratio=4, patch_size=config.patch_size,
                        image_size=FRAME_SIZE)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Dinov2Model(dino)


def frame_targets(spec: SceneSpec, frame: int, num_frames: int, patch: int) -> dict[str, np.ndarray]:
    """Per-patch class fractions of each head at one frame: head -> (H / patch, W / patch, classes), rows sum to 1.

    Coverage is the renderer's own (signed distance, 1 px ramp), later objects drawn over earlier ones as render
    does."""
    size = FRAME_SIZE
    centres = trajectory(spec, num_frames, size, size)[frame]  # (N, 2)
    ys = np.arange(size, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(size, dtype=np.float32)[None, :] + 0.5
    visible = []
    uncovered = np.ones((size, size), dtype=np.float32)
    for index, obj in reversed(list(enumerate(spec.objects))):  # the last drawn is on top
        cover = np.clip(0.5 - signed_distance(obj.shape, xs - centres[index, 0], ys - centres[index, 1],
                                              half_extent(obj.size, size, size)), 0.0, 1.0)  # fmt: skip
        visible.insert(0, cover * uncovered)
        uncovered = uncovered * (1.0 - cover)
    slots = object_slots(spec)
    out = {}
    for head, classes in HEADS.items():
        maps = np.zeros((size, size, len(classes)), dtype=np.float32)
        if head == "background":
            maps[..., classes.index(spec.background)] = 1.0
        else:
            for obj, slot, cover in zip(spec.objects, slots, visible):
                value = {"color": obj.color, "shape": obj.shape, "size": obj.size, "slot": slot}[head]
                maps[..., classes.index(value)] += cover
            maps[..., classes.index(NONE)] += uncovered
        g = size // patch
        out[head] = maps.reshape(g, patch, g, patch, len(classes)).mean(axis=(1, 3))
    return out


def frame_at(spec: SceneSpec, frame: int, num_frames: int = 17) -> SceneSpec:
    """The still image of a clip's frame `frame`: every object where the clip has it then (render it with one frame
    instead of rendering the whole clip for one frame)."""
    centres = trajectory(spec, num_frames, FRAME_SIZE, FRAME_SIZE)[frame]
    objects = tuple(replace(o, x=float(c[0]) / FRAME_SIZE, y=float(c[1]) / FRAME_SIZE)
                    for o, c in zip(spec.objects, centres))  # fmt: skip
    return replace(spec, objects=objects, direction="still", speed=None, image=True)


def sample_frames(rng: np.random.Generator, count: int, patch: int, split: str = "train",
                  two_object_prob: float = 0.5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # fmt: skip
    """`count` frames of `split` clips, (B, 3, 64, 64) in [-1, 1], and each head's targets (B, g, g, classes)."""
    frames, targets = [], {head: [] for head in HEADS}
    for _ in range(count):
        still = frame_at(sample_scene(rng, split=split, two_object_prob=two_object_prob), int(rng.integers(17)))
        frames.append(render(still, 1, FRAME_SIZE, FRAME_SIZE)[0])
        for head, value in frame_targets(still, 0, 1, patch).items():
            targets[head].append(value)
    pixels = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return pixels, {head: torch.from_numpy(np.stack(v)) for head, v in targets.items()}


def teacher_input(pixels: torch.Tensor) -> torch.Tensor:
    """[-1, 1] frames -> what the teacher sees: exactly what `DinoV2Teacher` feeds it for a 64 x 64 frame."""
    return prepare_frames(pixels, tuple(pixels.shape[-2:]), pixels.dtype)


class _Heads(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleDict({head: torch.nn.Linear(dim, len(c)) for head, c in HEADS.items()})

    def forward(self, tokens: torch.Tensor, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """tokens: (B, g * g, D) patch tokens; soft cross-entropy per head, and accuracy on the patches an object
        covers at least half of (the background head: every patch)."""
        losses, correct = {}, {}
        for head, layer in self.layers.items():
            target = targets[head].flatten(1, 2)  # (B, g*g, classes)
            logits = layer(tokens)
            losses[head] = -(target * F.log_softmax(logits, -1)).sum(-1).mean()
            keep = target[..., -1] <= 0.5 if head != "background" else torch.ones_like(target[..., 0], dtype=bool)
            hits = (logits.argmax(-1) == target.argmax(-1)) & keep
            correct[head] = hits.sum().item() / max(keep.sum().item(), 1)
        return sum(losses.values()), correct


def _tokens(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    return model(pixel_values=teacher_input(pixels)).last_hidden_state[:, 1:]  # drop CLS


def train_scene_teacher(seed: int = 0, config: SceneTeacherConfig = SceneTeacherConfig()) -> tuple[Any, dict]:
    """A trained teacher (frozen, eval mode) and its last step's per-head accuracy on its training batch."""
    model = build_scene_teacher(seed, config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = _Heads(config.hidden_size)
        params = list(model.parameters()) + list(heads.parameters())
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        rng = np.random.default_rng([seed, 13])
        correct: dict[str, float] = {}
        model.train()
        for step in range(config.steps):
            scale = warmup_cosine(step, config.steps, config.warmup)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * scale
            pixels, targets = sample_frames(rng, config.batch_size, config.patch_size,
                                            two_object_prob=config.two_object_prob)  # fmt: skip
            loss, correct = heads(_tokens(model, pixels), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if (step + 1) % 100 == 0:
                logger.info("scene teacher step %d loss %.4f %s", step + 1, loss.item(),
                            {k: round(v, 3) for k, v in correct.items()})  # fmt: skip
    return model.requires_grad_(False).eval(), correct


@torch.no_grad()
def evaluate(model: Any, split: str = "heldout", count: int = 256, seed: int = 0, probe_steps: int = 300) -> dict:
    """Per-head patch accuracy of fresh linear heads fitted on the frozen features of train frames and scored on
    `split` frames: what the features hold, for any teacher (a fresh one too), not what the training heads learnt."""
    patch = model.config.patch_size
    rng = np.random.default_rng([seed, 17])
    train_pixels, train_targets = sample_frames(rng, count, patch)
    features = _tokens(model, train_pixels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = _Heads(model.config.hidden_size)
        fit_probe(heads, features, train_targets, probe_steps)
    pixels, targets = sample_frames(rng, count, patch, split=split)
    return heads(_tokens(model, pixels), targets)[1]


def save_scene_teacher(model: Any, folder: str | Path) -> Path:
    """`save_pretrained` into `folder`, atomically (a temporary folder renamed last): a folder that exists is whole."""
    folder = Path(folder)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


REPA_TAP_BLOCK = 3  # after the 4th of the small model's 10 blocks (REPA: after the 8th of SiT-XL's 28)
REPA_PROJECTOR_WIDTH = 256  # REPA's 2048 is for width 1152; the small model is 128 wide


def small_repa(teacher_dir: str | Path, tap_block: int = REPA_TAP_BLOCK, weight: float = 0.5) -> Any:
    """The small model's `REPAConfig`: align to this scene teacher, targets computed online from the clean latents
    (the recipe's `vae` decodes them), the teacher seeing 64 x 64 frames as it was trained."""
    from motif_video.training.repa import REPAConfig

    return REPAConfig(enabled=True, teacher="dinov2", teacher_path=str(teacher_dir), feature_source="online",
                      tap_block=tap_block, weight=weight, projector_width=REPA_PROJECTOR_WIDTH,
                      teacher_input_size=FRAME_SIZE)  # fmt: skip


def scene_teacher_folder(folder: str | Path, steps: int, seed: int = 0) -> Path:
    """`folder` holding a teacher trained for `steps` steps; trained and written once (atomically), then reused."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        model, accuracy = train_scene_teacher(seed, SceneTeacherConfig(steps=steps))
        logger.info("scene teacher: %d steps, last batch accuracy %s", steps, accuracy)
        save_scene_teacher(model, folder)
    return folder


__all__ = ["HEADS", "SceneTeacherConfig", "build_scene_teacher", "evaluate", "frame_at", "frame_targets",
           "sample_frames", "save_scene_teacher", "scene_teacher_folder", "small_repa", "teacher_input",
           "train_scene_teacher"]  # fmt: skip
