"""Regional compile (`pipeline.compile.compile_blocks`): the same frames, and no recompilation once each kind of call
has run: across steps, seeds, prompts of other lengths, guidance on and off, and from T2V to I2V."""

from __future__ import annotations

import torch
from torch._dynamo.utils import counters

from motif_video.pipeline import MotifVideoPipeline
from motif_video.pipeline.compile import compile_blocks, compiled_blocks
from motif_video.pipeline.tiny import build_tiny_components


def test_compiled_blocks_do_not_recompile_across_steps_guidance_and_tasks():
    torch._dynamo.reset()
    pipe = MotifVideoPipeline.from_components(build_tiny_components(0))
    pipe.set_progress_bar_config(disable=True)
    pipe.guidance = pipe.guidance.replace(stop=0.5)  # guided [cond; uncond] batches, then the conditional pass alone

    def run(prompts: list[str], seed: int, steps: int, **kwargs) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        size = dict(height=32, width=32, num_frames=9, num_inference_steps=steps, output_type="latent")
        return pipe(prompt=prompts, negative_prompt="blurry", generator=generator, **size, **kwargs).frames

    prompts = ["a red dog runs on the beach", "a small blue bird flies"]
    eager = run(prompts, 0, 4)
    compile_blocks(pipe.transformer, backend="eager")  # dynamo's guards and graphs, without inductor's codegen
    assert compiled_blocks(pipe.transformer) == len(pipe.transformer.blocks)
    assert torch.equal(run(prompts, 0, 4), eager)
    compiled = counters["frames"]["ok"]
    assert compiled > 0
    run(["a dog", "the green trees at night move slowly in the wind"], 1, 6)  # other text lengths, more steps
    assert counters["frames"]["ok"] == compiled, "recompiled for T2V"
    run(prompts, 2, 4, image=torch.rand(3, 32, 32))  # I2V: image tokens in the context
    assert counters["frames"]["ok"] == compiled, "a compiled block recompiled"
    torch._dynamo.reset()


def test_compiled_blocks_do_not_recompile_under_the_split_encoder():
    """The CUDA default (`split_encoder` auto: the encoder per text length, mask-free; B=1 and B=2 calls)."""
    torch._dynamo.reset()
    pipe = MotifVideoPipeline.from_components(build_tiny_components(0))
    pipe.set_progress_bar_config(disable=True)

    def run(prompts: list[str], seed: int, steps: int, **kwargs) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        size = dict(height=32, width=32, num_frames=9, num_inference_steps=steps, output_type="latent")
        return pipe(
            prompt=prompts, negative_prompt="blurry", generator=generator, split_encoder="on", **size, **kwargs
        ).frames

    prompts = ["a red dog runs on the beach", "a small blue bird flies"]
    eager = run(prompts, 0, 3)
    compile_blocks(pipe.transformer, backend="eager")
    try:
        assert torch.equal(run(prompts, 0, 3), eager)
        compiled = counters["frames"]["ok"]
        run(["a dog", "the green trees at night move slowly in the wind"], 1, 4)
        run(prompts, 2, 3, image=torch.rand(3, 32, 32))
        assert counters["frames"]["ok"] == compiled, "a compiled block recompiled under the split encoder"
    finally:
        torch._dynamo.reset()
