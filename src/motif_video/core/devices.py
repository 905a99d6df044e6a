"""Device names given by a user (`--device`), checked before anything runs: a typo is one line, not a traceback."""

from __future__ import annotations

import re

import torch

DEVICE_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(text: str, flag: str = "--device") -> None:
    """ValueError naming `flag` when `text` is not auto, cpu, mps, cuda or cuda:N, or names a GPU that is not here."""
    if not isinstance(text, str) or not DEVICE_PATTERN.match(text):
        raise ValueError(f"{flag} {text!r} is not a device: use auto, cpu, cuda or cuda:N")
    if text.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"{flag} {text} was asked for but no CUDA GPU is available: use {flag} cpu")
        index = int(text.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ValueError(f"{flag} {text}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if text == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"{flag} mps was asked for but MPS is not available here: use {flag} cpu")


__all__ = ["check_device"]
