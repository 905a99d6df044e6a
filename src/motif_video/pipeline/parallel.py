"""One video over the processes of a torch.distributed group: `pipe.enable_parallel(cp=..., cfg=...)`.

A mixin of `MotifVideoPipeline`; every rank holds the whole pipeline and makes the same call.
- Groups: `new_group` per axis in the order of a ("cfg", "cp") mesh (`parallel_layout`): the transformer gets
  `enable_context_parallel(transformer, cp_group)` when cp > 1, and the call's model function (after step reuse,
  so `cache=` and `split_encoder` compose) is wrapped by `guidance_parallel(..., cfg_group)` when cfg = 2.
- `fsdp=True`: every transformer block is FSDP2-sharded (`fully_shard`) over its context group, whose ranks run
  the same blocks in step (guidance ranks may not: step reuse can run one branch's encoder and not the other's).
  Each block's weights are all-gathered for its forward and freed after it; embedders and head stay whole. It
  cannot be undone in place (`disable_parallel` refuses): build a new pipeline.
- Inputs made once: the text encoder (prompt and negative embeddings with their masks), the starting noise and
  the I2V conditions (VAE-encoded first frame, SigLIP tokens) run on global rank 0 only, and reach the others in
  one broadcast of their sizes and one of their bytes (any dtype, bool masks included). Every rank then holds
  bit-identical inputs and takes bit-identical scheduler steps. A failure on rank 0 while making them is
  broadcast too: the other ranks raise `PeerFailed` instead of waiting.
- Output: only rank 0 decodes; the others return `frames=None` (or the latents for `output_type="latent"`,
  identical on every rank), draw no progress bar, and `is_main_rank` says which rank writes files.
- Checks: `check_layout` when enabled (group size, cfg in {1, 2}, heads) and per call (video tokens; cfg = 2
  needs a guided call with batched guidance), before any encoder runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from motif_video.core.context_parallel import disable_context_parallel, enable_context_parallel
from motif_video.core.latent_space import model_patch
from motif_video.pipeline.guidance_parallel import guidance_parallel
from motif_video.pipeline.parallel_layout import ParallelLayout, check_layout, video_tokens


class PeerFailed(RuntimeError):
    """Another rank failed first (its own error says why); raised so this rank stops instead of waiting."""


@dataclass
class ParallelRun:
    """What `enable_parallel` set up: the layout, this process's global rank and its two groups."""

    layout: ParallelLayout
    rank: int
    cp_group: Any = None
    cfg_group: Any = None
    groups: list[Any] = field(default_factory=list)  # every group made, destroyed by `disable_parallel`


def _wire_device() -> torch.device:
    """Where collectives take their tensors: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


@dataclass(frozen=True)
class _Leaf:
    """One broadcast tensor's description: shape, dtype name and whether it lives on the GPU."""

    shape: tuple[int, ...]
    dtype: str
    on_cuda: bool

    @property
    def nbytes(self) -> int:
        return torch.Size(self.shape).numel() * getattr(torch, self.dtype).itemsize


def _spec(value: Any) -> Any:
    """A nested tuple/list of tensors and None -> the same structure with each tensor as a `_Leaf`."""
    if isinstance(value, torch.Tensor):
        return _Leaf(tuple(value.shape), str(value.dtype).removeprefix("torch."), value.device.type == "cuda")
    if isinstance(value, (tuple, list)):
        return type(value)(_spec(v) for v in value)
    if value is None:
        return None
    raise TypeError(f"cannot broadcast a {type(value).__name__}: only tensors, None and tuples of them")


def _leaves(value: Any, kind: type) -> list[Any]:
    """The tensors (or `_Leaf`s) of a nested structure, in order."""
    if isinstance(value, kind):
        return [value]
    if isinstance(value, (tuple, list)):
        return [leaf for v in value for leaf in _leaves(v, kind)]
    return []


def _rebuild(spec: Any, data: torch.Tensor, offset: list[int], device: torch.device) -> Any:
    """The inverse of `_spec` over the received bytes `data` (1-D uint8), tensors in order from `offset[0]`."""
    if isinstance(spec, (tuple, list)):
        return type(spec)(_rebuild(s, data, offset, device) for s in spec)
    if spec is None:
        return None
    chunk = data[offset[0] : offset[0] + spec.nbytes].clone()  # own storage: the view below needs an aligned start
    offset[0] += spec.nbytes
    return chunk.view(getattr(torch, spec.dtype)).reshape(spec.shape).to(device if spec.on_cuda else "cpu")


def _to_bytes(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    return t.detach().to(device).contiguous().reshape(-1).view(torch.uint8)


def _shard_blocks(transformer: Any, group: Any) -> None:
    """FSDP2 over `group` for each block, for inference: weights all-gathered per block forward, resharded after."""
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    device = next(transformer.parameters()).device
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"fsdp=1 shards weights on CPU or CUDA, and the transformer is on {device}")
    mesh = DeviceMesh.from_group(group, device.type)
    for block in transformer.blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)


