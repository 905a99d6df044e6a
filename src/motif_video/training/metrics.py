"""Training metrics: each log row to stdout, `metrics.jsonl`, TensorBoard and (when asked) Weights & Biases.

A row is a dict with an integer `step` and any float fields (loss, flow_loss, repa_loss, grad_norm, lr,
tokens_per_s, samples_per_s, mfu, tread_keep, step_s, ...). Only rank 0 writes. On resume from step S, rows
of `metrics.jsonl` with step > S (logged after the checkpoint the run resumes from) are dropped when the writer
opens, and TensorBoard purges its events from S + 1 on, so no step appears twice.

    with MetricsWriter(run_dir, resume_step=resumed_step) as metrics:
        train(config, model, reader, run_dir, on_log=metrics)   # the trainer calls on_log on rank 0

TensorBoard is used when the `tensorboard` package is installed (a warning, once, when not); wandb only with
`wandb=True`, and it is never imported otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

from motif_video import atomic
from motif_video.training.flops import mfu as _mfu

logger = logging.getLogger(__name__)

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"

# Known fields in display order: key -> (label, format). Other numeric fields follow as `key value:.4g`.
_DISPLAY: dict[str, tuple[str, Callable[[float], str]]] = {
    "loss": ("loss", "{:.4f}".format),
    "flow_loss": ("flow", "{:.4f}".format),
    "repa_loss": ("repa", "{:.4f}".format),
    "difference_loss": ("diff", "{:.4f}".format),
    "grad_norm": ("grad", "{:.2f}".format),
    "lr": ("lr", "{:.1e}".format),
    "tokens_per_s": ("tok/s", "{:,.0f}".format),
    "samples_per_s": ("samples/s", "{:.2f}".format),
    "tflops_per_device": ("tflop/s", "{:.1f}".format),  # per device
    "mfu": ("mfu", lambda v: f"{100 * v:.1f}%"),  # stored as a fraction
    "tread_keep": ("tread", "{:.2f}".format),
    "step_s": ("time", lambda v: f"{v:.2f}s"),
}
_warned_no_tensorboard = False


def _scalar(value: Any) -> Any:
    """Tensors and numpy scalars -> Python numbers; everything else unchanged."""
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_line(row: Mapping[str, Any]) -> str:
    """One compact human line: `step 120  loss 0.4123  grad 1.02  lr 1.0e-04  tok/s 12,345  mfu 38.2%`."""
    values = {k: _scalar(v) for k, v in row.items()}
    parts = [f"step {values['step']}"] if "step" in values else []
    for key, (label, fmt) in _DISPLAY.items():
        if _is_number(values.get(key)):
            parts.append(f"{label} {fmt(values[key])}")
    for key, value in values.items():
        if key == "step" or key in _DISPLAY or value is None:
            continue
        parts.append(f"{key} {value:.4g}" if _is_number(value) else f"{key} {value}")
    return "  ".join(parts)


def _jsonable(value: Any) -> Any:
    value = _scalar(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON has no NaN / inf
    return value


def truncate_jsonl(path: str | Path, resume_step: int) -> int:
    """Keep the rows of a metrics file with step <= resume_step (and drop a torn last line); returns the
    number kept. The file is rewritten atomically."""
    path = Path(path)
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= resume_step:
            kept.append(line)
    atomic.write_text(path, "".join(line + "\n" for line in kept))
    return len(kept)


class MetricsWriter:
    """Writes log rows to stdout, `run_dir/metrics.jsonl`, `run_dir/tensorboard/` and optionally wandb.

    resume_step: the step the run resumed from (None for a fresh append); rows after it are dropped.
    tensorboard: use TensorBoard if the package is installed. wandb: log to Weights & Biases, with
    `wandb_init` passed to `wandb.init` (project, name, id, resume, config, ...). rank: this process's rank
    (default: from the process group); ranks other than 0 write nothing. stream: where the human lines go
    (default: sys.stdout). Also callable, so it can be the trainer's `on_log`.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        resume_step: int | None = None,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_init: Mapping[str, Any] | None = None,
        rank: int | None = None,
        stream: IO[str] | None = None,
        tag_prefix: str = "train/",
    ) -> None:
        global _warned_no_tensorboard
        if rank is None:
            from motif_video.training.parallel import world

            rank = world()[0]
        self.run_dir = Path(run_dir)
        self.rank = rank
        self.tag_prefix = tag_prefix
        self._stream = stream
        self._jsonl: IO[str] | None = None
        self._tb: Any = None
        self._wandb_run: Any = None
        wandb_module = _import_wandb() if wandb else None  # on every rank: a missing package fails everywhere
        if rank != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path = self.run_dir / JSONL_NAME
        if resume_step is not None:
            truncate_jsonl(path, resume_step)
        self._jsonl = path.open("a")
        if tensorboard:
            if importlib.util.find_spec("tensorboard") is None:
                if not _warned_no_tensorboard:
                    logger.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
                    _warned_no_tensorboard = True
            else:
                from torch.utils.tensorboard import SummaryWriter

                purge = None if resume_step is None else resume_step + 1
                self._tb = SummaryWriter(log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=purge)
        if wandb_module is not None:
            self._wandb_run = wandb_module.init(dir=str(self.run_dir), **dict(wandb_init or {}))

    def log(self, row: Mapping[str, Any]) -> None:
        """Write one row (it must have an integer `step`)."""
        if self.rank != 0:
            return
        if "step" not in row:
            raise ValueError(f"a metrics row needs a 'step', got keys {sorted(row)}")
        clean = {k: _jsonable(v) for k, v in row.items()}
        step = int(clean["step"])
        print(format_line(row), file=self._stream or sys.stdout, flush=True)
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(clean) + "\n")
            self._jsonl.flush()
        numbers = {k: float(v) for k, v in ((k, _scalar(v)) for k, v in row.items()) if k != "step" and _is_number(v)}
        if self._tb is not None:
            for key, value in numbers.items():
                self._tb.add_scalar(self.tag_prefix + key, value, global_step=step)
        if self._wandb_run is not None:
            self._wandb_run.log({self.tag_prefix + k: v for k, v in numbers.items()}, step=step)

    __call__ = log

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError:
        raise ImportError(
            "MetricsWriter(wandb=True) needs the `wandb` package, which is not installed: pip install wandb"
        ) from None
    return wandb


