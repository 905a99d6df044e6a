"""The procedural REPA teacher (small_model/scene_teacher.py): its per-patch targets, its training, and that the
trainer's own teacher loader reads it as a DINOv2 teacher."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from motif_video.core.teachers import load_teacher
from motif_video_lab.procedural import BACKGROUNDS, ObjectSpec, SceneSpec, render
from motif_video_lab.small_model.scene_teacher import (
    HEADS,
    SceneTeacherConfig,
    build_scene_teacher,
    evaluate,
    frame_at,
    frame_targets,
    save_scene_teacher,
    train_scene_teacher,
)


def _cls(head: str, value: str) -> int:
    return HEADS[head].index(value)


def test_targets_name_each_patch_of_each_object():
    one = SceneSpec("navy", (ObjectSpec("red", "square", "large", 0.25, 0.5),), "right", "fast")
    targets = frame_targets(one, 4, 17, 8)
    assert all(t.shape == (8, 8, len(HEADS[h])) for h, t in targets.items())
    assert all(np.allclose(t.sum(-1), 1.0) for t in targets.values())  # fractions of each patch
    assert (targets["background"][..., _cls("background", "navy")] == 1).all()
    # frame 4: the square's centre has moved 4 x 2 px right of (16, 32); it spans x 11..37, y 19..45
    inside = targets["shape"][3, 2]  # pixels y 24..31, x 16..23: fully covered
    assert inside[_cls("shape", "square")] == 1.0 and targets["color"][3, 2, _cls("color", "red")] == 1.0
    assert targets["size"][3, 2, _cls("size", "large")] == 1.0 and targets["slot"][3, 2, _cls("slot", "centre")] == 1
    assert targets["shape"][3, 5, _cls("shape", "none")] == 1.0  # x 40..47: the square has not got there
    assert targets["shape"][0, 0, _cls("shape", "none")] == 1.0  # a corner patch: background only
    # The object's coverage is where render() drew it: it matches the pixels that differ from the background.
    drawn = np.any(render(one, 17)[4] != np.array(BACKGROUNDS["navy"], dtype=np.uint8), axis=-1)
    covered = 1.0 - frame_targets(one, 4, 17, 1)["shape"][..., _cls("shape", "none")]
    assert np.array_equal(covered > 0, drawn)

    objects = (ObjectSpec("blue", "circle", "small", 0.25, 0.5), ObjectSpec("green", "triangle", "large", 0.7, 0.5))
    # A clip's frame as a still image renders and labels exactly as the clip's frame does.
    still = frame_at(one, 4)
    assert np.array_equal(render(still, 1)[0], render(one, 17)[4])
    assert all(np.array_equal(frame_targets(still, 0, 1, 8)[h], targets[h]) for h in HEADS)
    two = SceneSpec("white", objects, relation="left_of", image=True)
    targets = frame_targets(two, 0, 1, 8)
    left, right = targets["slot"][4, 2], targets["slot"][3, 5]  # inside the circle (x 16); inside the triangle
    assert left.argmax() == _cls("slot", "left") and right.argmax() == _cls("slot", "right")
    assert targets["shape"][4, 2].argmax() == _cls("shape", "circle")
    assert targets["shape"][3, 5].argmax() == _cls("shape", "triangle")


def test_training_teaches_the_features_and_the_loader_reads_them(tmp_path):
    fresh = build_scene_teacher(0)
    again = build_scene_teacher(0).state_dict()
    assert all(torch.equal(value, again[name]) for name, value in fresh.state_dict().items())  # a function of the seed
    state = torch.random.get_rng_state()
    model, accuracy = train_scene_teacher(0, SceneTeacherConfig(steps=120))
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is left alone
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    before, after = evaluate(fresh, count=96, probe_steps=150), evaluate(model, count=96, probe_steps=150)
    # what held-out frames' features tell, read by fresh linear probes: size and slot are learnt first
    assert after["size"] > before["size"] + 0.3 and after["slot"] > before["slot"] + 0.1, (before, after)
    assert after["color"] >= 0.9 and after["background"] >= 0.99, after

    folder = save_scene_teacher(model, tmp_path / "teacher")
    assert not (tmp_path / "teacher.tmp").exists()
    teacher = load_teacher("dinov2", str(folder), torch.float32, "cpu", input_size=64)
    video = torch.rand(2, 3, 5, 64, 64) * 2 - 1
    features, grid = teacher.encode(video)
    assert grid == (5, 8, 8) and features.shape == (2, 5 * 64, 64)
    frame = video[:, :, 2]
    from motif_video_lab.small_model.scene_teacher import teacher_input

    direct = model(pixel_values=teacher_input(frame)).last_hidden_state[:, 1:]  # how it was trained to see
    torch.testing.assert_close(features[:, 2 * 64 : 3 * 64], direct, rtol=1e-4, atol=1e-4)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="patch_size must divide 64"):
        SceneTeacherConfig(patch_size=7)
