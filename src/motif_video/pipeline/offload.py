"""Memory modes for small GPUs: whole-component offload and block-level offload with prefetch.

Both modes rest on one mechanism, `_TensorGroup`: every managed parameter/buffer keeps a CPU *master* copy
(page-locked when the target is CUDA, so host-to-device copies can be asynchronous), and placement changes
by swapping `tensor.data`:

    load     tensor.data = master.to(device, non_blocking=...)   a fresh device copy
    release  tensor.data = master                                the device copy is dropped; nothing copied back

So releasing costs nothing, the Parameter objects never change (tied weights, `state_dict`, optimizers keep
their references), dtypes never change, and at most one device copy of a tensor exists at a time: the copy is
freed as soon as it is released (we chose `.data` swapping over a preallocated GPU "slot" buffer because
blocks differ in shape and the caching allocator already recycles the freed memory). The price: managed
weights are read-only. An in-place edit of a device copy (training, loading LoRA weights) is lost at release,
and gradients of offloaded parameters are not managed. This is inference machinery.

`ComponentOffloader` (what diffusers calls model CPU offload) keeps whole components (text encoder,
transformer, VAE) on the CPU and moves one at a time to the device through an explicit
`with offloader.use("vae") as vae:`; entering it first releases whichever component is resident.

`enable_block_offload` keeps the small non-block tensors of a transformer on the device and streams its
blocks: a forward pre-hook on block i makes block i resident (waiting for its prefetch when there was one),
releases every other resident block outside the window [i, i + prefetch], and requests blocks
i+1 .. i+prefetch; a forward post-hook (run even when the block raises) releases block i. Nothing assumes the
blocks run once each in order, so gradient-checkpoint recomputation (blocks re-run in reverse during
backward, possibly stopped early) only costs extra copies. On CUDA, prefetches run on a side stream that
first waits for the work already queued on the compute stream (so a freed block's memory is only reused
after the kernels that read it), and record an event that the compute stream waits on before the block
runs. Elsewhere copies are plain (and on "cpu" they are no-ops).

Every move goes through one method per direction (`_load` / `_release` of a block, `_load` /
`_release_resident` of a component), so a test or a debugging session can wrap those to see which moves
happened, without a GPU and without anything in the hot path.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["BlockOffloadHandle", "ComponentOffloader", "enable_block_offload"]


# ----------------------------------------------------------------------------------------------------------
# Mechanism: a group of tensors homed on CPU masters
# ----------------------------------------------------------------------------------------------------------
def _as_device(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def _module_tensors(module: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers of a module, each once (a tied weight is one entry)."""
    unique: dict[int, torch.Tensor] = {}
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        unique.setdefault(id(tensor), tensor)
    return list(unique.values())


def _set_data(tensor: torch.Tensor, value: torch.Tensor) -> None:
    try:
        tensor.data = value
    except RuntimeError as error:
        raise RuntimeError(
            f"cannot move a {type(tensor).__name__} from {tensor.device} to {value.device} by swapping `.data` "
            "(offloading supports dense tensors on cpu/cuda/xpu/mps)"
        ) from error
    # A wrapper subclass (torchao's Float8Tensor) keeps its data in inner tensors that a `.data` swap leaves
    # behind: without this, FP8 weights under block offload stayed on the CPU and the first matmul failed on CUDA.
    flatten = getattr(value, "__tensor_flatten__", None)
    if flatten is not None:
        for name in flatten()[0]:
            setattr(tensor, name, getattr(value, name))


def _cpu_master(tensor: torch.Tensor, pin: bool) -> tuple[torch.Tensor, bool]:
    """A CPU copy of `tensor` (the same storage when already on CPU), page-locked when asked and possible."""
    master = tensor.detach().to("cpu")
    if pin:
        try:
            return master.pin_memory(), True
        except (RuntimeError, NotImplementedError, TypeError):  # out of pinnable memory, or a tensor subclass
            pass  # without pinning (e.g. some quantized tensors): this tensor is then copied synchronously
    return master, False


class _TensorGroup:
    """Tensors whose home is a CPU master: `load` points them at a fresh device copy, `release` at the master."""

    def __init__(self, tensors: list[torch.Tensor], pin: bool) -> None:
        self.tensors = tensors
        masters = [_cpu_master(t, pin) for t in tensors]
        self.masters = [m for m, _ in masters]
        self.pinned = [p for _, p in masters]
        self.release()

    def load(self, device: torch.device, non_blocking: bool) -> None:
        for tensor, master, pinned in zip(self.tensors, self.masters, self.pinned):
            _set_data(tensor, master.to(device, non_blocking=non_blocking and pinned))

    def release(self) -> None:
        for tensor, master in zip(self.tensors, self.masters):
            _set_data(tensor, master)

    def restore(self, device: torch.device) -> None:
        """Stop managing: a normal copy on `device` (pageable memory when that is the CPU)."""
        for tensor, master, pinned in zip(self.tensors, self.masters, self.pinned):
            if device.type == "cpu":
                _set_data(tensor, master.clone() if pinned else master)
            else:
                _set_data(tensor, master.to(device))


