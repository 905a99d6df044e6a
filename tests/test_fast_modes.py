"""The GPU fast modes as options, checked on CPU: whole-step reuse (`cache=...,skip=S`), FP8 compute, CUDA graphs and
the attention kernel as `motif-video generate` flags, each refused before any model load where it cannot run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from motif_video.models import attention as attention_module
from motif_video.pipeline import MotifVideoPipeline, quantization
from motif_video.pipeline.compile import compile_blocks, compile_problem
from motif_video.pipeline.step_cache import StepCache
from motif_video.pipeline.tiny import build_tiny_components
from motif_video.training.flops import sampling_flops

PROMPTS = ["a red dog runs on the beach", "a small blue bird flies over the green trees at night"]
SIZE = dict(height=32, width=32, num_frames=9)
GRID = dict(latent_frames=3, latent_height=4, latent_width=4)
SMALL = ["--preset", "tiny", "--height", "32", "--width", "48", "--num-frames", "9", "--steps", "2"]


@pytest.fixture(scope="module")
def pipe() -> MotifVideoPipeline:
    p = MotifVideoPipeline.from_components(build_tiny_components(0))
    p.set_progress_bar_config(disable=True)
    return p


def _run(pipe: MotifVideoPipeline, steps: int = 6, **kwargs) -> torch.Tensor:
    args = dict(prompt=PROMPTS, negative_prompt="blurry", num_inference_steps=steps, **SIZE)
    return pipe(**args, generator=torch.Generator().manual_seed(3), output_type="latent", **kwargs).frames


# ------------------------------------------------------------------------------------------- whole-step reuse
def test_skip_parses_prints_and_refuses_bad_values():
    rule = StepCache.parse("ddt:2,uncond=2,skip=3,order=1")
    assert (rule.skip, rule.order, str(rule)) == (3, 1, "ddt:2,uncond=2,skip=3,order=1")
    assert StepCache.parse("ddt:2,skip=1") == StepCache("ddt", 2.0)
    for bad, message in (("ddt:2,skip=0", "skip must be >= 1"), ("ddt:2,order=2", "order 0 or 1")):
        with pytest.raises(ValueError, match=message):
            StepCache.parse(bad)
    with pytest.raises(ValueError, match="whole number"):
        StepCache.parse("ddt:2,skip=1.5")


def test_skip_1_is_exactly_the_rule_without_it_and_ddt1_skip1_is_exact_mode(pipe):
    exact = _run(pipe)
    assert torch.equal(_run(pipe, cache="ddt:1,skip=1"), exact)
    assert torch.equal(_run(pipe, cache="ddt:1,skip=1,order=1"), exact)
    assert torch.equal(_run(pipe, cache="ddt:2,skip=1"), _run(pipe, cache="ddt:2"))
    assert not torch.equal(_run(pipe, cache="ddt:1,skip=2"), exact)  # skipping really happens


def test_skipped_calls_run_no_transformer_and_the_flops_say_so(pipe):
    steps = 6
    text, mask = pipe.encode_prompt(PROMPTS)
    neg, neg_mask = pipe.encode_prompt(["blurry"] * 2)
    kwargs = dict(prompt_embeds=text, prompt_attention_mask=mask, negative_prompt_embeds=neg, **SIZE)
    kwargs |= dict(negative_prompt_attention_mask=neg_mask, num_inference_steps=steps, output_type="latent")
    counted = {}
    for rule in ("ddt:1", "ddt:2,skip=2"):
        counter = FlopCounterMode(display=False)
        with sdpa_kernel(SDPBackend.MATH), counter:
            pipe(**kwargs, cache=rule, generator=torch.Generator().manual_seed(0))
        calls = pipe.last_reuse.calls
        counted[rule] = counter.get_total_flops()
        assert sampling_flops(pipe.transformer.config, **GRID, calls=calls).matmul == counted[rule]
    cond = [(c.model, c.encoder) for c in calls if c.branch == "cond"]
    # model on calls 0, 2, 4; the encoder on every second of those (ddt:2 counts model calls)
    assert cond == [(True, True), (False, False), (True, False), (False, False), (True, True), (False, False)]
    assert "model on 3 of 6 calls" in pipe.last_call["cache"]["cond"]
    assert counted["ddt:2,skip=2"] < counted["ddt:1"] / 2


@pytest.mark.parametrize("order", [0, 1])
def test_a_skipped_call_reuses_or_extrapolates_the_velocity(pipe, order):
    from motif_video.pipeline.sampler import Condition
    from motif_video.pipeline.step_cache import EncoderReuse

    reuse = EncoderReuse(pipe.transformer, StepCache.parse(f"ddt:1,skip=2,order={order},warmup=2"), torch.float32)
    text, mask = pipe.encode_prompt(PROMPTS[:1])
    cond = Condition(text, mask, torch.zeros(1, 17, 3, 4, 4))
    latents = torch.randn(1, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    outs = [reuse(latents, torch.tensor([t]), cond) for t in (900.0, 800.0, 700.0, 600.0, 500.0)]
    assert [c.model for c in reuse.calls] == [True, True, False, True, False]  # warm-up 2, then every second
    expected = outs[1] + (outs[1] - outs[0]) * order  # linear in t: v(700) = 2 v(800) - v(900)
    assert torch.allclose(outs[2], expected, atol=1e-5)
    assert not torch.equal(outs[1], outs[0])


# ------------------------------------------------------------------------------------------------------ FP8
def test_fp8_compute_is_refused_on_cpu_with_what_to_change():
    problem = quantization.fp8_problem("dynamic", "cpu")
    assert problem is not None and "compute capability >= 8.9" in problem and "--fp8 weights" in problem
    assert "unknown FP8 mode" in quantization.fp8_problem("int4", "cpu")
    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Sequential(nn.Linear(32, 32))])
    with pytest.raises(ValueError, match="compute capability"):
        quantization.quantize_fp8(model, "dynamic-tensor")
    assert type(model.blocks[0][0].weight) is nn.Parameter  # refused before touching anything
    with pytest.raises(ValueError, match="granularity"):
        quantization.quantize_fp8_dynamic(nn.Module(), granularity="block", blocks=[])


def test_fp8_problem_names_an_old_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    problem = quantization.fp8_problem("dynamic", "cuda")
    assert "A100 has 8.0" in problem
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert quantization.fp8_problem("dynamic", "cuda") is None


def test_fp8_dynamic_targets_only_linears_that_fit_the_fp8_matmul(monkeypatch):
    monkeypatch.setattr(quantization, "fp8_problem", lambda mode, device: None)  # as on an H200
    seen = []

    def fake_quantize(block, config, filter_fn):
        seen.extend(m for m in block.modules() if isinstance(m, nn.Linear) and filter_fn(m, ""))
        assert type(config).__name__ == "Float8DynamicActivationFloat8WeightConfig"

    import torchao.quantization

    monkeypatch.setattr(torchao.quantization, "quantize_", fake_quantize)
    blocks = [nn.Sequential(nn.Linear(32, 64), nn.Linear(64, 24)), nn.Sequential(nn.Linear(16, 16))]
    with pytest.raises(ValueError, match="needs bf16 weights"):  # per-row scales: torchao asserts bf16 otherwise
        quantization.quantize_fp8_dynamic(nn.Module(), blocks=blocks)
    assert quantization.quantize_fp8_dynamic(nn.Module(), blocks=blocks, granularity="tensor") == 2
    blocks = [block.to(torch.bfloat16) for block in blocks]
    assert quantization.quantize_fp8_dynamic(nn.Module(), blocks=blocks) == 2
    assert [m.out_features for m in seen] == [64, 16, 64, 16]  # 64 -> 24 does not divide by 16


@pytest.mark.gpu
def test_fp8_dynamic_on_cuda_stays_close_to_bf16():
    if not torch.cuda.is_available() or quantization.fp8_problem("dynamic", "cuda") is not None:
        pytest.skip("needs a CUDA GPU of compute capability >= 8.9 and torchao")
    torch.manual_seed(0)
    layer = nn.Linear(256, 512).to("cuda", torch.bfloat16)
    x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16)
    exact = layer(x).float()
    for granularity in ("row", "tensor"):
        copy = nn.Linear(256, 512).to("cuda", torch.bfloat16)
        copy.load_state_dict(layer.state_dict())
        assert quantization.quantize_fp8_dynamic(copy, blocks=[copy], granularity=granularity) == 1
        rel = ((copy(x).float() - exact).norm() / exact.norm()).item()
        assert rel < 0.1, (granularity, rel)


# --------------------------------------------------------------------------------------------- CUDA graphs
def test_cudagraphs_are_refused_without_cuda():
    assert "needs --device cuda" in compile_problem("cudagraphs", "cpu")
    assert compile_problem("blocks", "cpu") is None
    assert "unknown compile mode" in compile_problem("graphs", "cpu")
    with pytest.raises(ValueError, match="inductor"):
        compile_blocks(nn.Module(), backend="eager", cudagraphs=True)


# ---------------------------------------------------------------------------------------- command-line flags
# The CLI is imported inside the tests that use it: it imports the server (fastapi), which the GPU machine lacks,
# and a module-level import there made `pytest -m gpu` stop at collection (tests/test_gpu_suite.py checks this).
def _generate(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    from motif_video.cli import main

    out = tmp_path / "clip.mp4"
    code = main(["generate", "--prompt", "a red dog runs on the beach", *SMALL, "--output", str(out), *extra])
    return code, out


REFUSED = [
    (["--fp8", "dynamic"], "compute capability >= 8.9"),
    (["--fp8", "dynamic-tensor"], "compute capability >= 8.9"),
    (["--compile", "cudagraphs"], "needs --device cuda"),
    (["--attention", "sage"], "sage"),
    (["--attention", "flash"], "flash"),
]


@pytest.mark.parametrize("extra, message", REFUSED, ids=[" ".join(r[0]) for r in REFUSED])
def test_unavailable_fast_modes_are_one_line_exit_2_before_loading(tmp_path, capsys, monkeypatch, extra, message):
    import motif_video.cli.generate as generate_module

    monkeypatch.setattr(generate_module, "build_pipeline", lambda settings: pytest.fail("loaded a model"))
    code, out = _generate(tmp_path, *extra)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and message in lines[0] and "Traceback" not in err, err
    assert not out.exists()


def test_unknown_choices_are_argparse_errors(tmp_path):
    for extra in (["--attention", "xformers"], ["--fp8", "int8"], ["--compile", "max"]):
        with pytest.raises(SystemExit) as stop:
            _generate(tmp_path, *extra)
        assert stop.value.code == 2


def test_flags_parse_and_are_recorded_in_the_sidecar(tmp_path, monkeypatch):
    import motif_video.pipeline.compile as compile_module
    from motif_video.cli.generate import GenerateSettings
    from motif_video.cli.main import build_parser

    if not quantization.is_fp8_available("cpu"):
        pytest.skip("torchao with float8 casts on CPU")
    eager = compile_module.compile_blocks
    compiled = []  # dynamo only (no C++ compiler run on CPU): the flag's wiring is what is tested
    monkeypatch.setattr(
        compile_module, "compile_blocks", lambda m, **kw: compiled.append(kw) or eager(m, backend="eager")
    )

    parser = build_parser()
    base = ["generate", "--prompt", "x"]
    args = parser.parse_args([*base, "--fp8"])
    assert (args.fp8, args.compile, args.attention) == ("weights", None, None)  # --fp8 alone: weight-only
    args = parser.parse_args([*base, "--fp8", "dynamic", "--compile", "--attention", "sdpa"])
    assert (args.fp8, args.compile, args.attention) == ("dynamic", "blocks", "sdpa")
    assert GenerateSettings(["x"], fp8=True).fp8 == "weights" and GenerateSettings(["x"], fp8=False).fp8 is None
    code, out = _generate(tmp_path, "--attention", "sdpa", "--compile", "--fp8")
    record = json.loads(out.with_suffix(".json").read_text())["settings"]
    assert code == 0 and (record["attention"], record["compile"], record["fp8"]) == ("sdpa", "blocks", "weights")
    assert compiled == [{"cudagraphs": False}]


def test_attention_flag_sets_the_backend(monkeypatch):
    from motif_video.cli.generate import GenerateSettings, build_pipeline

    chosen = []
    monkeypatch.setattr(attention_module, "set_attention_backend", chosen.append)
    build_pipeline(GenerateSettings(["x"], preset="tiny", attention="sdpa"))
    assert chosen == ["sdpa"]


def test_steady_skips_only_where_the_calibrated_change_is_small(pipe):
    from motif_video.pipeline.sampler import Condition
    from motif_video.pipeline.step_cache import EncoderReuse

    rule = StepCache.parse("ddt:1,skip=2,steady=0.1")
    assert str(rule) == "ddt:1,skip=2,steady=0.1"
    with pytest.raises(ValueError, match="calibration"):
        EncoderReuse(pipe.transformer, rule, torch.float32)
    # the change per 1000 of t: 5 (moving fast) above t = 500, 0.5 (steady) below
    curve = {"t": [999.0, 501.0, 499.0, 1.0], "cond": [5.0, 5.0, 0.5, 0.5], "uncond": [5.0, 5.0, 0.5, 0.5]}
    reuse = EncoderReuse(pipe.transformer, rule, torch.float32, curve=curve)
    text, mask = pipe.encode_prompt(PROMPTS[:1])
    cond = Condition(text, mask, torch.zeros(1, 17, 3, 4, 4))
    latents = torch.randn(1, 16, 3, 4, 4)
    for t in (900.0, 800.0, 700.0, 600.0, 400.0, 300.0, 200.0, 100.0):
        reuse(latents, torch.tensor([t]), cond)
    # 100 of t above 500 is a change of 0.5 (run); below 500 it is 0.05 (skip, at most every second call)
    assert [c.model for c in reuse.calls] == [True, True, True, True, True, False, True, False]
