"""LoRA (training/lora.py, pipeline/lora.py): a fresh adapter is the identity, only adapters train, files round-trip
exactly (and peft and diffusers read them), merging equals the unmerged adapter, and the pipeline's load / scale /
fuse / unload behave like diffusers'."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model_helpers import assert_close_scaled, make_inputs, random_ours, random_reference
from motif_video import MotifVideoTransformer, get_preset
from motif_video.core.lora import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    LoRAConfig,
    add_lora,
    load_lora,
    lora_layers,
    lora_state_dict,
    merge_lora,
    save_lora,
    unload_lora,
)

pytest.importorskip("peft")
TINY = get_preset("tiny")


def _out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**make_inputs(TINY, batch=2, image_len=2)).sample


def _randomise_lora(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def _trained_lora(rank: int = 4, alpha: float = 8.0) -> MotifVideoTransformer:
    model = add_lora(random_ours(TINY), LoRAConfig(rank=rank, alpha=alpha))
    _randomise_lora(model)
    return model


def test_fresh_adapter_is_identity_and_only_adapters_train():
    model = random_ours(TINY)
    base_out = _out(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, LoRAConfig(rank=4, dropout=0.1))
    assert isinstance(model, MotifVideoTransformer)
    assert torch.equal(_out(model), base_out)  # B = 0 (eval mode: no dropout)
    names = set(lora_layers(model))
    assert "single_transformer_blocks.0.proj_out" in names and "transformer_blocks.1.ff_context.net.2" in names
    assert not any(n.startswith(("proj_out", "norm_out")) or "norm1" in n for n in names)  # blocks' Linears only
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = make_inputs(TINY, batch=2, image_len=2)
    for _ in range(3):
        loss = model(**inputs).sample.square().mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
    after = model.state_dict()
    for key, value in before.items():  # the base weights now live under `base_layer` in adapted Linears
        parts = key.rsplit(".", 1)
        adapted = f"{parts[0]}.base_layer.{parts[1]}"
        assert torch.equal(after[adapted if adapted in after else key], value), key
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after.items() if ".lora_B." in k)


def test_save_load_round_trip_and_merge(tmp_path):
    model = _trained_lora()
    expected = _out(model)
    save_lora(model, tmp_path)
    assert (tmp_path / WEIGHTS_NAME).is_file() and json.loads((tmp_path / CONFIG_NAME).read_text())["r"] == 4
    assert all(k.startswith("base_model.model.") for k in load_file(tmp_path / WEIGHTS_NAME))  # peft's layout

    fresh = load_lora(random_ours(TINY), tmp_path)
    assert torch.equal(_out(fresh), expected)
    for key, value in lora_state_dict(model).items():
        assert torch.equal(lora_state_dict(fresh)[key], value), key

    merged = merge_lora(fresh)
    assert isinstance(merged, MotifVideoTransformer) and not hasattr(merged, "peft_config")
    assert not lora_layers(merged)
    assert set(merged.state_dict()) == set(random_ours(TINY).state_dict())
    assert_close_scaled(_out(merged), expected)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = MotifVideoTransformer.from_pretrained(tmp_path / "merged", fuse_qkv=False)
    assert torch.equal(_out(reloaded), _out(merged))


def test_fused_model_unfuses_for_lora_and_fuses_again():
    model = random_ours(TINY)
    model.fuse_qkv_projections()
    base_out = _out(model)
    add_lora(model, LoRAConfig(rank=2))
    assert "transformer_blocks.0.attn.to_q" in lora_layers(model)  # q/k/v are separate Linears again
    _randomise_lora(model)
    adapted = _out(model)
    assert not torch.allclose(adapted, base_out)
    merge_lora(model)
    assert model.transformer_blocks[0].attn.is_fused
    assert_close_scaled(_out(model), adapted)

    again = random_ours(TINY)
    again.fuse_qkv_projections()
    add_lora(again, LoRAConfig(rank=2))
    unload_lora(again)
    assert again.transformer_blocks[0].attn.is_fused and torch.equal(_out(again), base_out)


def test_peft_and_diffusers_read_the_files(tmp_path):
    from peft import PeftModel

    model = _trained_lora()
    save_lora(model, tmp_path)
    assert torch.equal(_out(PeftModel.from_pretrained(random_ours(TINY), str(tmp_path))), _out(model))

    ref = random_reference(TINY)  # diffusers' model + the same adapter, loaded by diffusers
    ours = MotifVideoTransformer(TINY)
    ours.load_state_dict(ref.state_dict())
    state = {k.removeprefix("base_model.model."): v for k, v in load_file(tmp_path / WEIGHTS_NAME).items()}
    ref.load_lora_adapter(state, prefix=None, metadata=json.loads((tmp_path / CONFIG_NAME).read_text()))
    load_lora(ours, tmp_path)
    with torch.no_grad():
        expected = ref(**make_inputs(TINY, batch=2, image_len=2), return_dict=False)[0]
    assert_close_scaled(_out(ours), expected)


def test_diffusers_style_file_without_config(tmp_path):
    from safetensors.torch import save_file

    model = _trained_lora(rank=4, alpha=4)  # no config: alpha = rank, as diffusers assumes
    save_file({f"transformer.{k}": v for k, v in lora_state_dict(model).items()}, tmp_path / "x.safetensors")
    assert torch.equal(_out(load_lora(random_ours(TINY), tmp_path / "x.safetensors")), _out(model))


def test_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"\['attn.to_qq'\] match no Linear"):
        add_lora(random_ours(TINY), LoRAConfig(target_modules=("attn.to_qq",)))
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRAConfig(rank=0)
    save_lora(_trained_lora(), tmp_path / "a")
    other = random_ours(TINY.replace(num_layers=3))  # an extra dual block: its LoRA tensors are missing
    with pytest.raises(ValueError, match="does not fit this model"):
        load_lora(other, tmp_path / "a")
    assert not lora_layers(other) and not hasattr(other, "peft_config")  # a failed load leaves no adapter
    with pytest.raises(ValueError, match="holds no LoRA weights"):
        load_lora(random_ours(TINY), tmp_path)


# --------------------------------------------------------------------------- the pipeline


def _frames(pipe) -> np.ndarray:
    args = dict(height=32, width=32, num_frames=5, num_inference_steps=2, output_type="np")
    return pipe("a red dog runs on the beach", generator=torch.Generator().manual_seed(1), **args).frames


def test_pipeline_load_scale_fuse_unload(tmp_path):
    from motif_video.pipeline import MotifVideoPipeline
    from motif_video.pipeline.tiny import build_tiny_components

    lora_model = add_lora(build_tiny_components(seed=0)["transformer"], LoRAConfig(rank=4))
    _randomise_lora(lora_model, std=0.3)
    save_lora(lora_model, tmp_path / "lora")

    pipe = MotifVideoPipeline.from_components(build_tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.fuse_qkv_projections()  # as from_pretrained loads it
    base = _frames(pipe)

    pipe.load_lora_weights(str(tmp_path / "lora"))
    adapted = _frames(pipe)
    assert np.abs(adapted - base).max() > 1e-3
    pipe.set_lora_scale(0.0)
    np.testing.assert_allclose(_frames(pipe), base, atol=1e-5)  # unfused q/k/v vs fused: rounding only
    pipe.unload_lora_weights()
    assert np.array_equal(_frames(pipe), base)

    pipe.load_lora_weights(str(tmp_path / "lora"), adapter_name="style", scale=0.0)
    np.testing.assert_allclose(_frames(pipe), base, atol=1e-5)
    pipe.set_lora_scale(1.0, "style")
    np.testing.assert_allclose(_frames(pipe), adapted, atol=1e-6)
    pipe.save_lora_weights(str(tmp_path / "saved"), "style")
    with pytest.raises(ValueError, match=r"unfused LoRA adapters \(style\): call fuse_lora\(\)"):
        pipe.save_pretrained(str(tmp_path / "release"))
    assert not (tmp_path / "release" / "model_index.json").exists()
    pipe.fuse_lora()
    pipe.save_pretrained(str(tmp_path / "release"))  # fused: the official keys, loadable as a release
    reloaded = MotifVideoPipeline.from_pretrained(str(tmp_path / "release"))
    reloaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(_frames(reloaded), adapted, atol=1e-5)
    assert not lora_layers(pipe.transformer) and pipe.transformer.transformer_blocks[0].attn.is_fused
    np.testing.assert_allclose(_frames(pipe), adapted, atol=1e-5)
    with pytest.raises(ValueError, match="has no LoRA adapter"):
        pipe.fuse_lora()
    saved = {k: v for k, v in load_file(tmp_path / "saved" / WEIGHTS_NAME).items()}
    for key, value in load_file(tmp_path / "lora" / WEIGHTS_NAME).items():
        assert torch.equal(saved[key], value), key