StepFlops = Callable[[tuple[int, ...], int, int, Any], float]
"""(latents shape, text length, image-token length, TREAD route config) -> FLOPs of one training step on that batch."""


class RateWindow:
    """Counts between two log rows (samples, video tokens, FLOPs, TREAD keep ratio, I2V share, wall time), and the
    rate fields they give the next row."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.steps = self.samples = self.tokens = 0
        self.flops = 0.0
        self.keep: list[float] = []
        self.i2v: list[float] = []

    def add(self, counts: Mapping[str, Any], step_flops: StepFlops | None, route: Any) -> None:
        """counts: a training step's (`trainer.StepOutput.counts`)."""
        self.steps += 1
        self.samples += counts["samples"]
        self.tokens += counts["tokens"]
        self.i2v.append(counts["i2v"])
        if "tread_keep" in counts:
            self.keep.append(counts["tread_keep"])
        if step_flops is not None:
            self.flops += step_flops(counts["shape"], counts["text_len"], counts["image_len"], route)

    def rates(self, now: float, world_size: int, peak: float | None) -> dict[str, float]:
        seconds = max(now - self.started, 1e-9)
        out = {
            "samples_per_s": world_size * self.samples / seconds,
            "tokens_per_s": world_size * self.tokens / seconds,
            "i2v_fraction": sum(self.i2v) / max(len(self.i2v), 1),
        }
        if self.keep:
            out["tread_keep"] = sum(self.keep) / len(self.keep)
        if self.flops:
            out["tflops_per_device"] = self.flops / seconds / 1e12
            if peak:
                out["mfu"] = self.flops / seconds / peak
        return out


def throughput(
    num_tokens: int, num_samples: int, seconds: float, flops: float | None = None, peak: float | None = None
) -> dict[str, float]:
    """Rates of one step, as log-row fields: tokens_per_s, samples_per_s; with `flops` (this device's FLOPs
    for the step, e.g. `training_step_flops(...).matmul`) also tflops_per_device, and with a `peak` also mfu."""
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    rates = {"tokens_per_s": num_tokens / seconds, "samples_per_s": num_samples / seconds}
    if flops is not None:
        rates["tflops_per_device"] = flops / seconds / 1e12
        utilisation = _mfu(flops, seconds, peak)
        if utilisation is not None:
            rates["mfu"] = utilisation
    return rates


__all__ = ["JSONL_NAME", "MetricsWriter", "RateWindow", "StepFlops", "format_line", "throughput", "truncate_jsonl"]
