"""One GPU run that measures the speed work against diffusers and prints ONE table (at most 7 minutes on one H200).

The GPU machine has no network: gather the wheels it lacks here first (`bash benchmarks/gather_gpu_wheels.sh`,
into .whl/), carry .whl/ along, and there, from the repository root:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site:$PWD/src && python3 benchmarks/gpu_suite.py --out $OUT/gpu_suite.md
    python benchmarks/gpu_suite.py --smoke       # every section at tiny sizes on CPU (tests/test_gpu_suite.py)

Components, random weights at official sizes, bf16: our 2B transformer (`from_preset("motif-video-2b")` plus weight
noise, q/k/v fused) and diffusers' `MotifVideoTransformer3DModel` holding the same weights; for the memory modes
also a T5Gemma2 encoder with the official 4B-4B encoder config (Gemma 3 4B text stack and its SigLIP so400m tower
at 896 px; `--text-encoder stand-in` for the 2-layer stand-in) and the Wan 2.1 VAE (`AutoencoderKLWan()`). Prompt
embeddings are random, 120 (prompt) / 100 (negative) valid tokens: padded to 512 with masks for the reference (as
it pads), trimmed for ours. No video is encoded; frames are decoded only in the memory modes.

Sections, in this order, each with its own time budget (`BUDGET_S`, scaled to `--budget`); a case that would
not fit what is left of its section or of the run is skipped with the reason:
  parity    one bf16 forward at 832x480x49 (B=1, and B=2 with unequal text lengths): ours vs diffusers
  step      time per denoising step (APG on every step, i.e. guidance on) at 832x480x49: diffusers' pipeline,
            our exact mode (split encoder on CUDA), "batched" and each fast mode (`_common.device_modes`; "sage"
            with split when sageattention is installed)
  step-720  1280x736x121: diffusers, the headline fast mode (`_common.HEADLINE`) and the modes of
            `_common.DERIVED` estimated from its refresh and reuse steps, then our exact mode (the headline's
            refresh step is an exact step: a short budget drops the exact row, not the headline), then "batched"
  precision each lower-precision mode against bf16 at 832x480x49 (`suite_precision.py`): "sage", "fp8-dynamic",
            "fp8-dynamic-tensor", "fp8-weights": the velocity's error in one forward, the latents' PSNR after a
            few steps, ms/step
  training  a training step with and without TREAD (`suite_training.py`, `bench_tread`: checkpointing, time, MFU)
  pytest    `pytest -m gpu` (`suite_pytest.py`: the failed tests named, or the one running when time ran out)
  parallel  the parallel code path at degree 1 against the plain one at 832x480x49 (`suite_parallel.py`: a process
            group of one; `--parallel cp=1,cfg=1` and the context-parallel transformer at P=1)
  memory    peak memory and step time of each memory mode at 832x480x49 (`bench_memory_modes.measure`)
  compile   opt-in on the GPU (`--sections ... compile`; the smoke run includes it): our exact mode with
            compiled blocks (`pipeline.compile`), and "compile+cudagraphs" (the same in inductor's
            reduce-overhead mode: CUDA graphs; GPU only, a "not run" row on CPU), compile time in the note
Per step: "ms/step" is the mean interval between step-end callbacks (after a CUDA synchronize) over steps 2..S of
one timed call, S = 1 + whole periods of the mode's encoder-reuse pattern; at 1280x736x121 over steps 1..S of one
period, step 1 timed from the call's start (a step there takes ~20 s, the set-up milliseconds). On random weights
the adaptive and calibrated rules' encoder counts mean nothing; quality is measured on CPU (`bench_speed.py`).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers import MotifVideoPipeline as ReferencePipeline
from diffusers.utils import logging as diffusers_logging

from _common import (
    DERIVED,
    HEADLINE,
    MODES,
    StepMarks,
    attention_backend,
    call_shares,
    device_modes,
    fmt_ms,
    mode_options,
    period,
    versions,
)
from bench_pipeline import GPU_TEXT, random_official_transformer, reference_transformer, text_embeddings
from bench_transformer import make_inputs
from motif_video.atomic import write_text
from motif_video.core.flow import DEFAULT_SHIFT_T2V
from motif_video.core.release import read_defaults, read_index, small_model_dir
from motif_video.models.attention import available_backends
from motif_video.pipeline import MotifVideoPipeline
from motif_video.pipeline.compile import compile_blocks, uncompile_blocks
from motif_video.pipeline.tiny import build_guider, build_vae
from suite_memory import memory
from suite_parallel import parallel
from suite_precision import precision
from suite_pytest import pytest_gpu
from suite_training import training

BUDGET_S = {"parity": 15, "step": 85, "step-720": 115, "precision": 40, "training": 30, "pytest": 40}
BUDGET_S |= {"parallel": 20, "memory": 45}  # sum 390
BUDGET_S["compile"] = 120  # opt-in on the GPU (`--sections ... compile`): inductor's compile time there is unknown
DEFAULT_SECTIONS = tuple(name for name in BUDGET_S if name != "compile")
FULL = dict(preset="motif-video-2b", dtype=torch.bfloat16, sizes=((832, 480, 49), (1280, 736, 121)), route=(2, 24, 0.5))
FULL["scale"] = 22.0  # a 720p step over a 480p one (diffusers' forward: 11,250 / 515 ms), to skip what cannot fit
SMOKE = dict(preset="tiny", dtype=torch.float32, sizes=((32, 32, 9), (48, 32, 9)), route=(1, 5, 0.5), scale=2.0)
COMPILE_CASES = ("compile", "compile+cudagraphs")
COMPILE_S = 150.0  # a guess at compiling the blocks with inductor (dynamic shapes) on the GPU, to skip what cannot fit


@dataclass
class Suite:
    """The run: its clock, where it runs, and the table's rows (section, case, ours, diffusers, ratio, note)."""

    device: torch.device
    dtype: torch.dtype
    smoke: bool
    budget: float
    start: float = field(default_factory=time.perf_counter)
    chosen: tuple[str, ...] = tuple(BUDGET_S)
    rows: list[tuple[str, ...]] = field(default_factory=list)
    section_end: float = 0.0
    banked: float = 0.0
    out: Path | None = None  # the markdown table, rewritten after every row: a killed run still leaves its table

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def left(self) -> float:
        """Seconds left in the current section (and in the run)."""
        now = time.perf_counter()
        return min(self.section_end - now, self.start + self.budget - now)

    def fits(self, section: str, case: str, estimate_s: float) -> bool:
        if estimate_s <= self.left():
            return True
        self.add(section, case, "-", "-", "-", f"skipped: needs ~{estimate_s:.0f} s, {max(self.left(), 0):.0f} s left")
        return False

    def add(self, *cells: str) -> None:
        self.rows.append(tuple(cells))
        print("| " + " | ".join(cells) + " |", file=sys.stderr, flush=True)
        self.save()

    def save(self) -> None:
        if self.out is not None:
            write_text(self.out, table(self) + "\n")

    @contextmanager
    def case(self, label: str, case: str) -> Iterator[None]:
        """One case of a section: its failure (an OOM, a kernel that refuses the inputs) is a row, and the
        section goes on with its next case."""
        try:
            yield
        except Exception as error:
            self.add(label, case, "-", "-", "-", f"error: {type(error).__name__}: {str(error)[:160]}")
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def section(self, name: str, run: Callable[[], None]) -> None:
        share = BUDGET_S[name] / sum(BUDGET_S[c] for c in self.chosen) * self.budget
        self.section_end = time.perf_counter() + share + self.banked  # what earlier sections left unused
        started = time.perf_counter()
        try:
            run()
        except Exception as error:  # one section's failure is a row, not the end of the run
            self.add(name, "error", "-", "-", "-", f"{type(error).__name__}: {str(error)[:160]}")
        finally:
            try:
                gc.collect()
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()  # raises again after a sticky CUDA error: a row, not the end of the run
            except Exception as error:
                self.add(name, "cleanup error", "-", "-", "-", f"{type(error).__name__}: {str(error)[:160]}")
            self.banked = max(self.section_end - time.perf_counter(), 0.0)
        print(f"  section {name}: {time.perf_counter() - started:.1f} s", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------
# Sections
# ------------------------------------------------------------------------------------------------------------
def parity(s: Suite, ours: Any, ref: Any, size: tuple[int, int, int]) -> None:
    width, height, frames = size
    grid = ((frames - 1) // 4 + 1, height // 8, width // 8)
    for valid in ([GPU_TEXT[1]], [GPU_TEXT[1], GPU_TEXT[2]]):
        torch.manual_seed(0)
        inputs = make_inputs(ours.config, grid, valid, GPU_TEXT[0], s.device, s.dtype)
        with torch.inference_mode():
            a = ours(**inputs, return_dict=False)[0].float()
            b = ref(**inputs, return_dict=False)[0].float()
        diff, rel = (a - b).abs().max().item(), ((a - b).norm() / b.norm()).item()
        case = f"forward B={len(valid)}, text {GPU_TEXT[0]} ({'/'.join(map(str, valid))} valid)"
        s.add(f"parity {width}x{height}x{frames}", case, f"max abs diff {diff:.2e}", "-", "-", f"relative L2 {rel:.2e}")


def pipelines(s: Suite, ours_model: Any, ref_model: Any) -> tuple[MotifVideoPipeline, Any]:
    vae = build_vae().to(s.device)  # only its config is read: output_type="latent"
    scheduler = lambda: FlowMatchEulerDiscreteScheduler(shift=DEFAULT_SHIFT_T2V)  # noqa: E731
    ours = MotifVideoPipeline.from_components(
        dict(transformer=ours_model, vae=vae, scheduler=scheduler(), guider=build_guider())
    )
    ref = ReferencePipeline(
        scheduler=scheduler(), vae=vae, text_encoder=None, tokenizer=None, transformer=ref_model, guider=build_guider()
    )
    for pipe in (ours, ref):
        pipe.set_progress_bar_config(disable=True)
    return ours, ref


def step_ms(
    s: Suite, pipe: Any, args: dict[str, Any], steps: int, first: bool = False, **options: Any
) -> tuple[float, list[float]]:
    """(mean ms/step over steps 2..steps, each of those steps' ms); `first`: over steps 1..steps, step 1 timed from
    the call's start (at a size where a step takes seconds and the set-up, with text and noise given, milliseconds)."""
    marks = StepMarks(s.sync)
    noise = args["latents"].clone()
    with torch.inference_mode(), attention_backend(options.pop("backend", None)):
        marks.begin()
        pipe(**{**args, "latents": noise}, num_inference_steps=steps, callback_on_step_end=marks, **options)
    return marks.mean_ms(first), marks.intervals_ms(first)


def steps_section(
    s: Suite,
    pipes: tuple[Any, Any],
    text: dict,
    size: tuple[int, int, int],
    modes: list[str],
    estimate_ms: float,
    ref_ms: float | None = None,
    short: bool = False,
) -> tuple[float, float | None]:
    """Diffusers' pipeline (unless `ref_ms` gives its ms/step), then ours in each mode, at one size; returns (our
    exact mode's ms/step or the estimate, diffusers' ms/step). `estimate_ms` (0: warm up first and time longer
    runs) guesses a step's cost until the first call here measures it; `short`: time one period of each mode from
    the call's start, step 1 included (for a size whose steps take seconds)."""
    ours, ref = pipes
    width, height, frames = size
    label = f"step {width}x{height}x{frames}"
    z = ours.transformer.config.out_channels
    noise = torch.randn(
        1, z, (frames - 1) // 4 + 1, height // 8, width // 8, generator=torch.Generator().manual_seed(0)
    )
    common = dict(height=height, width=width, num_frames=frames, output_type="latent", latents=noise.to(s.device))
    args = {"ours": {**common, **text["ours"], "shift": DEFAULT_SHIFT_T2V}, "ref": {**common, **text["ref"]}}
    first = estimate_ms == 0
    if first:  # warm-up calls (kernels, allocator); the larger size reuses them
        for name, pipe in (("ours", ours), ("ref", ref)):
            step_ms(s, pipe, args[name], 2)
    exact_ms = None
    for mode in (["diffusers"] if ref_ms is None else []) + modes:
        compiling = mode in COMPILE_CASES
        if mode == "compile+cudagraphs" and s.device.type != "cuda":
            s.add(label, mode, "-", "-", "-", "not run: CUDA graphs need a CUDA device")
            continue
        every = 1 if mode in ("diffusers", "sage") or compiling else period(mode)
        # whole periods after an untimed step (4+ of them at the first size); `short` (where a step takes seconds
        # and the kernels have run: a 720p step is ~20 s): one period, timed from the call's start
        steps = every if short else 1 + every * (-(-4 // every) if first else 1)
        span = f"steps {1 if short else 2}..{steps}"
        extra_s = (1 if s.smoke else COMPILE_S) * compiling
        if estimate_ms and not s.fits(label, mode, estimate_ms * (steps + 2 * compiling) / 1e3 + extra_s):
            continue
        started = time.perf_counter()
        with s.case(label, mode):
            if mode == "diffusers":
                ref_ms = step_ms(s, ref, args["ref"], steps, short)[0]
                s.add(label, "diffusers pipeline", "-", fmt_ms(ref_ms), "-", f"mean of {span}")
            else:
                ms, note, each = ours_mode(s, ours, args["ours"], mode, steps, short)
                exact_ms = ms if mode == "exact" else exact_ms
                ratio = f"{ms / ref_ms:.2f}" if ref_ms else "-"
                s.add(label, mode, fmt_ms(ms), fmt_ms(ref_ms) if ref_ms else "-", ratio, note)
                if mode == HEADLINE and short and len(each) == 2:  # ddt:2's step 1 refreshes, step 2 reuses
                    derived(s, label, each[1], each[0], ref_ms)
            if not compiling:  # its warm-up compiles: no measure of a step
                estimate_ms = max(estimate_ms, (time.perf_counter() - started) * 1e3 / steps)
    return exact_ms or estimate_ms, ref_ms


def derived(s: Suite, label: str, reuse_ms: float, refresh_ms: float, ref_ms: float | None) -> None:
    """Rows for modes too long to time here, from a reuse step and a refresh step (each branch's encoder costs
    about the same; a skipped call costs nothing): ms/step = (share of branch calls that run the model) x reuse +
    (share that run the encoder) x (refresh - reuse)."""
    for mode in DERIVED:
        model, share = call_shares(mode)
        ms = model * reuse_ms + share * (refresh_ms - reuse_ms)
        ratio = f"{ms / ref_ms:.2f}" if ref_ms else "-"
        note = f"derived: encoder on {share:.0%}, model on {model:.0%} of branch calls over 50 steps"
        s.add(label, f"{mode} (derived)", fmt_ms(ms), fmt_ms(ref_ms) if ref_ms else "-", ratio, note)


def ours_mode(
    s: Suite, ours: MotifVideoPipeline, args: dict[str, Any], mode: str, steps: int, first: bool = False
) -> tuple:
    """(our ms/step in one mode, the row's note, each step's ms). "sage": SageAttention kernels, with "split" (in
    the batched guidance pass the two text lengths need a key mask, and a masked call takes SDPA: without split the
    encoder's 28 blocks would not run Sage at all); "compile": regional compile (`pipeline.compile`), whose
    compilation happens in an untimed warm-up call; "compile+cudagraphs": the same with CUDA graphs."""
    if mode in COMPILE_CASES:
        graphs = mode == "compile+cudagraphs"
        compile_blocks(ours.transformer, backend="eager" if s.smoke else "inductor", cudagraphs=graphs)
        try:
            started = time.perf_counter()
            step_ms(s, ours, args, 2)
            compile_s = time.perf_counter() - started
            ms, each = step_ms(s, ours, args, steps)
            return ms, f"compiling + 2 warm-up steps: {compile_s:.0f} s", each
        finally:
            uncompile_blocks(ours.transformer)
    options = {"backend": "sage", **MODES["split"]} if mode == "sage" else mode_options(mode)
    ms, each = step_ms(s, ours, args, steps, first, **options)
    span = f"steps {1 if first else 2}..{steps}"
    reuse = ours.last_call.get("cache", {}) if "cache" in options else {}
    note = "; ".join(f"{k} {v}" for k, v in reuse.items() if k != "rule") or f"mean of {span}"
    note += "; with split (mask-free encoder): compare the exact row (split on CUDA)" if mode == "sage" else ""
    if "cache" in options and len(each) <= 3:  # e.g. ddt:2 at 720p: a refresh step, then a reuse step
        note += f"; {span}: " + ", ".join(f"{x:,.0f}" for x in each) + " ms"
    return ms, note, each


# ------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> Suite:
    cuda = torch.cuda.is_available() and not args.smoke
    setup = SMOKE if args.smoke else FULL
    sections = tuple(args.sections or (BUDGET_S if args.smoke else DEFAULT_SECTIONS))
    s = Suite(torch.device("cuda" if cuda else "cpu"), setup["dtype"], args.smoke, args.budget, chosen=sections)
    s.out = Path(args.out) if args.out else None
    if s.out is not None:
        s.out.parent.mkdir(parents=True, exist_ok=True)
    if not cuda and not args.smoke:
        raise SystemExit("no CUDA GPU: run with --smoke for the CPU check of this script")
    small, large = setup["sizes"]
    started = time.perf_counter()
    ours_model = random_official_transformer(s.device, s.dtype, 0, setup["preset"])
    ref_model = reference_transformer(ours_model)  # also fuses our q/k/v
    n = ours_model.num_parameters() / 1e9
    s.add("build", "transformers", f"{time.perf_counter() - started:.0f} s", "-", "-", f"{setup['preset']} ({n:.2f}B)")
    text = text_embeddings(ours_model.config.text_embed_dim, s.device, s.dtype, 0)
    pipes = pipelines(s, ours_model, ref_model)
    # Random weights have no calibration of their own: the calibrated rules run on the small model's curve
    pipes[0].defaults = replace(pipes[0].defaults, step_cache=read_defaults(read_index(small_model_dir())).step_cache)
    modes = device_modes(s.device) + (["sage"] if "sage" in available_backends() and cuda else [])
    chosen = set(sections)
    if "parity" in chosen:
        s.section("parity", lambda: parity(s, ours_model, ref_model, small))
    measured: dict[str, Any] = {"step": 0.0, "ref": None}
    if "step" in chosen:
        s.section("step", lambda: measured.update(zip(("step", "ref"), steps_section(s, pipes, text, small, modes, 0))))
    if "step-720" in chosen:
        guess = (measured["step"] or 1e3) * setup["scale"]  # from this run's 480p step, else a 1 s guess
        large_modes = device_modes(s.device, [HEADLINE, "exact", "batched"])  # batched last: the first to go
        s.section("step-720", lambda: steps_section(s, pipes, text, large, large_modes, guess, short=True))
    if "precision" in chosen:
        s.section("precision", lambda: precision(s, pipes[0], text, small))
    if "training" in chosen:
        s.section("training", lambda: training(s, setup["preset"], small, setup["route"]))
    if "pytest" in chosen:
        s.section("pytest", lambda: pytest_gpu(s))
    if "parallel" in chosen:
        s.section("parallel", lambda: parallel(s, pipes[0], text, small, measured["step"]))
    if "compile" in chosen:
        guess, ref_ms = measured["step"] or 1e3, measured["ref"]
        cases = list(COMPILE_CASES)
        s.section("compile", lambda: steps_section(s, pipes, text, small, cases, guess, ref_ms))
    pipes = ref_model = None  # the memory modes build their own pipelines from CPU copies
    if "memory" in chosen:
        s.section("memory", lambda: memory(s, ours_model, small, args.text_encoder == "official"))
    return s


def table(s: Suite) -> str:
    gpu = torch.cuda.get_device_name() if s.device.type == "cuda" else "CPU (--smoke: tiny sizes, fp32)"
    head = [
        f"gpu_suite {datetime.date.today().isoformat()}, {gpu}, {versions()}; "
        f"{time.perf_counter() - s.start:.0f} s of a {s.budget:.0f} s budget",
        "",
        "| section | case | ours | diffusers | ours/ref | note |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(head + ["| " + " | ".join(row) + " |" for row in s.rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU: a check that the suite runs")
    parser.add_argument("--budget", type=float, default=None, help="seconds for all sections (default 390; smoke 300)")
    parser.add_argument("--sections", nargs="+", default=None, choices=list(BUDGET_S), help="default: all but compile")
    parser.add_argument("--text-encoder", choices=("official", "stand-in"), default="official")
    parser.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    args = parser.parse_args()
    args.budget = args.budget or (300.0 if args.smoke else 390.0)  # smoke: every path, on a busy CPU
    diffusers_logging.set_verbosity_error()
    torch.manual_seed(0)
    s = run(args)
    s.save()  # the final elapsed time; every row was already written as it came
    print(table(s), flush=True)


if __name__ == "__main__":
    main()
