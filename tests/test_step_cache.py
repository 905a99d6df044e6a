"""Step reuse (`pipe(..., cache=...)`): off by default and then exact; "ddt:1" is the plain forward; a refresh call
is the plain forward; the recorded calls count FLOPs that match FlopCounterMode and drop as the rule says."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from motif_video.cli.main import build_parser
from motif_video.pipeline import GenerationSettings, MotifVideoPipeline
from motif_video.pipeline.sampler import Condition, stack_for_guidance
from motif_video.pipeline.step_cache import EncoderCall, EncoderReuse, StepCache
from motif_video.pipeline.tiny import build_tiny_components
from motif_video.training.flops import forward_flops, sampling_flops

PROMPTS = ["a red dog runs on the beach", "a small blue bird flies over the green trees at night"]
SIZE = dict(height=32, width=32, num_frames=9)
GRID = dict(latent_frames=3, latent_height=4, latent_width=4)


@pytest.fixture(scope="module")
def pipe() -> MotifVideoPipeline:
    p = MotifVideoPipeline.from_components(build_tiny_components(0))
    p.set_progress_bar_config(disable=True)
    return p


def _run(pipe: MotifVideoPipeline, steps: int = 4, **kwargs) -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    args = dict(prompt=PROMPTS, negative_prompt="blurry", num_inference_steps=steps, generator=generator, **SIZE)
    return torch.as_tensor(pipe(**args, output_type="pt", **kwargs).frames)


def test_off_and_ddt1_give_the_default_frames_exactly(pipe):
    default = _run(pipe)
    assert pipe.last_reuse is None and "cache" not in pipe.last_call
    assert torch.equal(_run(pipe, cache="off"), default)
    assert torch.equal(_run(pipe, cache="ddt:1"), default)  # the cached path, refreshing on every call
    assert pipe.last_call["cache"]["rule"] == "ddt:1"
    assert not torch.equal(_run(pipe, cache="ddt:2"), default)  # reuse really happens


def _conditions(pipe, b: int = 2) -> tuple[Condition, Condition]:
    text, mask = pipe.encode_prompt(PROMPTS)
    neg, neg_mask = pipe.encode_prompt(["blurry"] * b)
    channels = torch.zeros(b, 17, 3, 4, 4)
    return Condition(text, mask, channels), Condition(neg, neg_mask, channels, branch="uncond")


def _forward(pipe, latents, t, cond):
    x = torch.cat([latents, cond.channels], 1)
    return pipe.transformer(x, t, cond.text, cond.mask, return_dict=False)[0]


def test_refresh_calls_are_the_plain_forward_and_reuse_calls_are_not(pipe):
    cond, uncond = _conditions(pipe)
    joint = stack_for_guidance(cond, uncond)
    reuse = EncoderReuse(pipe.transformer, StepCache.parse("ddt:2"), torch.float32)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for step in range(4):
            latents = torch.randn(4, 16, 3, 4, 4, generator=g)
            t = torch.full((4,), 900.0 - 200 * step)
            out, plain = reuse(latents, t, joint), _forward(pipe, latents, t, joint)
            assert torch.equal(out, plain) == (step % 2 == 0), step
    assert [c.encoder for c in reuse.calls] == [True, True, False, False] * 2


def test_guidance_aware_reuses_the_unconditional_half_only(pipe):
    cond, uncond = _conditions(pipe)
    joint = stack_for_guidance(cond, uncond)
    reuse = EncoderReuse(pipe.transformer, StepCache.parse("ddt:1,uncond=2"), torch.float32)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        reuse(torch.randn(4, 16, 3, 4, 4, generator=g), torch.full((4,), 900.0), joint)
        latents, t = torch.randn(4, 16, 3, 4, 4, generator=g), torch.full((4,), 700.0)
        out, plain = reuse(latents, t, joint), _forward(pipe, latents, t, joint)
    # The conditional half ran its encoder alone (its own padding trimmed): the forward up to rounding.
    torch.testing.assert_close(out[:2], plain[:2], rtol=1e-4, atol=1e-5)
    assert (out[2:] - plain[2:]).abs().max() > 1e-3
    assert [(c.branch, c.encoder) for c in reuse.calls[2:]] == [("cond", True), ("uncond", False)]
    assert reuse.calls[2].text_len == int(cond.mask.sum(1).max())  # trimmed to the conditional prompts


def test_adaptive_runs_the_encoder_when_its_input_changed_enough(pipe):
    runs = {}
    for threshold in (0.0, 0.3, 100.0):
        _run(pipe, steps=6, cache=f"adaptive:{threshold}")
        runs[threshold] = sum(c.encoder for c in pipe.last_reuse.calls if c.branch == "cond")
    assert runs[0.0] == 6 and runs[100.0] == 1 and 1 <= runs[0.3] <= 6
    _run(pipe, steps=6, cache="adaptive:100,warmup=3")
    assert [c.encoder for c in pipe.last_reuse.calls if c.branch == "cond"] == [True] * 3 + [False] * 3


def _counted(pipe, cache: str, steps: int) -> tuple[int, list[EncoderCall]]:
    """Matmul FLOPs of the denoising loop (embeddings given, latents out) under FlopCounterMode, and its calls."""
    text, mask = pipe.encode_prompt(PROMPTS)
    neg, neg_mask = pipe.encode_prompt(["blurry"] * 2)
    counter = FlopCounterMode(display=False)
    kwargs = dict(prompt_embeds=text, prompt_attention_mask=mask, negative_prompt_embeds=neg)
    kwargs |= dict(negative_prompt_attention_mask=neg_mask, num_inference_steps=steps, output_type="latent")
    with sdpa_kernel(SDPBackend.MATH), counter:
        pipe(**kwargs, **SIZE, cache=cache, generator=torch.Generator().manual_seed(0))
    return counter.get_total_flops(), pipe.last_reuse.calls


def test_flops_per_video_match_the_counter_and_drop_as_the_rule_says(pipe):
    steps = 6
    config = pipe.transformer.config
    exact, exact_calls = _counted(pipe, "ddt:1", steps)
    reused, calls = _counted(pipe, "ddt:3", steps)
    assert sampling_flops(config, **GRID, calls=exact_calls).matmul == exact
    assert sampling_flops(config, **GRID, calls=calls).matmul == reused
    # guided steps (the tiny guider: all of them) run [cond; uncond] as one batch of 4 rows
    assert [c.encoder for c in calls if c.branch == "cond"] == [True, False, False] * 2
    text_len = exact_calls[0].text_len
    full = forward_flops(config, batch=4, **GRID, text_len=text_len)
    encoder = full.only(("dual", "single")).matmul
    assert exact == steps * full.matmul
    assert reused == steps * full.matmul - 4 * encoder  # 4 of the 6 calls skip the encoder


def test_parse_and_settings():
    assert StepCache.parse(None) is None and StepCache.parse("off") is None
    rule = StepCache.parse("adaptive:0.25,uncond=2,warmup=3")
    assert (rule.rule, rule.value, rule.uncond, rule.warmup) == ("adaptive", 0.25, 2.0, 3)
    assert StepCache.parse(str(rule)) == rule and str(StepCache.parse("ddt:2")) == "ddt:2"
    for bad in ("ddt", "ddt:0", "ddt:1.5", "adaptive:-1", "fast:2", "ddt:2,uncond=0.5", "ddt:2,speed=3"):
        with pytest.raises(ValueError):
            StepCache.parse(bad)
    assert GenerationSettings(cache="ddt:2").call_kwargs()["cache"] == "ddt:2"
    assert "cache" not in GenerationSettings().call_kwargs()
    with pytest.raises(ValueError, match="cache"):
        GenerationSettings(cache="ddt:0").validate()
    args = build_parser().parse_args(["generate", "--prompt", "a dog", "--cache", "ddt:3"])
    assert args.cache == "ddt:3"


def test_split_encoder_runs_no_masked_attention_and_matches_the_forward(pipe, monkeypatch):
    import motif_video.models.blocks as blocks

    cond, uncond = _conditions(pipe)
    joint = stack_for_guidance(cond, uncond)  # unequal text lengths: the batched pass needs a key mask
    masks = []
    real = blocks.attention
    monkeypatch.setattr(blocks, "attention", lambda q, k, v, mask=None: masks.append(mask) or real(q, k, v, mask))
    latents, t = torch.randn(4, 16, 3, 4, 4, generator=torch.Generator().manual_seed(2)), torch.full((4,), 800.0)
    with torch.no_grad():
        plain = _forward(pipe, latents, t, joint)
        assert any(m is not None for m in masks)
        masks.clear()
        split = EncoderReuse(pipe.transformer, StepCache("ddt"), torch.float32, split=True)(latents, t, joint)
    assert masks and all(m is None for m in masks)
    torch.testing.assert_close(split, plain, rtol=1e-4, atol=1e-5)
    frames = _run(pipe, split_encoder=True)
    torch.testing.assert_close(frames, _run(pipe), rtol=0, atol=1e-4)
    assert pipe.last_reuse is None and GenerationSettings(split_encoder=True).call_kwargs()["split_encoder"]


def test_split_encoder_is_automatic_on_cuda_only_and_checked_before_any_work(pipe, monkeypatch):
    from motif_video.pipeline.model_function import model_function, resolve_split

    assert resolve_split(None, torch.device("cuda", 0)) and resolve_split("auto", "cuda")
    assert not resolve_split(None, "cpu") and not resolve_split("off", "cuda") and resolve_split("on", "cpu")
    # "auto" on a CUDA device: the guidance batch's encoder splits (deciding needs no GPU, only the device)
    fn, reuse = model_function(pipe.transformer, torch.float32, torch.device("cuda"))
    assert fn is reuse and reuse.split and str(reuse.rule) == "ddt:1"
    assert model_function(pipe.transformer, torch.float32, torch.device("cuda"), split_encoder="off")[1] is None
    assert model_function(pipe.transformer, torch.float32, torch.device("cuda"), guided=False)[1] is None
    assert model_function(pipe.transformer, torch.float32, torch.device("cpu"))[1] is None
    # CLI: the flag alone is "on"; the default is auto; a bad value is refused before any model loads
    parse = build_parser().parse_args
    assert parse(["generate", "--prompt", "a", "--split-encoder"]).split_encoder == "on"
    assert parse(["generate", "--prompt", "a", "--split-encoder", "off"]).split_encoder == "off"
    assert parse(["generate", "--prompt", "a"]).split_encoder is None
    with pytest.raises(ValueError, match="split_encoder"):
        GenerationSettings(split_encoder="sideways").validate()
    monkeypatch.setattr(pipe, "encode_prompt", lambda *a, **k: pytest.fail("encoded before checking the options"))
    with pytest.raises(ValueError, match="split_encoder"):
        _run(pipe, split_encoder="sideways")
    with pytest.raises(ValueError, match="LoRA scale"):
        _run(pipe, attention_kwargs={"scale": 0.5})
    monkeypatch.undo()
    _run(pipe, split_encoder="on")
    assert pipe.last_reuse.split and pipe.last_call["cache"]["rule"] == "ddt:1, split encoder"
    _run(pipe, split_encoder="on", batch_guidance=False)  # two separate passes: no guidance batch to split
    assert pipe.last_reuse is None


def test_calibrated_rule_follows_the_stored_curve(pipe):
    from motif_video.pipeline.step_cache import calibrate

    curve = calibrate(pipe, PROMPTS, negative_prompt="blurry", num_inference_steps=5, **SIZE)
    assert len(curve["t"]) == 4 and len(curve["cond"]) == len(curve["uncond"]) == 4
    assert all(r > 0 for r in curve["cond"] + curve["uncond"]) and curve["t"] == sorted(curve["t"], reverse=True)
    with pytest.raises(ValueError, match="calibration"):
        _run(pipe, cache="calibrated:0.1")  # the tiny release stores none
    # A curve that says the conditional output never moves and the unconditional one always does
    pipe.defaults = pipe.defaults.__class__(**{**vars(pipe.defaults), "step_cache": dict(curve, cond=[0.0] * 4)})
    try:
        _run(pipe, steps=5, cache="calibrated:0.001")
    finally:
        pipe.defaults = pipe.defaults.__class__(**{**vars(pipe.defaults), "step_cache": None})
    runs = {b: [c.encoder for c in pipe.last_reuse.calls if c.branch == b] for b in ("cond", "uncond")}
    assert runs == {"cond": [True] + [False] * 4, "uncond": [True] * 5}
