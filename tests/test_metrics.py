"""MetricsWriter: the human line, metrics.jsonl with resume truncation, TensorBoard events, wandb guard."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from motif_video.training.metrics import MetricsWriter, format_line, throughput


def _rows(steps, scale=1.0):
    return [dict(step=s, loss=scale / s, grad_norm=2.0 * s, lr=1e-4, tread_keep=0.5) for s in steps]


def _read_jsonl(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_human_line_format():
    row = dict(step=120, loss=0.41234, grad_norm=1.0213, lr=1e-4, tokens_per_s=12345.2, mfu=0.3821, tread_keep=0.5)
    assert format_line(row) == "step 120  loss 0.4123  grad 1.02  lr 1.0e-04  tok/s 12,345  mfu 38.2%  tread 0.50"
    # Known fields in a fixed order whatever the dict order; unknown ones after, tensors as numbers.
    line = format_line(dict(i2v_fraction=0.25, step_s=1.5, loss=torch.tensor(0.5), step=3, flow_loss=0.4))
    assert line == "step 3  loss 0.5000  flow 0.4000  time 1.50s  i2v_fraction 0.25"


def test_jsonl_and_stdout(tmp_path):
    out = io.StringIO()
    with MetricsWriter(tmp_path, tensorboard=False, rank=0, stream=out) as metrics:
        for row in _rows([1, 2]):
            metrics(row)  # callable: usable as the trainer's on_log
        metrics.log(dict(step=3, loss=float("nan"), grad_norm=torch.tensor(0.5)))
    rows = _read_jsonl(tmp_path)
    assert rows[:2] == _rows([1, 2])
    assert rows[2] == {"step": 3, "loss": None, "grad_norm": 0.5}  # NaN -> null (strict JSON)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[0].startswith("step 1  loss 1.0000  grad 2.00")


def test_resume_drops_rows_after_the_resumed_step(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False, rank=0, stream=io.StringIO()) as metrics:
        for row in _rows([10, 20, 30, 40]):
            metrics.log(row)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 50, "lo')  # a line torn by a crash
    # The run died after step 40 and resumes from its checkpoint at step 20: steps 30, 40 run again.
    with MetricsWriter(tmp_path, resume_step=20, tensorboard=False, rank=0, stream=io.StringIO()) as metrics:
        for row in _rows([30, 40], scale=7.0):
            metrics.log(row)
    rows = _read_jsonl(tmp_path)
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    assert rows[2]["loss"] == pytest.approx(7.0 / 30)
    # A fresh writer without resume_step only appends.
    with MetricsWriter(tmp_path, tensorboard=False, rank=0, stream=io.StringIO()) as metrics:
        metrics.log(dict(step=50, loss=0.1))
    assert [r["step"] for r in _read_jsonl(tmp_path)] == [10, 20, 30, 40, 50]


def test_only_rank_zero_writes(tmp_path):
    out = io.StringIO()
    with MetricsWriter(tmp_path / "run", rank=1, stream=out) as metrics:
        metrics.log(dict(step=1, loss=0.5))
    assert out.getvalue() == "" and not (tmp_path / "run").exists()


def test_tensorboard_events_read_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsWriter(tmp_path, rank=0, stream=io.StringIO()) as metrics:
        for row in _rows([1, 2, 3, 4]):
            metrics.log(row)
    with MetricsWriter(tmp_path, resume_step=2, rank=0, stream=io.StringIO()) as metrics:
        for row in _rows([3, 4], scale=5.0):
            metrics.log(row)
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/grad_norm", "train/lr", "train/tread_keep"} <= set(events.Tags()["scalars"])
    loss = events.Scalars("train/loss")
    # Steps 3 and 4 of the first run were purged on resume; the resumed run's values replace them.
    assert [e.step for e in loss] == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx([1.0, 0.5, 5.0 / 3, 5.0 / 4])
    assert [e.value for e in events.Scalars("train/grad_norm")] == pytest.approx([2.0, 4.0, 6.0, 8.0])


def test_wandb_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now fails as if it were not installed
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricsWriter(tmp_path, wandb=True, rank=0)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_throughput():
    rates = throughput(num_tokens=20_000, num_samples=4, seconds=2.0, flops=1e15, peak=1e15)
    assert rates == {"tokens_per_s": 10_000.0, "samples_per_s": 2.0, "tflops_per_device": 500.0, "mfu": 0.5}
    assert "mfu" not in throughput(10, 1, 1.0, flops=1e12, peak=None)  # CPU: no peak, no MFU
    assert set(throughput(10, 1, 1.0)) == {"tokens_per_s", "samples_per_s"}
