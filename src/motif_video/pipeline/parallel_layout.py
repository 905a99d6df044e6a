"""The layout of one parallel generation, parsed and checked with no model loaded and no process group.

- `ParallelLayout(cp, cfg)`: `cp` context-parallel ranks (Ulysses over the video tokens) times `cfg` guidance
  ranks (1, or 2: the conditional and unconditional halves of a guided step). World size = cp x cfg.
- Global rank r sits at (cfg index r // cp, cp index r % cp), the order of a ("cfg", "cp") device mesh: ranks
  [g * cp, (g + 1) * cp) shard one guidance branch's tokens; ranks {c, cp + c} split the branches.
- `fsdp=1` also shards the transformer blocks' weights over each context group (FSDP2 `fully_shard`, inference:
  each block's weights are all-gathered for its forward and freed after), for cards too small for 2B weights.
- `ParallelLayout.parse("cp=4,cfg=2,fsdp=1")`: the command line's `--parallel`; a key given once, cp and cfg
  positive integers (missing: 1), fsdp 0 or 1 (missing: 0).
- `check_layout` refuses, with what to change: cfg outside {1, 2}; cp x cfg different from the world size;
  cfg=2 when no step runs guidance (nothing to split); more cp ranks than video tokens; a cp degree the heads do
  not allow (`core.context_parallel.check_degree`, so the rule follows whatever that module accepts). Every
  step-reuse rule is allowed: the adaptive rule sums its signal over all ranks' tokens (`token_sums`), the others
  decide from t alone, so the ranks of a context group always run the same blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from motif_video.core.context_parallel import check_degree
from motif_video.core.latent_space import VAE_SPATIAL, VAE_TEMPORAL

KEYS = ("cp", "cfg", "fsdp")


@dataclass(frozen=True)
class ParallelLayout:
    """`cp` context ranks x `cfg` guidance ranks for one video."""

    cp: int = 1
    cfg: int = 1
    fsdp: int = 0  # 1: the blocks' weights sharded over each context group

    @property
    def world(self) -> int:
        return self.cp * self.cfg

    @classmethod
    def parse(cls, text: str) -> ParallelLayout:
        """ "cp=4,cfg=2" -> ParallelLayout(4, 2); a missing cp or cfg is 1, a missing fsdp 0."""
        values: dict[str, int] = {}
        for part in text.split(","):
            key, sep, value = (s.strip() for s in part.partition("="))
            if not sep or key not in KEYS:
                raise ValueError(f"--parallel {text!r}: write cp=P,cfg=G[,fsdp=1] (for example cp=4,cfg=2 or cp=2)")
            if key in values:
                raise ValueError(f"--parallel {text!r}: {key} is given twice")
            if key == "fsdp" and value not in ("0", "1"):
                raise ValueError(f"--parallel {text!r}: fsdp is 0 or 1, got {value!r}")
            if not value.isdigit() or (key != "fsdp" and int(value) < 1):
                raise ValueError(f"--parallel {text!r}: {key} must be a positive integer, got {value!r}")
            values[key] = int(value)
        return cls(**values)

    def __str__(self) -> str:
        return f"cp={self.cp},cfg={self.cfg}" + (",fsdp=1" if self.fsdp else "")

    def to_dict(self) -> dict[str, int]:
        return dict(cp=self.cp, cfg=self.cfg, world=self.world, fsdp=self.fsdp)


def video_tokens(height: int, width: int, num_frames: int, patch: tuple[int, int]) -> int:
    """Video tokens of one forward: latent frames (F - 1) / 4 + 1 and pixels / 8, divided by the (spatial,
    temporal) patch."""
    frames = (num_frames - 1) // VAE_TEMPORAL + 1
    spatial, temporal = patch
    return (frames // temporal) * (height // VAE_SPATIAL // spatial) * (width // VAE_SPATIAL // spatial)


def check_layout(
    layout: ParallelLayout,
    world: int,
    *,
    heads: int,
    tokens: int | None = None,
    guided: bool | None = None,
) -> None:
    """Refuse a layout that cannot run (ValueError saying what to change). `world`: processes in the group;
    `heads`: the transformer's attention heads; `tokens`: video tokens per forward and `guided`: whether any
    step runs guidance, each None when not known yet (checked again when the call is planned)."""
    if layout.cfg not in (1, 2):
        raise ValueError(
            f"cfg={layout.cfg}: guidance parallelism splits the conditional and unconditional branches, so cfg is "
            "1 or 2"
        )
    if layout.cp < 1:
        raise ValueError(f"cp={layout.cp}: the context-parallel degree must be at least 1")
    if layout.fsdp and layout.cp < 2:
        raise ValueError(
            "fsdp=1 shards the weights over the context-parallel ranks (the ranks that run the same blocks in "
            "step); it needs cp >= 2"
        )
    if layout.world != world:
        raise ValueError(
            f"--parallel {layout} needs cp x cfg = {layout.world} processes, and there are {world}: launch with "
            f"torchrun --nproc_per_node {layout.world} (over all nodes), or change cp/cfg to multiply to {world}"
        )
    if layout.cfg == 2 and guided is False:
        raise ValueError(
            "cfg=2 splits the guidance branches, and no step of this call runs guidance: use cp only, or turn "
            "guidance on (--guidance apg/cfg with a scale that is not neutral)"
        )
    if tokens is not None and tokens < layout.cp:
        raise ValueError(
            f"cp={layout.cp} ranks for a video of {tokens} tokens: each rank needs at least one; use cp <= {tokens} "
            "or a larger size"
        )
    if layout.cp > 1:
        check_degree(heads, layout.cp)
