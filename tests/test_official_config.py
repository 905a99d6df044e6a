"""The official 2B preset: exact parameter counts, and the same keys and shapes as diffusers' model."""

from __future__ import annotations

import json

import torch

from model_helpers import diffusers_kwargs
from motif_video import MotifVideoConfig, MotifVideoTransformer, get_preset


def _meta_model(config):
    with torch.device("meta"):
        return MotifVideoTransformer(config)


def test_official_values():
    c = get_preset("motif-video-2b")
    assert (c.in_channels, c.out_channels, c.num_attention_heads, c.attention_head_dim) == (33, 16, 12, 128)
    assert (c.num_layers, c.num_single_layers, c.num_decoder_layers) == (12, 24, 8)
    assert (c.text_embed_dim, c.image_embed_dim, c.rope_theta, c.rope_axes_dim) == (2560, 1152, 10000.0, (16, 56, 56))
    assert (c.enable_text_cross_attention_dual, c.enable_text_cross_attention_single) == (False, True)
    assert (c.num_encoder_blocks, c.num_blocks) == (28, 36)


def test_parameter_counts():
    assert _meta_model(get_preset("motif-video-2b")).num_parameters() == 2_037_809_600
    assert _meta_model(get_preset("motif-video-2b-shared")).num_parameters() == 1_962_308_032


def test_same_keys_and_shapes_as_diffusers():
    from diffusers import MotifVideoTransformer3DModel

    config = get_preset("motif-video-2b")
    with torch.device("meta"):
        ref = MotifVideoTransformer3DModel(**diffusers_kwargs(config))
    ours = _meta_model(config)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ref.state_dict().items()
    }
    ours.fuse_qkv_projections()  # fusing changes the compute, never the checkpoint keys
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {
        k: tuple(v.shape) for k, v in ref.state_dict().items()
    }


def test_config_json_round_trip_and_diffusers_reads_it():
    from diffusers import MotifVideoTransformer3DModel

    config = get_preset("motif-video-2b")
    data = json.loads(json.dumps(config.to_dict()))
    assert data["_class_name"] == "MotifVideoTransformer3DModel"
    assert "cross_attention_layout" not in data
    assert MotifVideoConfig.from_dict(data) == config
    ref_config = MotifVideoTransformer3DModel.extract_init_dict(data)[0]
    assert {k: ref_config[k] for k in ("num_attention_heads", "num_single_layers", "rope_theta")} == {
        "num_attention_heads": 12,
        "num_single_layers": 24,
        "rope_theta": 10000.0,
    }


def test_bad_config_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="rope_axes_dim"):
        MotifVideoConfig(rope_axes_dim=(16, 56, 50))
    with pytest.raises(ValueError, match="does not know"):
        MotifVideoConfig.from_dict({"num_layerz": 3})
    with pytest.raises(ValueError, match="Unknown preset"):
        get_preset("motif-video-200b")
