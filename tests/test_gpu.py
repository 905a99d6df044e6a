"""GPU checks (skipped without CUDA): bf16 parity with the reference and every installed attention backend."""

from __future__ import annotations

import pytest
import torch

from model_helpers import make_inputs, random_reference
from motif_video import MotifVideoTransformer, get_preset, set_attention_backend
from motif_video.models.attention import attention, available_backends

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _on_gpu(value: torch.Tensor | None) -> torch.Tensor | None:
    """Latents and embeddings in the model's bf16 (a float32 input meets bf16 conv weights in the patch embed);
    the (B,) timestep stays float32 and the mask integer, as the pipelines pass them."""
    if value is None:
        return None
    value = value.cuda()
    return value.to(torch.bfloat16) if value.is_floating_point() and value.dim() > 1 else value


@pytest.mark.parametrize("backend", available_backends())
def test_bf16_cuda_matches_reference(backend):
    config = get_preset("tiny").replace(num_attention_heads=2, attention_head_dim=64, rope_axes_dim=(16, 24, 24))
    ref = random_reference(config).to("cuda", torch.bfloat16)
    ours = MotifVideoTransformer(config).eval()
    ours.load_state_dict(ref.state_dict())
    ours.to("cuda", torch.bfloat16).fuse_qkv_projections()
    inputs = {k: _on_gpu(v) for k, v in make_inputs(config, batch=1, valid=(5,)).items()}
    set_attention_backend(backend)
    try:
        with torch.no_grad():
            expected = ref(**inputs, return_dict=False)[0].float()
            actual = ours(**inputs, return_dict=False)[0].float()
    finally:
        set_attention_backend(None)
    scale = expected.abs().max().item()
    assert (actual - expected).abs().max().item() <= 3e-2 * max(scale, 1.0)


@pytest.mark.skipif("sage" not in available_backends(), reason="needs sageattention")
def test_sage_kernel_and_the_partial_key_block_it_gets_wrong():
    """SageAttention 1.0.x scores the missing keys of a partial last 64-key block as 0, so they share the softmax
    (seen in Triton's interpreter); `attention` therefore sends such short key sequences to SDPA."""
    from sageattention import sageattn

    g = torch.Generator(device="cuda").manual_seed(0)

    def qkv(keys: int) -> list[torch.Tensor]:
        shapes = ((1, 4, 1024, 128), (1, 4, keys, 128), (1, 4, keys, 128))
        return [torch.randn(s, device="cuda", dtype=torch.bfloat16, generator=g) for s in shapes]

    def error(out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> float:
        ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float())
        return ((out.float() - ref).norm() / ref.norm()).item()

    whole, partial = qkv(128), qkv(100)  # 0 and 28 phantom keys
    whole_error = error(sageattn(*[t.clone() for t in whole], tensor_layout="HND"), *whole)
    partial_error = error(sageattn(*[t.clone() for t in partial], tensor_layout="HND"), *partial)
    assert whole_error < 0.03 and partial_error > 3 * whole_error, (whole_error, partial_error)
    set_attention_backend("sage")
    try:
        assert error(attention(*partial), *partial) < 0.01  # SDPA in bf16
    finally:
        set_attention_backend(None)


def _tiny_cuda_pipeline():
    from motif_video.pipeline import MotifVideoPipeline
    from motif_video.pipeline.tiny import build_tiny_components

    pipe = MotifVideoPipeline.from_components(build_tiny_components(0)).to("cuda")
    pipe.transformer.to(torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _latents(pipe, prompts, seed=0, **kwargs):
    generator = torch.Generator().manual_seed(seed)
    size = dict(height=32, width=32, num_frames=9, num_inference_steps=4, output_type="latent")
    return pipe(prompt=prompts, negative_prompt="blurry", generator=generator, **size, **kwargs).frames


def test_step_reuse_and_split_encoder_on_cuda():
    pipe = _tiny_cuda_pipeline()
    prompts = ["a red dog runs on the beach", "a bird"]
    exact = _latents(pipe, prompts)  # on CUDA the default splits the guidance batch's encoder (mask-free)
    assert pipe.last_reuse is not None and pipe.last_reuse.split
    assert torch.equal(_latents(pipe, prompts, cache="ddt:1"), exact)
    batched = _latents(pipe, prompts, split_encoder="off")  # one masked [cond; uncond] encoder pass
    assert pipe.last_reuse is None
    assert (batched - exact).abs().max().item() <= 5e-2 * max(exact.abs().max().item(), 1.0)
    assert not torch.equal(_latents(pipe, prompts, cache="ddt:2,uncond=2"), exact)


def test_compiled_blocks_on_cuda_match_and_do_not_recompile():
    from torch._dynamo.utils import counters

    from motif_video.pipeline.compile import compile_blocks, uncompile_blocks

    torch._dynamo.reset()
    pipe = _tiny_cuda_pipeline()
    prompts = ["a red dog runs on the beach", "a bird"]
    eager = _latents(pipe, prompts)
    compile_blocks(pipe.transformer)
    try:
        compiled = _latents(pipe, prompts)
        assert (compiled - eager).abs().max().item() <= 5e-2 * max(eager.abs().max().item(), 1.0)
        frames = counters["frames"]["ok"]
        _latents(pipe, ["a cat", "the green trees at night move slowly"], seed=1)
        assert counters["frames"]["ok"] == frames
    finally:
        uncompile_blocks(pipe.transformer)
        torch._dynamo.reset()
