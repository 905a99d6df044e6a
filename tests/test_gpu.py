"""GPU checks (skipped without CUDA): bf16 parity with the reference and every installed attention backend."""

from __future__ import annotations

import pytest
import torch

from model_helpers import make_inputs, random_reference
from motif_video import MotifVideoTransformer, get_preset, set_attention_backend
from motif_video.models.attention import available_backends

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
