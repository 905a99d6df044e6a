"""Our `MotifVideoPipeline` against diffusers' pipelines, and the cases where the reference breaks.

Parity goes through the release layout: a tiny diffusers `MotifVideoPipeline` (diffusers' own transformer,
tiny random T5Gemma2 + SigLIP, Wan VAE, a tokenizer built with `tokenizers`, Euler, APG) is saved with
diffusers' `save_pretrained`, loaded with OUR `from_pretrained`, and both run with the same prompts and seed in
fp32. The frames (in [0, 1]) must agree to 1e-5.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    MotifVideoImage2VideoPipeline,
    UniPCMultistepScheduler,
)
from diffusers import MotifVideoPipeline as ReferencePipeline

from model_helpers import random_reference
from motif_video import get_preset
from motif_video.core.flow import flow_sigmas
from motif_video.models.checkpoint_io import CheckpointError
from motif_video.pipeline import MotifVideoPipeline
from motif_video.pipeline.tiny import build_tiny_components

H = W = 32
FRAMES = 9
STEPS = 3
PROMPT = "a red dog runs on the beach"
PROMPTS = ["a red dog runs on the beach", "a small blue bird flies over the green trees at night"]
NEGATIVE = "blurry, dark"
TOL = 1e-5


def _seed(s: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(s)


@pytest.fixture(scope="module")
def parts() -> dict:
    parts = build_tiny_components(seed=0)
    with torch.random.fork_rng():
        parts["transformer"] = random_reference(get_preset("tiny"), noise=0.1)  # diffusers' own model
    return parts


@pytest.fixture(scope="module")
def release(parts, tmp_path_factory) -> Path:
    """Saved by diffusers, in the layout the official release uses."""
    folder = tmp_path_factory.mktemp("release")
    ref = ReferencePipeline(**parts)
    ref.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def ours(release) -> MotifVideoPipeline:
    pipe = MotifVideoPipeline.from_pretrained(str(release))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference(parts: dict, shift: float, i2v: bool = False):
    components = dict(parts, scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    from motif_video.pipeline.tiny import build_guider

    components["guider"] = build_guider()  # fresh: diffusers' guider keeps momentum state
    cls = MotifVideoImage2VideoPipeline if i2v else ReferencePipeline
    pipe = cls(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image(seed: int = 4) -> torch.Tensor:
    return torch.rand(3, H, W, generator=_seed(seed))


def _run(pipe, **kw) -> np.ndarray:
    args = dict(height=H, width=W, num_frames=FRAMES, num_inference_steps=STEPS, output_type="np")
    args.update(kw)
    return pipe(**args).frames


def test_loads_the_release_with_our_transformer(ours, release):
    from motif_video import MotifVideoTransformer

    assert isinstance(ours.transformer, MotifVideoTransformer)
    assert json.loads((release / "model_index.json").read_text())["transformer"][1] == "MotifVideoTransformer3DModel"
    assert ours.guidance.method == "apg" and ours.guidance.scale == 8.0 and ours.guidance.norm_threshold == 12.0


def test_text_to_video_matches_diffusers(parts, ours):
    ref = _run(_reference(parts, 15.0), prompt=PROMPTS, negative_prompt=NEGATIVE, generator=_seed())
    got = _run(ours, prompt=PROMPTS, negative_prompt=NEGATIVE, generator=_seed(), shift=15.0)
    assert got.shape == ref.shape == (2, FRAMES, H, W, 3)
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    # teeth: another prompt moves the frames far beyond the tolerance
    other = _run(ours, prompt=[PROMPTS[1], PROMPTS[0]], negative_prompt=NEGATIVE, generator=_seed(), shift=15.0)
    assert np.abs(other - ref).max() > 100 * TOL


def test_release_defaults_choose_shift_and_negative_prompt(ours):
    """A release's stored shift and negative prompt are what an unset call uses, and equal passing them."""
    import dataclasses

    from motif_video.pipeline.pipeline import OFFICIAL_NEGATIVE_PROMPT

    official = ours.defaults
    _run(ours, prompt=PROMPT, generator=_seed(), num_inference_steps=1)
    assert ours.last_call["shift"] == 15.0 and ours.last_call["negative_prompt"] == OFFICIAL_NEGATIVE_PROMPT
    ours.defaults = dataclasses.replace(official, shift_t2v=2.0, shift_i2v=1.5, negative_prompt="")
    try:
        implicit = _run(ours, prompt=PROMPT, generator=_seed())
        assert ours.last_call["shift"] == 2.0 and ours.last_call["negative_prompt"] == ""
        explicit = _run(ours, prompt=PROMPT, generator=_seed(), shift=2.0, negative_prompt="")
        np.testing.assert_array_equal(implicit, explicit)
        official_run = _run(
            ours, prompt=PROMPT, generator=_seed(), shift=15.0, negative_prompt=OFFICIAL_NEGATIVE_PROMPT
        )
        assert np.abs(official_run - implicit).max() > 100 * TOL
        _run(ours, prompt=PROMPT, image=_image(), generator=_seed(), num_inference_steps=1)
        assert ours.last_call["shift"] == 1.5
    finally:
        ours.defaults = official


