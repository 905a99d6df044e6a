"""Guidance parallelism, alone (2 gloo ranks) and as a second axis beside context parallelism (4 ranks: 2 context
x 2 guidance), and with step reuse of the DDT decoder: a short guided I2V denoise with padded text gives the
single-process latents."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from diffusers import FlowMatchEulerDiscreteScheduler

from model_helpers import free_port, random_ours
from motif_video import get_preset
from motif_video.core.context_parallel import enable_context_parallel
from motif_video.core.flow import flow_sigmas
from motif_video.pipeline.guidance import GuidanceConfig
from motif_video.pipeline.guidance_parallel import guidance_parallel
from motif_video.pipeline.sampler import Condition, denoise
from motif_video.pipeline.schedule import set_scheduler_sigmas, unshifted_scheduler
from motif_video.pipeline.step_cache import EncoderReuse, StepCache

SHAPE = (1, 16, 2, 4, 8)  # (B, C, F', h, w): 16 tokens
GUIDE = GuidanceConfig(method="cfg", scale=3.0, stop=0.7)  # the last step runs the conditional branch only


def _config():
    return get_preset("tiny")


def _scheduler():
    scheduler = unshifted_scheduler(FlowMatchEulerDiscreteScheduler())
    set_scheduler_sigmas(scheduler, flow_sigmas(3, 3.0), "cpu")
    return scheduler


def _condition(seed: int, length: int, valid: int) -> Condition:
    g = torch.Generator().manual_seed(seed)
    c = _config()
    text = torch.randn(SHAPE[0], length, c.text_embed_dim, generator=g)
    mask = torch.arange(length)[None].expand(SHAPE[0], -1) < valid
    channels = torch.randn(SHAPE[0], 17, *SHAPE[2:], generator=g)
    image = torch.randn(SHAPE[0], 3, c.image_embed_dim, generator=g)
    return Condition(text, mask, channels, image)


def _model_fn(transformer):
    def velocity(latents: torch.Tensor, t: torch.Tensor, c: Condition) -> torch.Tensor:
        x = torch.cat([latents, c.channels], dim=1)
        out = transformer(
            hidden_states=x,
            timestep=t,
            encoder_hidden_states=c.text,
            encoder_attention_mask=c.mask,
            image_embeds=c.image,
        )
        return out.sample

    return velocity


@torch.no_grad()
def _generate(model_fn) -> torch.Tensor:
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    return denoise(model_fn, noise, _scheduler(), _condition(1, 6, 4), _condition(2, 3, 3), GUIDE)


def _velocity(transformer, reuse: bool):
    return EncoderReuse(transformer, StepCache("ddt", 2), torch.float32) if reuse else _model_fn(transformer)


def _worker(rank: int, world_size: int, port: int, reuse: bool, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        transformer, guidance_group = random_ours(_config()), None
        if world_size == 4:
            # ranks (0, 1) and (2, 3) each shard one branch's tokens; (0, 2) and (1, 3) split the branches
            context_groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
            guidance_groups = [dist.new_group([0, 2]), dist.new_group([1, 3])]
            transformer = enable_context_parallel(transformer, context_groups[rank // 2])
            guidance_group = guidance_groups[rank % 2]
            with pytest.raises(ValueError, match="exactly 2 ranks"):
                guidance_parallel(_model_fn(transformer))
        seen = []
        inner = _velocity(transformer, reuse)

        def recorded(latents: torch.Tensor, t: torch.Tensor, c: Condition) -> torch.Tensor:
            seen.append((latents.shape[0], c.branch))
            return inner(latents, t, c)

        latents = _generate(guidance_parallel(recorded, guidance_group))
        if rank == 0:
            reused = reuse and any(not call.encoder for call in inner.calls)
            torch.save(dict(latents=latents, seen=seen, reused=reused), out_path)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize(
    "world_size, reuse", [(2, False), (4, False), (4, True)], ids=["guidance2", "context2xguidance2", "reuse"]
)
def test_parallel_denoise_matches_one_process(tmp_path, world_size, reuse):
    out = tmp_path / "latents.pt"
    mp.spawn(_worker, args=(world_size, free_port(), reuse, str(out)), nprocs=world_size, join=True)
    result = torch.load(out, weights_only=True)
    # each guided step ran one branch (B rows) per rank; the last, unguided step ran the conditional branch
    assert result["seen"] == [(SHAPE[0], "cond")] * 3
    assert result["reused"] == reuse  # the encoder output was reused on some step
    expected = _generate(_velocity(random_ours(_config()), reuse))
    error = (result["latents"] - expected).abs().max().item()
    print(f"{world_size} ranks: max abs diff {error:.2e}")
    assert error <= 1e-5