# ----------------------------------------------------------------------------------------------------------
# Model offload: one whole component on the device at a time
# ----------------------------------------------------------------------------------------------------------
class ComponentOffloader:
    """Keep named components on the CPU and move one at a time to `device`, explicitly.

    Example::

        offloader = ComponentOffloader({"text_encoder": te, "transformer": dit, "vae": vae}, "cuda")
        with offloader.use("text_encoder") as te:  # te on cuda, the others on cpu
            ...
        with offloader.use("vae") as vae:  # the text encoder is released first
            ...

    A component stays resident after its `use` block (the next step often needs it again) until another
    component is used or `offload_all()` is called. Construction moves every component to the CPU.
    Components must not share tensors; a transformer under `enable_block_offload` should not be added here.
    """

    def __init__(
        self,
        components: dict[str, nn.Module],
        device: torch.device | str,
        *,
        pin_memory: bool = True,
    ) -> None:
        self.device = _as_device(device)
        self.components = dict(components)
        self._non_blocking = self.device.type == "cuda"
        pin = pin_memory and self._non_blocking
        owner: dict[int, str] = {}
        self._groups: dict[str, _TensorGroup] = {}
        for name, module in self.components.items():
            tensors = _module_tensors(module)
            for tensor in tensors:
                if owner.setdefault(id(tensor), name) != name:
                    raise ValueError(f"components {owner[id(tensor)]!r} and {name!r} share a tensor")
            self._groups[name] = _TensorGroup(tensors, pin)
        self._resident: str | None = None
        self._in_use: str | None = None

    @property
    def resident(self) -> str | None:
        """Name of the component currently on the device, or None."""
        return self._resident

    @contextmanager
    def use(self, name: str) -> Iterator[nn.Module]:
        """Make `name` the one resident component for the duration of the block; yields the module."""
        if name not in self.components:
            raise KeyError(f"unknown component {name!r}; known: {sorted(self.components)}")
        if self._in_use not in (None, name):
            raise RuntimeError(f"cannot use {name!r} while {self._in_use!r} is in use: only one may be resident")
        if self._resident != name:
            self._release_resident()
            self._load(name)
        outer, self._in_use = self._in_use, name
        try:
            yield self.components[name]
        finally:
            self._in_use = outer

    def offload_all(self) -> None:
        """Release the resident component (if any); every component is then on the CPU."""
        if self._in_use is not None:
            raise RuntimeError(f"cannot offload while {self._in_use!r} is in use")
        self._release_resident()

    def remove(self, device: torch.device | str = "cpu") -> None:
        """Stop managing: every component becomes an ordinary module on `device`."""
        self.offload_all()
        target = _as_device(device)
        for group in self._groups.values():
            group.restore(target)
        self._groups.clear()
        self.components.clear()

    def _load(self, name: str) -> None:
        self._groups[name].load(self.device, self._non_blocking)
        self._resident = name

    def _release_resident(self) -> None:
        if self._resident is not None:
            self._groups[self._resident].release()
            self._resident = None


# ----------------------------------------------------------------------------------------------------------
# Block offload: stream a transformer's blocks through the device, prefetching the next ones
# ----------------------------------------------------------------------------------------------------------
@dataclass
class _Loaded:
    """A block with device copies; `ready` is the CUDA event of its side-stream copy (None: usable now)."""

    ready: torch.cuda.Event | None = None


