"""The procedural data generator and the pixel evaluator: determinism, geometry, the held-out rule, captions, and
an evaluator that is right on ground truth (clean, mp4, blurred + noisy) and wrong when it should be."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from motif_video_lab.procedural import (
    COLORS,
    DIRECTIONS,
    HELDOUT_COLOR_DIRECTION,
    HELDOUT_COLOR_SHAPE,
    SHAPES,
    SceneSpec,
    caption,
    eval_prompts,
    is_heldout,
    parse_prompt,
    render,
    sample_scene,
    score_prompts,
    score_video,
    write_dataset,
)
from motif_video_lab.procedural.captions import CAPTION_VARIANTS, NUM_PHRASINGS, first_sentence
from motif_video_lab.procedural.scene import (
    BACKGROUNDS,
    LAYOUT_JITTER_PX,
    LAYOUTS,
    fits,
    half_extent,
    heldout_pairs,
    trajectory,
)


def scenes(seed: int, count: int, split: str = "any", image_every: int = 4, **kwargs) -> list[SceneSpec]:
    """Every `image_every`-th scene is an image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        image = i % image_every == 0
        out.append(sample_scene(rng, split=split, image=image, num_frames=1 if image else 17, **kwargs))
    return out


def frames_of(spec: SceneSpec, height: int = 64, width: int = 64) -> np.ndarray:
    return render(spec, 1 if spec.image else 17, height, width)