def test_noise_correlation_default(ours):
    """A release's noise_correlation is what an unset call uses (and equals passing it); 0 keeps the seed's video."""
    import dataclasses

    official = ours.defaults
    base = _run(ours, prompt=PROMPT, generator=_seed(), guidance="none")
    assert ours.last_call["noise_correlation"] == 0.0
    np.testing.assert_array_equal(base, _run(ours, prompt=PROMPT, generator=_seed(), guidance="none",
                                             noise_correlation=0.0))  # fmt: skip
    ours.defaults = dataclasses.replace(official, noise_correlation=0.9)
    try:
        implicit = _run(ours, prompt=PROMPT, generator=_seed(), guidance="none")
        assert ours.last_call["noise_correlation"] == 0.9
        explicit = _run(ours, prompt=PROMPT, generator=_seed(), guidance="none", noise_correlation=0.9)
        np.testing.assert_array_equal(implicit, explicit)
        assert np.abs(implicit - base).max() > 100 * TOL
    finally:
        ours.defaults = official
    with pytest.raises(ValueError, match="noise_correlation must lie in"):
        _run(ours, prompt=PROMPT, generator=_seed(), noise_correlation=1.5)


def test_initial_noise_shares_a_draw_across_frames():
    from motif_video.core.latent_space import correlate_frames, initial_noise, randn, shared_noise_shape

    shape, cpu = (2, 4, 3, 4, 4), torch.device("cpu")
    independent = initial_noise(shape, _seed(3), cpu)
    torch.testing.assert_close(independent, randn(shape, _seed(3), cpu, torch.float32), rtol=0, atol=0)
    same = initial_noise(shape, _seed(3), cpu, 1.0)
    torch.testing.assert_close(same[:, :, 0], same[:, :, 2])
    assert not torch.allclose(same[:, :, 0], independent[:, :, 0])
    g = _seed(4)
    expected = correlate_frames(randn(shape, g, cpu, torch.float32), randn(shared_noise_shape(shape), g, cpu,
                                torch.float32), 0.5)  # fmt: skip
    torch.testing.assert_close(initial_noise(shape, _seed(4), cpu, 0.5), expected, rtol=0, atol=0)


def test_correlate_frames_statistics():
    from motif_video.core.latent_space import correlate_frames, shared_noise_shape

    g = torch.Generator().manual_seed(0)
    shape = (64, 4, 3, 16, 16)
    noise, shared = torch.randn(shape, generator=g), torch.randn(shared_noise_shape(shape), generator=g)
    assert correlate_frames(noise, shared, 0.0) is noise
    for rho in (0.5, 0.9):
        eps = correlate_frames(noise, shared, rho)
        a, b = eps[:, :, 0].flatten(), eps[:, :, 2].flatten()
        assert abs(float(eps.std()) - 1.0) < 0.02
        assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1]) - rho) < 0.02
    same = correlate_frames(noise, shared, 1.0)
    torch.testing.assert_close(same[:, :, 0], same[:, :, 2])


def test_image_to_video_matches_diffusers(parts, ours):
    ref = _run(
        _reference(parts, 8.0, i2v=True), image=_image(), prompt=PROMPT, negative_prompt=NEGATIVE, generator=_seed()
    )
    got = _run(ours, image=_image(), prompt=PROMPT, negative_prompt=NEGATIVE, generator=_seed())  # shift 8
    np.testing.assert_allclose(got, ref, atol=TOL, rtol=0)
    mode = _run(
        ours, image=_image(), prompt=PROMPT, negative_prompt=NEGATIVE, generator=_seed(), first_frame_latent="mode"
    )
    assert np.abs(mode - ref).max() > 100 * TOL  # the option changes what it says