class BlockOffloadHandle:
    """Hooks and state of `enable_block_offload`; `remove()` undoes it."""

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[nn.Module],
        device: torch.device,
        prefetch: int,
        pin_memory: bool,
    ) -> None:
        self.model = model
        self.device = device
        self.prefetch = prefetch
        self.num_blocks = len(blocks)
        self._home = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
        self._stream = torch.cuda.Stream(device=device) if device.type == "cuda" else None
        self._non_blocking = device.type == "cuda"
        pin = pin_memory and self._non_blocking

        owners: dict[int, list[int]] = {}
        per_block = [_module_tensors(block) for block in blocks]
        for index, tensors in enumerate(per_block):
            for tensor in tensors:
                owners.setdefault(id(tensor), []).append(index)
        block_ids = {i for i, idx in owners.items() if len(idx) == 1}
        # Tensors outside the blocks, or shared by several blocks, stay on the device.
        self._resident_tensors = [t for t in _module_tensors(model) if id(t) not in block_ids]
        for tensor in self._resident_tensors:
            _set_data(tensor, tensor.data.to(device))
        self._groups = [_TensorGroup([t for t in ts if id(t) in block_ids], pin) for ts in per_block]
        self._loaded: dict[int, _Loaded] = {}
        self._hooks = []
        for index, block in enumerate(blocks):
            self._hooks.append(block.register_forward_pre_hook(self._pre_hook(index)))
            self._hooks.append(block.register_forward_hook(self._post_hook(index), always_call=True))

    # Introspection ----------------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        return bool(self._hooks)

    @property
    def resident_blocks(self) -> list[int]:
        """Indices of blocks that have device copies right now (requested prefetches included)."""
        return sorted(self._loaded)

    # Undo -------------------------------------------------------------------------------------------------
    def remove(self, device: torch.device | str | None = None) -> None:
        """Remove the hooks and put every tensor of the model on `device` (default: where it was before)."""
        if not self.active:
            return
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self._stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self._stream)
        self._loaded.clear()
        target = _as_device(device) if device is not None else self._home
        for group in self._groups:
            group.restore(target)
        for tensor in self._resident_tensors:
            _set_data(tensor, tensor.data.to(target))
        self._groups.clear()
        self._resident_tensors.clear()
        if getattr(self.model, "_block_offload_handle", None) is self:
            del self.model._block_offload_handle

    # Hooks ------------------------------------------------------------------------------------------------
    def _pre_hook(self, index: int):
        def hook(module: nn.Module, args: Any) -> None:
            self._before_block(index)

        return hook

    def _post_hook(self, index: int):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._release(index)

        return hook

    def _before_block(self, index: int) -> None:
        window = range(index, min(index + self.prefetch + 1, self.num_blocks))
        for other in [j for j in self._loaded if j not in window]:
            self._release(other)
        if index not in self._loaded:
            self._load(index, ahead=False)
        self._wait(index)
        for ahead in window[1:]:
            if ahead not in self._loaded:
                self._load(ahead, ahead=True)

    def _load(self, index: int, ahead: bool) -> None:
        if ahead and self._stream is not None:
            # Reused memory of released blocks is only overwritten after the kernels queued so far that read it.
            self._stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self._stream):
                self._groups[index].load(self.device, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(self._stream)
            self._loaded[index] = _Loaded(ready)
        else:
            self._groups[index].load(self.device, non_blocking=self._non_blocking)
            self._loaded[index] = _Loaded()

    def _wait(self, index: int) -> None:
        loaded = self._loaded[index]
        if loaded.ready is not None:
            torch.cuda.current_stream(self.device).wait_event(loaded.ready)
            loaded.ready = None

    def _release(self, index: int) -> None:
        if self._loaded.pop(index, None) is not None:
            self._groups[index].release()


def enable_block_offload(
    model: nn.Module,
    device: torch.device | str,
    *,
    blocks: Sequence[nn.Module] | None = None,
    prefetch: int = 1,
    pin_memory: bool = True,
) -> BlockOffloadHandle:
    """Run `model` on `device` with only its current block(s) there; everything else of it stays on `device`.

    blocks: the modules to stream, in the order the forward runs them (default `model.blocks`); each must run
    through its own `__call__` (hooks fire there). prefetch: how many following blocks to copy ahead (0: load
    each block when it starts). pin_memory: page-lock the CPU masters when `device` is CUDA (asynchronous
    copies).
    Call model-changing methods such as `fuse_qkv_projections` or fp8 quantization before enabling, and
    `handle.remove(device)` before moving the model with `.to()`.
    """
    if getattr(model, "_block_offload_handle", None) is not None:
        raise RuntimeError("block offload is already enabled on this model: call remove() on its handle first")
    if blocks is None:
        if not hasattr(model, "blocks"):
            raise TypeError(f"{type(model).__name__} has no `blocks`; pass blocks=[...] in execution order")
        blocks = model.blocks
    blocks = list(blocks)
    if len({id(b) for b in blocks}) != len(blocks):
        raise ValueError("each block may appear only once in `blocks`")
    if not isinstance(prefetch, int) or prefetch < 0:
        raise ValueError(f"prefetch must be an integer >= 0, got {prefetch!r}")
    handle = BlockOffloadHandle(model, blocks, _as_device(device), prefetch, pin_memory)
    model._block_offload_handle = handle
    return handle
