"""Section "memory" of `gpu_suite.py`: peak memory and step time of each memory mode (`bench_memory_modes.measure`)
with official-size components (tiny ones in the smoke run), most wanted first, as far as the budget goes."""

from __future__ import annotations

import time
from typing import Any

from _common import fmt_ms
from bench_memory_modes import MODES as MEMORY_MODES
from bench_memory_modes import measure as measure_memory_mode
from bench_memory_modes import text_encoder
from motif_video.pipeline.tiny import build_tiny_components

MEMORY_ORDER = ("all-on-device", "model-cpu-offload", "block-offload", "fp8+block-offload", "fp8")
MEMORY_ORDER += ("text-encoder-on-cpu", "vae-tiling")  # most wanted first: the budget may cut the last


def memory(s: Any, ours_model: Any, size: tuple[int, int, int], official_text: bool) -> None:
    from diffusers import AutoencoderKLWan

    started = time.perf_counter()
    base = build_tiny_components(0)
    if not s.smoke:
        base["transformer"] = ours_model.to("cpu")
        base["text_encoder"], what = text_encoder(official_text, s.device, s.dtype)  # on the CPU
        base["vae"] = AutoencoderKLWan().eval()
    else:
        base["transformer"].fuse_qkv_projections()
        what = "tiny components"
    label = f"memory {size[0]}x{size[1]}x{size[2]}"
    s.add(label, "components", f"built in {time.perf_counter() - started:.0f} s", "-", "-", what)
    per_mode = 0.0
    for mode in sorted(MEMORY_MODES, key=MEMORY_ORDER.index):
        if not s.fits(label, mode, per_mode):
            continue
        started = time.perf_counter()
        r = measure_memory_mode(mode, base, s.device, size, 2, 0)
        per_mode = max(per_mode, time.perf_counter() - started)
        unit, scale = ("GiB", 2**30) if s.device.type == "cuda" else ("MiB RSS", 2**20)
        if r.total_s is None:
            s.add(label, mode, "-", "-", "-", r.note)
            continue
        cells = f"peak {r.peak / scale:.2f} {unit}, {fmt_ms(r.ms_per_step)}/step"
        s.add(label, mode, cells, "-", "-", f"resident {r.resident / scale:.2f} {unit}; {r.note}".rstrip("; "))