def test_same_seed_same_video_and_batched_guidance(ours):
    a = _run(ours, prompt=PROMPT, generator=_seed(7))
    b = _run(ours, prompt=PROMPT, generator=_seed(7))
    np.testing.assert_array_equal(a, b)
    c = _run(ours, prompt=PROMPT, generator=_seed(8))
    assert np.abs(a - c).max() > 1e-3
    unbatched = _run(ours, prompt=PROMPT, generator=_seed(7), batch_guidance=False)
    np.testing.assert_allclose(unbatched, a, atol=TOL, rtol=0)


def test_i2v_several_videos_per_prompt_and_one_image_for_several_prompts(ours):
    """Both crash in the reference. With a generator per video and the posterior mode, video k of a batch is the
    single-video run with generator k."""
    kw = dict(image=_image(), negative_prompt=NEGATIVE, first_frame_latent="mode")
    batch = _run(ours, prompt=PROMPTS, num_videos_per_prompt=2, generator=[_seed(s) for s in range(4)], **kw)
    assert batch.shape == (4, FRAMES, H, W, 3)
    for k in range(4):
        single = _run(ours, prompt=PROMPTS[k // 2], generator=_seed(k), **kw)
        np.testing.assert_allclose(batch[k], single[0], atol=TOL, rtol=0)


def test_i2v_one_image_per_prompt(ours):
    images = [_image(4), _image(5)]
    kw = dict(negative_prompt=NEGATIVE, first_frame_latent="mode")
    both = _run(ours, prompt=PROMPTS, image=images, generator=[_seed(0), _seed(1)], **kw)
    second = _run(ours, prompt=PROMPTS[1], image=images[1], generator=_seed(1), **kw)
    np.testing.assert_allclose(both[1], second[0], atol=TOL, rtol=0)
    with pytest.raises(ValueError, match="3 images for 2 prompts"):
        _run(ours, prompt=PROMPTS, image=[_image(), _image(), _image()])


def test_fp32_vae_under_bf16_transformer(release):
    # (the tiny random text encoder in bf16 would dominate the difference: APG's scale 8 amplifies it)
    pipe = MotifVideoPipeline.from_pretrained(
        str(release), torch_dtype=torch.bfloat16, vae_dtype=torch.float32, text_encoder_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.dtype == torch.bfloat16 and next(pipe.vae.parameters()).dtype == torch.float32
    out = _run(pipe, prompt=PROMPT, image=_image(), generator=_seed())
    assert out.dtype == np.float32 and np.isfinite(out).all()
    fp32 = MotifVideoPipeline.from_pretrained(str(release))
    fp32.set_progress_bar_config(disable=True)
    ref = _run(fp32, prompt=PROMPT, image=_image(), generator=_seed())
    other_seed = _run(fp32, prompt=PROMPT, image=_image(), generator=_seed(2))
    # bf16 transformer: the same video, up to rounding far below a change of seed
    assert np.abs(out - ref).mean() < 0.1 * np.abs(other_seed - ref).mean()


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(height=40), "multiple of 16"),
        (dict(width=24), "multiple of 16"),
        (dict(num_frames=10), "4k\\+1"),
        (dict(prompt=""), "non-empty"),
        (dict(prompt=[]), "empty"),
        (dict(output_type="mp4"), "output_type"),
        (dict(image=_image(), num_frames=1), "at least 5 frames"),
    ],
)
def test_bad_arguments_are_clear_errors(ours, kw, match):
    args = dict(prompt=PROMPT) | kw
    with pytest.raises(ValueError, match=match):
        _run(ours, **args)


def test_video_size_check_follows_the_model_patch():
    from types import SimpleNamespace

    from motif_video.core.latent_space import check_video_size, model_patch

    check_video_size(24, 40, 17, patch=1)  # VAE 8x and patch 1: multiples of 8
    with pytest.raises(ValueError, match="multiple of 16"):
        check_video_size(24, 40, 17)  # the official patch 2
    check_video_size(32, 32, 17, patch=2, patch_t=5)  # 5 latent frames
    with pytest.raises(ValueError, match=r"3 latent frames, not a multiple of the model's temporal patch 5 \(try 17"):
        check_video_size(32, 32, 9, patch=2, patch_t=5)
    assert model_patch(SimpleNamespace(config=SimpleNamespace(patch_size=1, patch_size_t=5))) == (1, 5)
    assert model_patch(SimpleNamespace()) == (2, 1)