def blur_and_noise(video: np.ndarray, rng: np.random.Generator, sigma: float = 1.0, noise: float = 8.0) -> np.ndarray:
    """(T, H, W, 3) uint8 -> the same, Gaussian-blurred (separable, edge-padded) plus Gaussian noise."""
    radius = int(3 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    x = video.astype(np.float32)
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(x, pad, mode="edge")
        x = sum(k * np.take(padded, np.arange(i, i + x.shape[axis]), axis=axis) for i, k in enumerate(kernel))
    return np.clip(x + rng.normal(0.0, noise, x.shape), 0, 255).astype(np.uint8)


def all_correct_rate(specs: list[SceneSpec], videos: list[np.ndarray]) -> float:
    return score_prompts([score_video(v, s) for s, v in zip(specs, videos)]).all_correct / len(specs)


# ---------------------------------------------------------------------------------------------------- generator


def test_sampling_and_rendering_are_deterministic_by_seed():
    assert scenes(3, 20) == scenes(3, 20)
    assert scenes(3, 20) != scenes(4, 20)
    spec = scenes(3, 2)[1]
    assert np.array_equal(frames_of(spec), frames_of(spec))


@pytest.mark.parametrize("layout", ["centred", "uniform"])
@pytest.mark.parametrize("height,width", [(64, 64), (48, 80), (96, 64)])
def test_objects_stay_inside_the_frame(height, width, layout):
    """The outermost pixel ring is pure background in every frame, and each object is drawn in every frame."""
    for spec in scenes(7, 40, height=height, width=width, layout=layout):
        video = frames_of(spec, height, width)
        background = np.array(BACKGROUNDS[spec.background], dtype=np.uint8)
        ring = np.concatenate([video[:, 0], video[:, -1], video[:, :, 0], video[:, :, -1]], axis=1)
        assert (ring == background).all(), spec
        assert fits(spec, video.shape[0], height, width)
        for obj in spec.objects:
            full = (video == np.array(COLORS[obj.color], dtype=np.uint8)).all(-1).sum(axis=(1, 2))
            assert (full >= 40 * (min(height, width) / 64) ** 2).all(), (spec, full)


def group_centre_offset(spec: SceneSpec, height: int, width: int) -> np.ndarray:
    """(dx, dy) px from the frame centre to the centre of the box all objects sweep over the clip."""
    frames = 1 if spec.image else 17
    centres = trajectory(spec, frames, height, width)  # (T, N, 2)
    r = np.array([half_extent(o.size, height, width) for o in spec.objects])[None, :, None]
    low, high = (centres - r).min(axis=(0, 1)), (centres + r).max(axis=(0, 1))
    return (low + high) / 2 - np.array([width, height]) / 2


@pytest.mark.parametrize("height,width", [(64, 64), (48, 80)])
def test_centred_layout_puts_the_path_in_the_middle_and_uniform_does_not(height, width):
    jitter = LAYOUT_JITTER_PX * min(height, width) / 64
    centred = scenes(8, 80, height=height, width=width)  # the default layout
    offsets = np.array([group_centre_offset(s, height, width) for s in centred])
    assert (np.abs(offsets) <= jitter + 1e-6).all()
    assert np.abs(offsets).max() > jitter / 2  # jittered, not fixed
    pairs = [s for s in centred if len(s.objects) == 2]
    gaps = {round(abs(np.subtract(*[(o.x * width, o.y * height) for o in s.objects])).max()
                  - sum(half_extent(o.size, height, width) for o in s.objects), 6) for s in pairs}  # fmt: skip
    assert len(pairs) > 10 and len(gaps) == 1  # one fixed gap
    uniform = scenes(8, 80, height=height, width=width, layout="uniform")
    assert np.abs([group_centre_offset(s, height, width) for s in uniform]).max() > 3 * jitter
    with pytest.raises(ValueError, match="layout"):
        sample_scene(np.random.default_rng(0), layout="grid")


def test_render_rejects_bad_sizes_and_scenes_that_leave_the_frame():
    spec = scenes(0, 2)[1]
    with pytest.raises(ValueError, match="multiples of 16"):
        render(spec, 17, 60, 64)
    with pytest.raises(ValueError, match="4k"):
        render(spec, 16, 64, 64)
    moving = sample_scene(np.random.default_rng(0), where=lambda s: s.speed == "fast" and s.direction == "right")
    with pytest.raises(ValueError, match="inside"):
        render(replace(moving, objects=tuple(replace(o, x=0.9) for o in moving.objects)), 17, 64, 64)


def test_heldout_pairs_never_appear_in_training_but_every_word_does():
    train = scenes(11, 600, split="train")
    assert not any(is_heldout(s) for s in train)
    words = {w for s in train for o in s.objects for w in (o.color, o.shape)} | {s.direction for s in train}
    assert words >= set(COLORS) | set(SHAPES) | set(DIRECTIONS)
    held = scenes(12, 60, split="heldout")
    assert all(is_heldout(s) for s in held)
    prompts = eval_prompts("heldout", 28)
    covered = set().union(*(heldout_pairs(p.spec) for p in prompts))
    assert covered == set(HELDOUT_COLOR_SHAPE) | set(HELDOUT_COLOR_DIRECTION)
    assert all(is_heldout(parse_prompt(p.prompt)) for p in prompts)  # the TEXT composes a held-out pair
    assert not any(is_heldout(p.spec) for p in eval_prompts("train", 28))
    assert [p.prompt for p in eval_prompts("heldout", 10)] == [p.prompt for p in prompts[:10]]


def test_captions_parse_back_to_their_spec_for_every_template():
    from motif_video.data.manifest import first_sentence as manifest_first_sentence

    specs = scenes(5, 120, image_every=3)
    kinds = {(s.image, s.direction == "still", len(s.objects)) for s in specs}
    assert len(kinds) == 6  # image / still / moving, one / two objects
    motion_words = ("move", "still", "motionless", "stationary", "slid", "drift", "left", "right", "up", "down")
    for spec in specs:
        long = caption(spec, "long", 0)
        for phrasing in range(NUM_PHRASINGS):
            for variant in CAPTION_VARIANTS:
                text = caption(spec, variant, phrasing)
                assert parse_prompt(text) == spec.prompt(), text
            long = caption(spec, "long", phrasing)
            assert manifest_first_sentence(long) == first_sentence(long) == caption(spec, "first_sentence", phrasing)
            assert first_sentence(long) != long
            if spec.image and len(spec.objects) == 1:
                assert not any(word in long.lower() for word in motion_words), long
    with pytest.raises(ValueError, match="colour"):
        parse_prompt("a nice sunset over the sea")


# ---------------------------------------------------------------------------------------------------- evaluator


def test_evaluator_is_right_on_ground_truth_clean_and_blurred():
    specs = scenes(21, 32)
    videos = [frames_of(s) for s in specs]
    assert all_correct_rate(specs, videos) == 1.0
    rng = np.random.default_rng(0)
    assert all_correct_rate(specs, [blur_and_noise(v, rng) for v in videos]) >= 0.98
    floats = score_video(videos[1].astype(np.float32) / 255.0, specs[1])
    assert floats.all_correct and floats.checks.keys() >= {"direction", "consistency"}


def test_evaluator_is_right_after_an_mp4_round_trip(tmp_path):
    from motif_video.core.video_io import export_video, read_video

    specs = scenes(22, 16, image_every=1000)[1:]
    decoded = []
    for index, spec in enumerate(specs):
        path = export_video(frames_of(spec), tmp_path / f"{index}.mp4", fps=8)
        decoded.append(read_video(path)[0])
    assert all_correct_rate(specs, decoded) >= 0.98


def test_evaluator_marks_wrong_attributes_wrong():
    spec = sample_scene(
        np.random.default_rng(1), where=lambda s: len(s.objects) == 2 and s.direction in DIRECTIONS and not s.image
    )
    video = frames_of(spec)
    assert score_video(video, spec).all_correct
    a, b = spec.objects
    other_color = next(c for c in COLORS if c not in (a.color, b.color))
    other_shape = next(s for s in SHAPES if s not in (a.shape, b.shape))
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}[spec.direction]
    swapped = {"left_of": "right_of", "right_of": "left_of", "above": "below", "below": "above"}[spec.relation]
    cases = {
        "color": replace(spec, objects=(replace(a, color=other_color), b)),
        "shape": replace(spec, objects=(replace(a, shape=other_shape), b)),
        "size": replace(spec, objects=(replace(a, size="small" if a.size == "large" else "large"), b)),
        "direction": replace(spec, direction=opposite),
        "speed": replace(spec, speed="slow" if spec.speed == "fast" else "fast"),
        "relation": replace(spec, relation=swapped),
        "background": replace(spec, background=next(g for g in BACKGROUNDS if g != spec.background)),
    }
    for attribute, wrong in cases.items():
        checks = score_video(video, wrong).checks
        assert not checks[attribute], attribute
        assert sum(not ok for ok in checks.values()) <= 2, (attribute, checks)  # the rest stays right
    still = np.repeat(video[:1], 17, axis=0)  # a frozen clip does not move as asked
    assert not score_video(still, spec).checks["direction"]
    one_object = replace(spec, objects=(a,), relation=None)
    assert not score_video(video, one_object).checks["count"]