class ParallelModes:
    """`enable_parallel` / `disable_parallel` and the hooks `MotifVideoPipeline.__call__` runs through."""

    _parallel: ParallelRun | None = None

    def enable_parallel(self, cp: int = 1, cfg: int = 1, fsdp: bool = False) -> None:
        """Run each call over the initialised default process group as `cp` context ranks x `cfg` guidance
        ranks (world size = cp x cfg; cfg is 1 or 2); `fsdp`: also shard the blocks' weights over each context
        group. Every rank must call this, then make the same calls."""
        if not dist.is_initialized():
            raise ValueError(
                "enable_parallel needs an initialised torch.distributed process group: launch with torchrun and "
                "call torch.distributed.init_process_group() first"
            )
        if self._parallel is not None:
            raise ValueError(f"parallelism is already enabled ({self._parallel.layout}): call disable_parallel first")
        layout = ParallelLayout(cp, cfg, int(fsdp))
        check_layout(layout, dist.get_world_size(), heads=self.transformer.config.num_attention_heads)
        run = ParallelRun(layout, dist.get_rank())
        cp_index, cfg_index = run.rank % cp, run.rank // cp
        if cp > 1:  # every rank makes every group, in the same order (new_group is collective)
            groups = [dist.new_group([g * cp + c for c in range(cp)]) for g in range(cfg)]
            run.cp_group = groups[cfg_index]
            run.groups += groups
        if cfg > 1:
            groups = [dist.new_group([g * cp + c for g in range(cfg)]) for c in range(cp)]
            run.cfg_group = groups[cp_index]
            run.groups += groups
        wrapped = False
        try:
            if run.cp_group is not None:
                wrapped = enable_context_parallel(self.transformer, run.cp_group) is not None
            if layout.fsdp:
                _shard_blocks(self.transformer, run.cp_group)
        except BaseException:
            if wrapped:
                disable_context_parallel(self.transformer)
            for group in run.groups:  # nothing made here outlives a failed enable
                dist.destroy_process_group(group)
            raise
        self._parallel = run

    def disable_parallel(self) -> None:
        """Back to the single-process path (the groups made by `enable_parallel` are destroyed)."""
        run = self._parallel
        if run is None:
            return
        if run.layout.fsdp:
            raise ValueError("the transformer's weights are sharded (fsdp=1) and stay so: build a new pipeline")
        if run.cp_group is not None:
            disable_context_parallel(self.transformer)
        for group in run.groups:
            dist.destroy_process_group(group)
        self._parallel = None

    @property
    def parallel_layout(self) -> ParallelLayout | None:
        return None if self._parallel is None else self._parallel.layout

    def _ranks(self) -> int:
        """Processes sharing each forward (cp x cfg; 1 without a layout): each holds its share of the activations."""
        return 1 if self._parallel is None else self._parallel.layout.world

    @property
    def is_main_rank(self) -> bool:
        """True on global rank 0 of a parallel pipeline, and always without one: the rank that writes files."""
        return self._parallel is None or self._parallel.rank == 0

    # ------------------------------------------------------------- hooks of `__call__`
    def _check_parallel_call(self, plan: Any) -> None:
        """Per call, before any encoder runs: enough video tokens for the cp ranks; cfg = 2 needs guidance."""
        run = self._parallel
        if run is None:
            return
        tokens = video_tokens(plan.height, plan.width, plan.num_frames, model_patch(self.transformer))
        heads = self.transformer.config.num_attention_heads
        guided = plan.needs_uncond
        check_layout(run.layout, run.layout.world, heads=heads, tokens=tokens, guided=guided)
        if run.layout.cfg == 2 and not plan.batch_guidance:
            raise ValueError("cfg=2 splits the batched [cond; uncond] forward: keep batch_guidance=True")

    def _share(self, make: Any) -> Any:
        """`make()` on rank 0 only, its result (tensors, None and tuples of them) broadcast to every rank."""
        run = self._parallel
        if run is None:
            return make()
        device = _wire_device()
        if run.rank == 0:
            try:
                value = make()
            except BaseException as err:
                dist.broadcast_object_list([("failed", f"{type(err).__name__}: {err}")], src=0, device=device)
                raise
            dist.broadcast_object_list([("ok", _spec(value))], src=0, device=device)
            parts = [_to_bytes(t, device) for t in _leaves(value, torch.Tensor)]
            if parts:
                dist.broadcast(torch.cat(parts), src=0)
            return value
        got: list[Any] = [None]
        dist.broadcast_object_list(got, src=0, device=device)
        status, spec = got[0]
        if status == "failed":
            raise PeerFailed(f"rank 0 failed while making the shared inputs ({spec})")
        size = sum(leaf.nbytes for leaf in _leaves(spec, _Leaf))
        data = torch.empty(size, dtype=torch.uint8, device=device)
        if size:
            dist.broadcast(data, src=0)
        return _rebuild(spec, data, [0], self.device)

    def _parallel_model(self, model: Any) -> Any:
        """The call's model function, split over the guidance ranks when cfg = 2."""
        run = self._parallel
        if run is None or run.cfg_group is None:
            return model
        return guidance_parallel(model, run.cfg_group)

    def _parallel_record(self) -> dict[str, Any]:
        """What the run record says about the layout ({} without one)."""
        return {} if self._parallel is None else {"parallel": self._parallel.layout.to_dict()}

    def _bar_options(self) -> dict[str, Any]:
        """The progress bar's tqdm options: off on every rank but 0."""
        options = dict(getattr(self, "_progress_kwargs", {}))
        if not self.is_main_rank:
            options["disable"] = True
        return options