def test_custom_schedules_and_samplers(ours):
    default = _run(ours, prompt=PROMPT, generator=_seed(), shift=15.0)
    sig = flow_sigmas(STEPS, 15.0)
    np.testing.assert_allclose(
        _run(ours, prompt=PROMPT, generator=_seed(), sigmas=sig.tolist(), num_inference_steps=None),
        default,
        atol=1e-6,
        rtol=0,
    )
    np.testing.assert_allclose(
        _run(ours, prompt=PROMPT, generator=_seed(), timesteps=(sig * 1000).tolist(), num_inference_steps=None),
        default,
        atol=1e-5,
        rtol=0,
    )
    scheduler = ours.scheduler
    try:
        for other in (UniPCMultistepScheduler(), DPMSolverMultistepScheduler()):
            ours.scheduler = other
            out = _run(ours, prompt=PROMPT, generator=_seed(), shift=15.0)
            assert np.isfinite(out).all() and np.abs(out - default).max() > 0  # ran, on its own update rule
            assert ours.last_call["scheduler"] == type(other).__name__
    finally:
        ours.scheduler = scheduler


def test_output_types_callbacks_and_interrupt(ours):
    latents = _run(ours, prompt=PROMPT, generator=_seed(), output_type="latent")
    assert latents.shape == (1, 16, 3, H // 8, W // 8)
    decoded = ours.decode(latents, "np")
    np.testing.assert_allclose(decoded, _run(ours, prompt=PROMPT, generator=_seed()), atol=1e-6, rtol=0)
    pil = _run(ours, prompt=PROMPT, generator=_seed(), output_type="pil")
    assert len(pil) == 1 and len(pil[0]) == FRAMES and pil[0][0].size == (W, H)
    pt = _run(ours, prompt=PROMPT, generator=_seed(), output_type="pt")
    assert tuple(pt.shape) == (1, FRAMES, 3, H, W)

    seen = []

    def callback(pipe, i, t, tensors):
        seen.append((i, float(t), tuple(tensors["latents"].shape)))
        if i == 1:
            pipe.interrupt()
        return {"latents": tensors["latents"]}

    _run(ours, prompt=PROMPT, generator=_seed(), output_type="latent", callback_on_step_end=callback)
    assert [s[0] for s in seen] == [0, 1] and seen[0][2] == (1, 16, 3, 4, 4)
    with pytest.raises(ValueError, match="callback_on_step_end_tensor_inputs"):
        _run(ours, prompt=PROMPT, callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["noise_pred"])


def test_save_and_reload_round_trip(ours, tmp_path):
    ours.save_pretrained(str(tmp_path / "saved"))
    again = MotifVideoPipeline.from_pretrained(str(tmp_path / "saved"))
    again.set_progress_bar_config(disable=True)
    a = _run(ours, prompt=PROMPT, generator=_seed())
    np.testing.assert_array_equal(_run(again, prompt=PROMPT, generator=_seed()), a)
    index = json.loads((tmp_path / "saved" / "model_index.json").read_text())
    assert index["transformer"] == ["diffusers", "MotifVideoTransformer3DModel"]
    assert index["guider"] == ["diffusers", "AdaptiveProjectedGuidance"]
    # diffusers loads what we write
    ReferencePipeline.from_pretrained(str(tmp_path / "saved"))


def test_broken_release_folders(release, tmp_path):
    with pytest.raises(CheckpointError, match="model_index.json is missing"):
        MotifVideoPipeline.from_pretrained(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(release, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(CheckpointError, match="transformer/ folder"):
        MotifVideoPipeline.from_pretrained(str(broken))
    with pytest.raises(CheckpointError, match="not in the local hub cache|cannot fetch"):
        MotifVideoPipeline.from_pretrained("nobody/no-such-model", local_files_only=True)


def test_embeddings_only_pipeline(ours):
    """Without a text encoder: prompt embeddings work, and a negative prompt that would need encoding is a
    clear error."""
    bare = MotifVideoPipeline(transformer=ours.transformer, vae=ours.vae, scheduler=ours.scheduler)
    bare.set_progress_bar_config(disable=True)
    embeds = torch.randn(1, 5, get_preset("tiny").text_embed_dim, generator=_seed())
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        _run(bare, prompt_embeds=embeds)
    out = _run(bare, prompt_embeds=embeds, guidance="none", generator=_seed())
    guided = _run(bare, prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds), generator=_seed())
    assert out.shape == guided.shape == (1, FRAMES, H, W, 3) and np.abs(out - guided).max() > 1e-3
