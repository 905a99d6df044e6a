"""Loading and saving the official `transformer/` folder format, strictly and without pickle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from model_helpers import assert_close_scaled, make_inputs, random_ours, random_reference
from motif_video import CheckpointError, MotifVideoTransformer, get_preset

TINY = get_preset("tiny")


def _outputs(model, config=TINY):
    with torch.no_grad():
        return model(**make_inputs(config, batch=2, image_len=2), return_dict=False)[0]


def test_loads_a_folder_written_by_diffusers(tmp_path):
    ref = random_reference(TINY)
    ref.save_pretrained(tmp_path / "transformer")
    ours = MotifVideoTransformer.from_pretrained(str(tmp_path), subfolder="transformer")
    assert ours.config == TINY
    assert_close_scaled(_outputs(ours), _outputs(ref))


def test_loads_a_sharded_folder_written_by_diffusers(tmp_path):
    ref = random_reference(TINY)
    ref.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()
    ours = MotifVideoTransformer.from_pretrained(tmp_path)
    assert_close_scaled(_outputs(ours), _outputs(ref))


@pytest.mark.parametrize("preset", ["tiny", "tiny-shared"])
@pytest.mark.parametrize("shard", [None, "40KB"])
def test_save_load_round_trip_is_bit_exact(tmp_path, preset, shard):
    config = get_preset(preset)
    model = random_ours(config)
    model.fuse_qkv_projections()
    model.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "config.json" in files and not any(name.startswith(".") for name in files)
    loaded = MotifVideoTransformer.from_pretrained(tmp_path, fuse_qkv=False)
    assert loaded.config == config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert torch.equal(_outputs(loaded, config), _outputs(model, config))


def test_diffusers_loads_what_we_save(tmp_path):
    from diffusers import MotifVideoTransformer3DModel

    ours = random_ours(TINY)
    ours.save_pretrained(tmp_path)
    ref = MotifVideoTransformer3DModel.from_pretrained(tmp_path).eval()
    assert_close_scaled(_outputs(ref), _outputs(ours))


def test_torch_dtype(tmp_path):
    random_ours(TINY).save_pretrained(tmp_path)
    model = MotifVideoTransformer.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def _saved(tmp_path, preset="tiny") -> tuple[Path, dict]:
    random_ours(get_preset(preset)).save_pretrained(tmp_path)
    return tmp_path / "diffusion_pytorch_model.safetensors", load_file(tmp_path / "diffusion_pytorch_model.safetensors")


def test_missing_tensor_is_named(tmp_path):
    path, state = _saved(tmp_path)
    del state["single_transformer_blocks.1.attn.to_k.bias"]
    save_file(state, path)
    with pytest.raises(CheckpointError, match=r"1 missing tensor\(s\): single_transformer_blocks\.1\.attn\.to_k\.bias"):
        MotifVideoTransformer.from_pretrained(tmp_path)


def test_unexpected_and_misshaped_tensors_are_named(tmp_path):
    path, state = _saved(tmp_path)
    state["transformer_blocks.0.extra.weight"] = torch.zeros(2)
    state["proj_out.bias"] = torch.zeros(63)
    save_file(state, path)
    with pytest.raises(CheckpointError) as err:
        MotifVideoTransformer.from_pretrained(tmp_path)
    assert "unexpected tensor(s): transformer_blocks.0.extra.weight" in str(err.value)
    assert "proj_out.bias: checkpoint (63,) vs model (64,)" in str(err.value)


def test_config_that_contradicts_weights(tmp_path):
    _saved(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_layers": 3}))
    with pytest.raises(CheckpointError, match="missing tensor.*transformer_blocks.2"):
        MotifVideoTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "cross_attention_layout": "shared"}))
    with pytest.raises(CheckpointError, match="cross_attention_layout='shared' but the weights are 'diffusers'"):
        MotifVideoTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "enable_text_cross_attention_single": False}))
    with pytest.raises(CheckpointError, match="enables no cross-attention"):
        MotifVideoTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_axes_dims": [4, 6, 6]}))
    with pytest.raises(CheckpointError, match="rope_axes_dims"):
        MotifVideoTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        MotifVideoTransformer.from_pretrained(tmp_path)


def test_shared_layout_detected_from_keys(tmp_path):
    _saved(tmp_path, "tiny-shared")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["cross_attention_layout"] == "shared"
    del config["cross_attention_layout"]  # as an original-code release would ship it
    (tmp_path / "config.json").write_text(json.dumps(config))
    model = MotifVideoTransformer.from_pretrained(tmp_path)
    assert model.config.cross_attention_layout == "shared"


def test_pickle_is_never_loaded(tmp_path):
    torch.save({"x": torch.zeros(1)}, tmp_path / "diffusion_pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_dict()))
    with pytest.raises(CheckpointError, match="never loads pickled weights"):
        MotifVideoTransformer.from_pretrained(tmp_path)


def test_missing_folder_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="config.json not found"):
        MotifVideoTransformer.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_dict()))
    with pytest.raises(CheckpointError, match="neither diffusion_pytorch_model.safetensors nor"):
        MotifVideoTransformer.from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="is not a folder"):
        MotifVideoTransformer.from_pretrained(str(tmp_path / "nope" / "deeper"))


def test_hub_id_goes_through_huggingface_hub(tmp_path, monkeypatch):
    """A hub id is resolved file by file with hf_hub_download (its cache and offline mode apply)."""
    import huggingface_hub

    ref = random_reference(TINY)
    ref.save_pretrained(tmp_path / "repo" / "transformer", max_shard_size="50KB")
    calls = []

    def fake_download(repo_id, filename, subfolder=None, **kwargs):
        calls.append((repo_id, subfolder, filename, kwargs))
        path = tmp_path / "repo" / (subfolder or "") / filename
        if not path.exists():
            raise huggingface_hub.errors.EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    ours = MotifVideoTransformer.from_pretrained(
        "Motif-Technologies/Motif-Video-2B", subfolder="transformer", revision="main"
    )
    assert_close_scaled(_outputs(ours), _outputs(ref))
    assert all(c[0] == "Motif-Technologies/Motif-Video-2B" and c[1] == "transformer" for c in calls)
    assert calls[0][3] == {"revision": "main"}


def test_hub_id_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets
    with pytest.raises(CheckpointError, match="could not be fetched from the hub"):
        MotifVideoTransformer.from_pretrained(
            "no-such-org/no-such-model", subfolder="transformer", cache_dir=str(tmp_path)
        )


def test_release_hub_id_rule(tmp_path, monkeypatch):
    """One rule for what a release source string means: `owner/name` is a hub id; paths and anything else are not."""
    from motif_video.core.release import is_hub_id, resolve_folder

    assert is_hub_id("Motif-Technologies/Motif-Video-2B")
    for text in ("gpt2", "a/b/c", "./a/b", "/a/b", "~/a", "owner/", "/name", str(tmp_path)):
        assert not is_hub_id(text), text
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "file").write_text("")
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id("org/file")  # an existing relative path is a path
    with pytest.raises(CheckpointError, match="not a folder.*owner/name"):
        resolve_folder("org/file")
