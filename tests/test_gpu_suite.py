"""`benchmarks/gpu_suite.py --smoke` runs every section at tiny sizes on CPU, so the GPU suite never rots."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_suite_smoke(tmp_path):
    out = tmp_path / "table.md"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_suite.py", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line]
    sections = {row[0].lstrip("| ").split(" ")[0] for row in rows[1:]}
    assert {"build", "parity", "step", "precision", "training", "pytest", "memory"} <= sections, sections
    assert not [row for row in rows if "error" in row[1] or row[-1].startswith(("error", "skipped"))], rows
    steps = [row for row in rows if row[0].startswith("| step 32x32x9")]
    assert {"diffusers pipeline", "exact", "split", "ddt:2", "compile"} <= {row[1] for row in steps}
    assert any(row[0].startswith("| step 48x32x9") for row in rows)  # the larger size ran too
    precision = {row[1]: row[-1] for row in rows if row[0].startswith("| precision")}
    assert "rel L2" in precision["fp8-weights"] and "PSNR" in precision["fp8-weights"], precision  # runs on CPU
    assert precision["fp8-dynamic"].startswith("not run: ") and "8.9" in precision["fp8-dynamic"]
    graphs = [row for row in steps if row[1] == "compile+cudagraphs"]
    assert graphs and graphs[0][-1].startswith("not run: CUDA graphs need a CUDA device")


def _suite_module(name: str = "gpu_suite"):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


# What the GPU machine lacks of the product's dependencies (it has torch, transformers, pytest, ...; diffusers and
# torchao are carried as wheels): a GPU test file that imports them at module level stops `pytest -m gpu` there.
GPU_MACHINE_LACKS = ("fastapi", "starlette", "uvicorn", "multipart", "python_multipart", "pydantic", "av")


def test_gpu_tests_collect_without_what_the_gpu_machine_lacks(tmp_path):
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(f"import sys\nfor name in {GPU_MACHINE_LACKS!r}:\n    sys.modules[name] = None\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT / "src")]))
    files = _suite_module("suite_pytest").gpu_test_files()
    command = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "error" not in done.stdout.lower(), done.stdout[-3000:]
    assert files[-1] == "tests/test_gpu.py" and len(files) >= 4  # the slow inductor test last


def test_pytest_row_of_a_finished_and_of_a_killed_run():
    summary = _suite_module("suite_pytest").pytest_summary
    finished = (
        "tests/test_offload.py::test_cuda_component_offloader_places_one_component PASSED [ 50%]\n"
        "tests/test_gpu.py::test_bf16_cuda_matches_reference[sage] FAILED [100%]\n"
        "=========================== short test summary info ============================\n"
        "FAILED tests/test_gpu.py::test_bf16_cuda_matches_reference[sage] - AssertionError\n"
        "ERROR tests/test_fast_modes.py - ModuleNotFoundError: No module named 'fastapi'\n"
        "============= 1 failed, 1 passed, 3 deselected, 1 error in 9.12s ===============\n"
    )
    result, note = summary(finished, killed=False)
    assert result == "1 failed, 1 passed, 3 deselected, 1 error in 9.12s"
    assert note == "failed: test_bf16_cuda_matches_reference[sage], tests/test_fast_modes.py", note
    killed = finished.split("=====")[0] + "tests/test_gpu.py::test_compiled_blocks_on_cuda_match_and_do_not_recompile "
    result, note = summary(killed, killed=True)
    assert result == "killed at the section's time limit; so far 1 passed, 1 failed, 0 skipped"
    assert note.endswith("; running: test_compiled_blocks_on_cuda_match_and_do_not_recompile"), note


def test_a_killed_pytest_run_is_a_row_with_its_log(tmp_path, monkeypatch):
    gpu_suite, suite_pytest = _suite_module(), _suite_module("suite_pytest")
    partial = b"tests/test_ring_attention.py::test_fused_cuda_partial_matches_the_explicit_one[False-dtype0] PASSED\n"

    def killed(command, **kwargs):
        assert "--continue-on-collection-errors" in command and "-v" in command
        raise subprocess.TimeoutExpired(command, kwargs["timeout"], output=partial, stderr=None)

    monkeypatch.setattr(suite_pytest.subprocess, "run", killed)
    s = gpu_suite.Suite(torch.device("cpu"), torch.float32, True, 60.0, out=tmp_path / "suite.md")
    s.section_end = time.perf_counter() + 30
    suite_pytest.pytest_gpu(s)
    assert (tmp_path / "suite.pytest.log").read_bytes() == partial
    row = [line for line in (tmp_path / "suite.md").read_text().splitlines() if line.startswith("| pytest")]
    assert len(row) == 1 and "killed at the section's time limit; so far 1 passed" in row[0], row


def test_the_table_is_on_disk_after_every_row(tmp_path):
    gpu_suite = _suite_module()
    s = gpu_suite.Suite(torch.device("cpu"), torch.float32, True, 60.0, out=tmp_path / "suite.md")
    s.add("parity", "forward", "1", "-", "-", "note")
    assert "| parity | forward | 1 | - | - | note |" in (tmp_path / "suite.md").read_text()
    s.section("step", lambda: 1 / 0)  # a section that fails is a row, on disk at once
    assert "| step | error | - | - | - | ZeroDivisionError: division by zero |" in (tmp_path / "suite.md").read_text()


def test_sage_runs_with_the_encoder_split(monkeypatch):
    """In the batched guidance pass the two text lengths need a key mask, and a masked call takes SDPA, not Sage:
    the "sage" row splits the encoder per branch, so that every attention call can take the kernel."""
    import contextlib

    gpu_suite = _suite_module()
    backends, calls = [], []

    class Pipe:
        last_call: dict = {}

        def __call__(self, **kwargs):
            calls.append(kwargs)
            for step in range(kwargs["num_inference_steps"]):
                kwargs["callback_on_step_end"](self, step, None, {})

    monkeypatch.setattr(gpu_suite, "attention_backend", lambda name: backends.append(name) or contextlib.nullcontext())
    s = gpu_suite.Suite(torch.device("cpu"), torch.float32, True, 60.0)
    ms, note, each = gpu_suite.ours_mode(s, Pipe(), {"latents": torch.zeros(1)}, "sage", 3)
    assert backends == ["sage"] and calls[0]["split_encoder"] == "on" and len(each) == 2
    assert "with split" in note


def test_a_failing_case_is_a_row_and_the_section_goes_on(tmp_path):
    gpu_suite = _suite_module()
    s = gpu_suite.Suite(torch.device("cpu"), torch.float32, True, 60.0, out=tmp_path / "suite.md")

    def section() -> None:
        with s.case("precision", "sage"):
            raise RuntimeError("triton: out of resources")
        with s.case("precision", "fp8-dynamic"):
            s.add("precision", "fp8-dynamic", "1.0 ms/step", "-", "-", "ok")

    s.section("precision", section)
    assert s.rows == [
        ("precision", "sage", "-", "-", "-", "error: RuntimeError: triton: out of resources"),
        ("precision", "fp8-dynamic", "1.0 ms/step", "-", "-", "ok"),
    ]


def test_short_timing_counts_step_one_from_the_calls_start(monkeypatch):
    """At 1280x736x121 (`short`) one period of each mode is timed from the call's start: ddt:2 gives a refresh step
    and a reuse step, and the derived rows take them in that order."""
    gpu_suite = _suite_module()
    clock = iter(float(t) for t in range(100))
    monkeypatch.setattr(gpu_suite.time, "perf_counter", lambda: next(clock))

    class Pipe:
        last_call: dict = {}

        def __call__(self, **kwargs):
            for step in range(kwargs["num_inference_steps"]):
                kwargs["callback_on_step_end"](self, step, None, {})

    s = gpu_suite.Suite(torch.device("cpu"), torch.float32, True, 60.0)
    ms, each = gpu_suite.step_ms(s, Pipe(), {"latents": torch.zeros(1)}, 2, True)
    assert len(each) == 2 and ms == 1000.0  # steps 1 and 2, each one tick of the fake clock
    ms, each = gpu_suite.step_ms(s, Pipe(), {"latents": torch.zeros(1)}, 3)
    assert len(each) == 2  # steps 2 and 3: the first is not timed
