"""`benchmarks/gpu_suite.py --smoke` runs every section at tiny sizes on CPU, so the GPU suite never rots."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
    assert not [row for row in rows if row[1] == "error" or "skipped" in row[-1]], rows
    steps = [row for row in rows if row[0].startswith("| step 32x32x9")]
    assert {"diffusers pipeline", "exact", "split", "ddt:2", "compile"} <= {row[1] for row in steps}
    assert any(row[0].startswith("| step 48x32x9") for row in rows)  # the larger size ran too
    precision = {row[1]: row[-1] for row in rows if row[0].startswith("| precision")}
    assert "rel L2" in precision["fp8-weights"] and "PSNR" in precision["fp8-weights"], precision  # runs on CPU
    assert precision["fp8-dynamic"].startswith("not run: ") and "8.9" in precision["fp8-dynamic"]
    graphs = [row for row in steps if row[1] == "compile+cudagraphs"]
    assert graphs and graphs[0][-1].startswith("not run: CUDA graphs need a CUDA device")
