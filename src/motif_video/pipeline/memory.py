"""Where a pipeline's components live: devices and the memory modes for small GPUs.

`MemoryModes` is the part of `MotifVideoPipeline` that places components: everything on one device (`to`), the
text encoder kept on the CPU, model offload (one component on the device at a time), block offload (transformer
blocks streamed from the CPU), FP8 weights and VAE tiling/slicing. The mechanisms live in `offload.py` and
`quantization.py`; `using(name)` is how the rest of the pipeline asks for a component on the device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, TypeVar

import torch

P = TypeVar("P", bound="MemoryModes")


class MemoryModes:
    """Device placement and memory modes; mixed into `MotifVideoPipeline` (which owns the components)."""

    transformer: torch.nn.Module
    vae: Any
    text_encoder: torch.nn.Module | None
    _device: torch.device | None
    _offloader: Any
    _block_offload: Any
    _text_encoder_on_cpu: bool

    @property
    def device(self) -> torch.device:
        """Where the transformer runs (the execution device)."""
        if self._device is not None:
            return self._device
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    def to(self: P, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> P:
        """Everything on `device` (the text encoder stays on CPU if `enable_text_encoder_on_cpu` was called)."""
        if self._offloader is not None or self._block_offload is not None:
            raise ValueError("this pipeline uses an offload mode; build a fresh pipeline to move it with .to()")
        device = torch.device(device) if device is not None else self.device
        for name in ("transformer", "vae", "text_encoder"):
            module = getattr(self, name)
            if module is None:
                continue
            target = torch.device("cpu") if (name == "text_encoder" and self._text_encoder_on_cpu) else device
            if name == "transformer" and dtype is not None:
                module.to(device=target, dtype=dtype)
            else:
                module.to(target)
        self._device = device
        return self

    def enable_text_encoder_on_cpu(self) -> None:
        """Keep the text encoder on CPU (its outputs are moved to the execution device)."""
        self._text_encoder_on_cpu = True
        if self.text_encoder is not None:
            self.text_encoder.to("cpu")

    def enable_model_cpu_offload(self, device: torch.device | str = "cuda") -> None:
        """Only the component in use sits on `device`: text encoder -> transformer -> VAE."""
        from motif_video.pipeline.offload import ComponentOffloader

        modules = {
            n: m
            for n, m in (("text_encoder", self.text_encoder), ("transformer", self.transformer), ("vae", self.vae))
            if m is not None
        }
        if self._text_encoder_on_cpu:
            modules.pop("text_encoder", None)
        self._offloader = ComponentOffloader(modules, device)
        self._offloader.offload_all()
        self._device = torch.device(device)

    def enable_block_offload(self, device: torch.device | str = "cuda", prefetch: int = 1) -> None:
        """Transformer blocks stream from CPU one at a time (with prefetch); other components offloaded too."""
        from motif_video.pipeline.offload import ComponentOffloader, enable_block_offload

        others = {n: m for n, m in (("text_encoder", self.text_encoder), ("vae", self.vae)) if m is not None}
        if self._text_encoder_on_cpu:
            others.pop("text_encoder", None)
        self._offloader = ComponentOffloader(others, device)
        self._offloader.offload_all()
        self._block_offload = enable_block_offload(self.transformer, device, prefetch=prefetch)
        self._device = torch.device(device)

    def enable_fp8(self, mode: str = "weights") -> None:
        """FP8 transformer blocks (torchao): "weights" (weight-only: roughly halves their memory versus bf16),
        "dynamic" or "dynamic-tensor" (FP8 compute on a GPU of compute capability >= 8.9: call after moving the
        pipeline there). `quantization.FP8_MODES`."""
        from motif_video.pipeline.quantization import quantize_fp8

        quantize_fp8(self.transformer, mode)

    def enable_vae_tiling(self) -> None:
        """Decode in overlapping spatial tiles (diffusers' Wan VAE tiling): lower peak memory."""
        self.vae.enable_tiling()

    def enable_vae_slicing(self) -> None:
        """Decode one video of the batch at a time."""
        self.vae.enable_slicing()

    @contextlib.contextmanager
    def using(self, name: str) -> Iterator[None]:
        """Component `name` ("text_encoder", "transformer", "vae") on the execution device for the block (a
        no-op unless an offload mode manages it)."""
        if self._offloader is not None and name in getattr(self._offloader, "components", {}):
            with self._offloader.use(name):
                yield
        else:
            yield
