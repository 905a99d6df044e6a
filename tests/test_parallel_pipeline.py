"""`pipe.enable_parallel` on 2 and 4 gloo ranks gives the single-process result of the tiny pipeline (fp32): T2V
and I2V, context (cp=2), guidance (cfg=2) and both (cp=2 x cfg=2), with DDT step reuse; the text encoder, the
VAE encoder and the decoder run on rank 0 only; a failure on rank 0 while encoding stops every rank; bad layouts
are refused before any encoder runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image

import motif_video
from model_helpers import free_port
from motif_video.pipeline.guidance import GuidanceConfig
from motif_video.pipeline.parallel import PeerFailed
from motif_video.pipeline.parallel_layout import ParallelLayout, check_layout, video_tokens
from motif_video.pipeline.pipeline import GenerationDefaults, MotifVideoPipeline
from motif_video.pipeline.tiny import TINY_DEFAULTS, build_tiny_components

SIZE = dict(height=32, width=32, num_frames=5, num_inference_steps=2)  # 2 x 2 x 2 = 8 video tokens
PROMPT = "a red dog runs on the beach at sunset"

# name -> (cp, cfg, call options); each world size runs its cases in one launch
WINDOW = GuidanceConfig(method="cfg", scale=5.0, start=0.25, stop=0.5)
FSDP_CASES = {  # on a fresh pipeline (fsdp=1 is not undone): cp, cfg, call options
    2: (2, 1, {"i2v": True, "cache": "adaptive:0.2", "num_inference_steps": 4}),  # its signal reads block 0
    4: (2, 2, {"i2v": True, "cache": "ddt:2"}),
}
CASES = {
    2: {
        "t2v_cp2": (2, 1, {}),
        "i2v_cfg2_ddt": (1, 2, {"i2v": True, "cache": "ddt:2"}),
        "i2v_cp2_frames": (2, 1, {"i2v": True, "output_type": "np"}),
        # the adaptive rule's decision is summed over both ranks' tokens: the same encoder runs as one process
        "t2v_cp2_adaptive": (2, 1, {"cache": "adaptive:0.2", "num_inference_steps": 6}),
        # steps outside the guidance window run on one guidance rank (the other's reuse state stays as one
        # process keeps it), and the halves of a joint call decide a whole-step skip together
        "t2v_cfg2_window_reuse": (1, 2, {"guidance": WINDOW, "cache": "ddt:3,skip=2", "num_inference_steps": 8}),
        # the CUDA default: the guidance batch's encoder per text length, mask-free, on sharded video tokens
        "i2v_cp2_split": (2, 1, {"i2v": True, "split_encoder": "on"}),
    },
    4: {
        "t2v_cp2xcfg2": (2, 2, {}),
        "i2v_cp2xcfg2_ddt": (2, 2, {"i2v": True, "cache": "ddt:2"}),
        "i2v_cp4_ulysses2xring2_ddt": (4, 1, {"i2v": True, "cache": "ddt:2"}),  # the tiny model has 2 heads
        "t2v_cp4_split_ddt": (4, 1, {"split_encoder": "on", "cache": "ddt:2"}),
    },
}


def _pipe() -> MotifVideoPipeline:
    pipe = MotifVideoPipeline.from_components(build_tiny_components(seed=0))
    pipe.defaults = GenerationDefaults(**TINY_DEFAULTS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _image() -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def _call(pipe: MotifVideoPipeline, options: dict) -> object:
    options = dict(options)
    image = _image() if options.pop("i2v", False) else None
    options.setdefault("output_type", "latent")
    generator = torch.Generator().manual_seed(0)
    return pipe(prompt=PROMPT, image=image, generator=generator, **{**SIZE, **options}).frames


def _counted(module: torch.nn.Module, counts: dict, name: str) -> None:
    counts[name] = 0
    module.register_forward_pre_hook(lambda *_: counts.__setitem__(name, counts[name] + 1))


def _worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        pipe, results, counts = _pipe(), {}, {}
        _counted(pipe.text_encoder, counts, "text_encoder")
        _counted(pipe.text_encoder.vision_tower, counts, "vision_tower")
        _counted(pipe.vae.encoder, counts, "vae_encoder")
        _counted(pipe.vae.decoder, counts, "vae_decoder")
        for name, (cp, cfg, options) in CASES[world_size].items():
            pipe.enable_parallel(cp=cp, cfg=cfg)
            results[name] = _call(pipe, options)
            results["record_" + name] = pipe.last_call["parallel"]
            results["reuse_" + name] = pipe.last_call.get("cache")
            results["main"] = pipe.is_main_rank
            pipe.disable_parallel()
        pipe.enable_parallel(cp=world_size // 2, cfg=2)
        with pytest.raises(ValueError, match="no step of this call runs guidance"):
            _call(pipe, {"guidance": "none"})
        with pytest.raises(ValueError, match="already enabled"):
            pipe.enable_parallel(cp=world_size)
        if rank == 0:  # rank 0 fails while encoding the prompt: the others stop too, instead of waiting
            pipe.encode_prompt = lambda *args, **kwargs: (_ for _ in ()).throw(OSError("disk gone"))
        with pytest.raises(OSError if rank == 0 else PeerFailed, match="disk gone"):
            _call(pipe, {})
        pipe.__dict__.pop("encode_prompt", None)
        pipe.disable_parallel()
        results["plain_after_disable"] = _call(pipe, {})  # every rank alone again
        sharded = _pipe()
        cp, cfg, options = FSDP_CASES[world_size]
        sharded.enable_parallel(cp=cp, cfg=cfg, fsdp=True)
        results["fsdp"] = _call(sharded, options)
        weight = next(sharded.transformer.blocks[0].parameters())  # a DTensor, resharded after the forwards
        results["fsdp_local"] = (weight.to_local().numel(), weight.numel())
        with pytest.raises(ValueError, match="stay so"):
            sharded.disable_parallel()
        torch.save(dict(results=results, counts=counts), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world_size", [2, 4])
def test_parallel_pipeline_matches_one_process(tmp_path, world_size):
    mp.spawn(_worker, args=(world_size, free_port(), str(tmp_path)), nprocs=world_size, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(world_size)]
    pipe = _pipe()
    for name, (cp, cfg, options) in CASES[world_size].items():
        expected = torch.as_tensor(_call(pipe, options))
        got = torch.as_tensor(ranks[0]["results"][name])
        error = (got - expected).abs().max().item()
        print(f"{name} on {world_size} ranks: max abs diff {error:.2e}")
        assert error <= 1e-5, name
        reuse = pipe.last_call.get("cache")  # the same encoder (and whole-step) runs as one process
        if cfg == 1:
            assert ranks[0]["results"]["reuse_" + name] == reuse, name
        elif reuse is not None:  # with cfg=2 each rank's record holds its own branch only
            assert ranks[0]["results"]["reuse_" + name]["cond"] == reuse["cond"], name
            assert ranks[cp]["results"]["reuse_" + name]["uncond"] == reuse["uncond"], name
        assert ranks[0]["results"]["record_" + name] == dict(cp=cp, cfg=cfg, world=cp * cfg, fsdp=0)
        for other in ranks[1:]:
            if options.get("output_type") == "np":
                assert other["results"][name] is None  # only rank 0 decodes
            else:  # latents: identical on every rank
                assert torch.equal(other["results"][name], ranks[0]["results"][name])
    cp, cfg, options = FSDP_CASES[world_size]
    error = (torch.as_tensor(ranks[0]["results"]["fsdp"]) - torch.as_tensor(_call(pipe, options))).abs().max().item()
    print(f"fsdp cp={cp},cfg={cfg} on {world_size} ranks: max abs diff {error:.2e}")
    assert error <= 1e-5
    for rank in ranks:
        local, full = rank["results"]["fsdp_local"]
        assert local * cp == full  # each context rank holds 1/cp of every block weight
    plain = torch.as_tensor(_call(pipe, {}))
    assert torch.equal(ranks[-1]["results"]["plain_after_disable"], plain)
    calls = len(CASES[world_size]) + 1  # + the plain call after disable_parallel
    i2v = sum(1 for _, _, o in CASES[world_size].values() if o.get("i2v"))
    decoded = sum(1 for _, _, o in CASES[world_size].values() if o.get("output_type") == "np")
    counts = dict(ranks[0]["counts"])
    assert (counts.pop("vae_decoder") > 0) == (decoded > 0)
    assert counts == dict(text_encoder=calls, vision_tower=i2v, vae_encoder=i2v)
    for other in ranks[1:]:  # the other ranks ran no encoder and no decoder, except alone after disable_parallel
        assert other["counts"] == dict(text_encoder=1, vision_tower=0, vae_encoder=0, vae_decoder=0)
        assert not other["results"]["main"] and ranks[0]["results"]["main"]


def test_layout_parse_and_refusals():
    assert ParallelLayout.parse("cp=4,cfg=2") == ParallelLayout(4, 2)
    assert ParallelLayout.parse(" cfg = 2 ") == ParallelLayout(1, 2)
    assert str(ParallelLayout.parse("cp=3")) == "cp=3,cfg=1"
    assert (
        ParallelLayout.parse("cp=2,fsdp=1") == ParallelLayout(2, 1, 1) and ParallelLayout.parse("cp=2,fsdp=0").fsdp == 0
    )
    for bad, message in [
        ("cp=2,cp=2", "given twice"),
        ("tp=2", "write cp=P,cfg=G"),
        ("cp=0", "positive integer"),
        ("cp=2,fsdp=2", "fsdp is 0 or 1"),
        ("cp=x", "positive integer"),
        ("cp=2;cfg=2", "positive integer"),
        ("", "write cp=P,cfg=G"),
    ]:
        with pytest.raises(ValueError, match=message):
            ParallelLayout.parse(bad)
    assert video_tokens(32, 32, 5, (2, 1)) == 8
    check_layout(ParallelLayout(2, 2), 4, heads=12, tokens=8, guided=True)
    for layout, world, kwargs, message in [
        (ParallelLayout(2, 2), 2, {}, "needs cp x cfg = 4 processes, and there are 2"),
        (ParallelLayout(1, 3), 3, {}, "cfg is 1 or 2"),
        (ParallelLayout(1, 2, 1), 2, {}, "needs cp >= 2"),
        (ParallelLayout(1, 2), 2, dict(guided=False), "no step of this call runs guidance"),
        (ParallelLayout(4, 1), 4, dict(tokens=2), "each rank needs at least one"),
    ]:
        with pytest.raises(ValueError, match=message):
            check_layout(layout, world, heads=12, **kwargs)


def test_bench_parallel_smoke():
    """`benchmarks/bench_parallel.py --smoke` (the degree-1 overhead table) runs, so it cannot rot before a GPU run."""
    root = Path(__file__).resolve().parent.parent
    src = Path(motif_video.__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(src), str(root / "benchmarks")]))
    command = [sys.executable, "benchmarks/bench_parallel.py", "--smoke", "--steps", "2", "--repeats", "1"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ")[0].lstrip("| ") for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows == ["Variant", "plain", "launch cp=1,cfg=1", "ulysses P=1"], done.stdout


def test_memory_estimate_per_rank():
    """Under a layout each rank holds 1/(cp x cfg) of the transformer's activations: the estimate the memory check
    uses shrinks by exactly that part, and the VAE and host parts stay whole (rank 0 decodes)."""
    from motif_video import get_preset
    from motif_video.pipeline.footprint import generation_bytes

    config = get_preset("motif-video-2b")
    args = (config, 480, 832, 49, 1, True, 2)
    one, host = generation_bytes(*args)
    four, host4 = generation_bytes(*args, ranks=4)
    transformer_only = generation_bytes(*args, decode=False)[0]
    assert host4 == host and four < one
    assert one - four == pytest.approx(
        0.75 * (transformer_only - generation_bytes(*args, decode=False, ranks=10**9)[0]), rel=1e-6
    )
