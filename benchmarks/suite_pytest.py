"""Section "pytest" of `gpu_suite.py`: `pytest -m gpu` over the test files with GPU tests, in a subprocess limited
to what is left of the section, as one row: pytest's closing line and the failed tests, or, when the time ran out,
the outcomes so far and the test it was in (from `-v`). A file that cannot be imported (the GPU machine lacks the
server's packages) costs only its own tests (`--continue-on-collection-errors`). The log lands beside `--out`
(`<stem>.pytest.log`)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from motif_video.atomic import write_text

ROOT = Path(__file__).resolve().parent.parent


def gpu_test_files() -> list[str]:
    """The test files with GPU tests, relative to the root (only these: the others may need the lab or tensorboard);
    tests/test_gpu.py last, as its inductor compile test is the slowest."""
    marked = [p for p in sorted((ROOT / "tests").glob("test_*.py")) if "mark.gpu" in p.read_text(encoding="utf-8")]
    return [p.relative_to(ROOT).as_posix() for p in sorted(marked, key=lambda p: p.name == "test_gpu.py")]


def pytest_gpu(s: Any) -> None:
    """The section's row on suite `s` (`gpu_suite.Suite`)."""
    target = gpu_test_files()
    command = [sys.executable, "-m", "pytest", "-v", "-m", "gpu", "-p", "no:cacheprovider"]
    command += ["--continue-on-collection-errors", *target]  # a file that cannot import costs only its own tests
    started, timeout = time.perf_counter(), max(s.left(), 1)
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        log, killed = done.stdout + done.stderr, False
    except subprocess.TimeoutExpired as stop:  # what it printed so far still says which tests ran
        log, killed = "".join(_text(part) for part in (stop.stdout, stop.stderr)), True
    if s.out is not None:
        write_text(s.out.with_name(s.out.stem + ".pytest.log"), log)
    result, note = pytest_summary(log, killed)
    s.add("pytest -m gpu", " ".join(target), result, "-", "-", f"{time.perf_counter() - started:.0f} s; {note}")


def _text(part: str | bytes | None) -> str:
    return part.decode(errors="replace") if isinstance(part, bytes) else part or ""


def pytest_summary(log: str, killed: bool) -> tuple[str, str]:
    """(pytest's closing line, or the outcomes so far when it was killed; the failed tests, or the one running when
    it was killed) from the output of `pytest -v`."""
    outcomes = re.findall(r"^(\S+::\S+) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", log, re.MULTILINE)
    failed = [name.split("::", 1)[1] for name, outcome in outcomes if outcome in ("FAILED", "ERROR")]
    failed += [n.split("::")[-1] for n in re.findall(r"^ERROR (\S+)", log, re.MULTILINE)]  # e.g. failed imports
    note = f"failed: {', '.join(dict.fromkeys(failed))}"[:200] if failed else "none failed"
    if killed:
        counts = [f"{sum(o == kind for _, o in outcomes)} {kind.lower()}" for kind in ("PASSED", "FAILED", "SKIPPED")]
        result = "killed at the section's time limit; so far " + ", ".join(counts)
        started = re.findall(r"^(\S+::\S+)\s*$", log, re.MULTILINE)  # -v names a test before it runs
        running = started[-1].split("::", 1)[1] if started else None
        return result, note + (f"; running: {running}" if running else "")
    lines = [line for line in log.splitlines() if line.strip()]
    closing = [line for line in lines if line.startswith("=") and " in " in line]
    return (closing[-1] if closing else lines[-1] if lines else "no output").strip("= "), note