def test_evaluator_fails_noise_and_blank_videos():
    specs = scenes(31, 12, image_every=1000)
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (17, 64, 64, 3), dtype=np.uint8) for _ in specs]
    table = score_prompts([score_video(v, s) for s, v in zip(specs, noise)])
    assert table.overall < 0.15 and table.all_correct == 0
    blank = np.zeros((17, 64, 64, 3), dtype=np.uint8)
    result = score_video(blank, specs[1])
    assert not any(result.checks[k] for k in ("count", "color", "shape", "direction", "consistency"))


# ---------------------------------------------------------------------------------------------------- dataset


def test_written_dataset_is_read_by_the_manifest_reader(tmp_path):
    from motif_video.data.manifest import load_clip, parse_buckets, read_manifest

    manifest = write_dataset(tmp_path / "data", num_videos=4, num_images=2, seed=5, split="train")
    items = read_manifest(manifest)
    assert [item.key for item in items] == [f"train-v{i:06d}" for i in range(4)] + ["train-i000000", "train-i000001"]
    assert [item.is_image for item in items] == [False] * 4 + [True] * 2
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    again = write_dataset(tmp_path / "again", num_videos=4, num_images=2, seed=5, split="train", io_threads=0)
    assert again.read_text() == manifest.read_text()  # deterministic, with or without writer threads
    buckets = parse_buckets("1x64x64,17x64x64")
    for item, row in zip(items[3:5], rows[3:5]):
        spec = SceneSpec.from_dict(row["scene"])
        assert not is_heldout(spec) and set(item.caption_variants()) == set(CAPTION_VARIANTS)
        assert parse_prompt(item.caption) == spec.prompt() == parse_prompt(item.caption_short)
        clip = load_clip(item, buckets)
        assert clip.bucket == ((1 if item.is_image else 17), 64, 64)
        frames = ((clip.pixels.permute(0, 2, 3, 1).numpy() + 1.0) / 2.0).clip(0.0, 1.0)  # (F, H, W, 3) in [0, 1]
        assert score_video(frames, item.caption).all_correct
    lossless = read_manifest(write_dataset(tmp_path / "png", num_videos=1, seed=5, video_format="png"))[0]
    assert lossless.path.is_dir() and load_clip(lossless, buckets).bucket == (17, 64, 64)


def test_write_dataset_passes_the_scene_mix_on_and_checks_it_first(tmp_path):
    drawn = lambda manifest: [json.loads(line)["scene"] for line in manifest.read_text().splitlines()]  # noqa: E731
    two = drawn(write_dataset(tmp_path / "two", num_videos=6, seed=1, two_object_prob=1.0, still_prob=1.0))
    assert all(len(s["objects"]) == 2 and s["direction"] == "still" for s in two)
    for layout in LAYOUTS:
        one = drawn(write_dataset(tmp_path / layout, num_videos=6, seed=1, two_object_prob=0.0, still_prob=1.0,
                                   layout=layout))  # fmt: skip
        assert all(len(s["objects"]) == 1 for s in one)
        off_centre = max(abs(s["objects"][0][axis] - 0.5) for s in one for axis in "xy")
        assert (off_centre <= LAYOUT_JITTER_PX / 64) == (layout == "centred"), (layout, off_centre)
    for bad, match in (({"two_object_prob": 1.5}, r"two_object_prob is a probability in \[0, 1\], got 1.5"),
                       ({"still_prob": -0.1}, "still_prob is a probability"),
                       ({"layout": "grid"}, "unknown layout 'grid'; expected one of centred, uniform")):  # fmt: skip
        with pytest.raises(ValueError, match=match):
            write_dataset(tmp_path / "bad", num_videos=1, **bad)
    assert not (tmp_path / "bad").exists()  # refused before anything is written
