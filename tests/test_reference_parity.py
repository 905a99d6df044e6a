"""Our transformer against diffusers' MotifVideoTransformer3DModel on the same weights (fp32)."""

from __future__ import annotations

import pytest
import torch

from model_helpers import assert_close_scaled, make_inputs, random_reference
from motif_video import MotifVideoTransformer, get_preset

TINY = get_preset("tiny")
CONFIGS = {
    "tiny": TINY,
    "dual-cross-attention": TINY.replace(enable_text_cross_attention_dual=True),
    "no-decoder": TINY.replace(num_decoder_layers=0),
    "all-decoder-single": TINY.replace(num_single_layers=3, num_decoder_layers=3),
    "layer-norm-qk": TINY.replace(qk_norm="layer_norm"),
    "no-image-embedder": TINY.replace(image_embed_dim=None),
    "patch-t-2": TINY.replace(patch_size_t=2),
}
INPUTS = {
    "padded-batch2": dict(batch=2, valid=(7, 4)),
    "no-mask": dict(batch=2, valid=None),
    "all-valid": dict(batch=1, valid=(7,)),
    "image-tokens": dict(batch=2, valid=(3, 6), image_len=3),
    "batch3-odd-grid": dict(batch=3, grid=(3, 4, 2), valid=(1, 7, 5)),
    "middle-hole-mask": dict(batch=2, valid=(7, 7)),
}


def _pair(config):
    ref = random_reference(config)
    ours = MotifVideoTransformer(config).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("config_name", list(CONFIGS))
@pytest.mark.parametrize("input_name", list(INPUTS))
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_matches_reference(config_name, input_name, fused):
    config = CONFIGS[config_name]
    spec = dict(INPUTS[input_name])
    if spec.get("image_len") and config.image_embed_dim is None:
        pytest.skip("config has no image embedder")
    if config.patch_size_t == 2:
        spec["grid"] = (4, 6, 10)
    ref, ours = _pair(config)
    if fused:
        ours.fuse_qkv_projections()
    inputs = make_inputs(config, **spec)
    if input_name == "middle-hole-mask":  # a mask that is not right-padding: nothing can be trimmed
        inputs["encoder_attention_mask"][0, 2] = 0
        inputs["encoder_attention_mask"][1, 5] = 0
    with torch.no_grad():
        expected = ref(**inputs, return_dict=False)[0]
        actual = ours(**inputs, return_dict=False)[0]
    assert actual.shape == expected.shape == inputs["hidden_states"][:, :16].shape
    assert_close_scaled(actual, expected)


def test_scalar_timestep_and_return_dict(tiny_config):
    ref, ours = _pair(tiny_config)
    inputs = make_inputs(tiny_config, batch=2)
    inputs["timestep"] = torch.tensor(500.0)
    with torch.no_grad():
        expected = ref(**{**inputs, "timestep": torch.tensor([500.0, 500.0])}).sample
        out = ours(**inputs)
    assert_close_scaled(out.sample, expected)
    assert out[0] is out.sample and out.repa_features is None


def test_bfloat16_close_to_fp32_reference(tiny_config):
    ref, ours = _pair(tiny_config)
    inputs = make_inputs(tiny_config, batch=2, image_len=2)
    with torch.no_grad():
        expected = ref(**inputs, return_dict=False)[0]
        actual = ours.to(torch.bfloat16)(**inputs, return_dict=False)[0]
    assert actual.dtype == torch.bfloat16
    assert_close_scaled(actual.float(), expected, rel=5e-2)
