"""Export (training/export.py): in-memory models and DCP training checkpoints become the official transformer folder
(read back bit-exactly by us and by diffusers), EMA or trained weights on request, LoRA runs merged, incomplete
checkpoints refused, and a whole release assembled from a base release."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from model_helpers import assert_close_scaled, free_port, make_inputs, random_ours
from motif_video import MotifVideoTransformer, get_preset
from motif_video.cli import main
from motif_video.training.checkpoint import COMPLETE, latest_checkpoint, load_checkpoint, save_checkpoint
from motif_video.training.export import export_transformer, resolve_checkpoint
from motif_video.training.trainer import TrainConfig, make_ema, train
from test_training_loop import SyntheticBatches, _model

TINY = get_preset("tiny")
RUN = TrainConfig(steps=2, lr=5e-3, checkpoint_every=2, log_every=1, ema_decay=0.5)


def _out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**make_inputs(TINY, batch=2, image_len=2)).sample


def _load(folder) -> MotifVideoTransformer:
    return MotifVideoTransformer.from_pretrained(folder)


def _weights(folder) -> dict[str, torch.Tensor]:
    return MotifVideoTransformer.from_pretrained(folder, fuse_qkv=False).state_dict()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-step tiny run: (run folder, its final model)."""
    folder = tmp_path_factory.mktemp("run")
    model = _model()
    train(RUN, model, SyntheticBatches(), folder)
    return folder, model


def test_in_memory_model_round_trips(tmp_path):
    model = random_ours(TINY)
    model.fuse_qkv_projections()
    result = export_transformer(model, tmp_path / "t")
    assert result.transformer_dir == tmp_path / "t" and not result.used_ema and result.step is None
    assert torch.equal(_out(MotifVideoTransformer.from_pretrained(tmp_path / "t")), _out(model))


def test_in_memory_lora_model_is_merged_and_left_unchanged(tmp_path):
    pytest.importorskip("peft")
    from motif_video.core.lora import LoRAConfig, add_lora, lora_layers

    model = add_lora(random_ours(TINY), LoRAConfig(rank=4, alpha=2))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(std=0.1)
    export_transformer(model, tmp_path)
    assert lora_layers(model)  # still an adapted model
    assert_close_scaled(_out(MotifVideoTransformer.from_pretrained(tmp_path)), _out(model))


def test_checkpoint_exports_ema_or_trained_weights(run, tmp_path):
    folder, trained = run
    ckpt = latest_checkpoint(folder / "checkpoints")
    model = _model(seed=3)
    ema = make_ema(model)
    load_checkpoint(ckpt, model, torch.optim.AdamW(model.parameters()), ema)

    result = export_transformer(folder, tmp_path / "ema", model_config="tiny")  # run folder -> latest
    assert result.used_ema and result.step == 2
    exported = _weights(tmp_path / "ema")
    assert set(exported) == set(ema) and all(torch.equal(exported[k], v) for k, v in ema.items())

    result = export_transformer(ckpt, tmp_path / "raw", use_ema=False, model_config=TINY)
    assert not result.used_ema
    exported = _weights(tmp_path / "raw")
    for key, value in trained.state_dict().items():
        assert torch.equal(exported[key], value), key
    assert not all(torch.equal(exported[k], v) for k, v in ema.items())  # EMA (decay 0.5) differs


def test_diffusers_loads_the_export(run, tmp_path):
    from diffusers import MotifVideoTransformer3DModel

    export_transformer(run[0], tmp_path, model_config="tiny", dtype=torch.float32)
    ours = MotifVideoTransformer.from_pretrained(tmp_path)
    ref = MotifVideoTransformer3DModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = ref(**make_inputs(TINY, batch=2, image_len=2), return_dict=False)[0]
    assert_close_scaled(_out(ours), expected)


def test_incomplete_checkpoints_and_missing_config_are_refused(run, tmp_path):
    ckpt = latest_checkpoint(run[0] / "checkpoints")
    partial = tmp_path / "step-00000004.partial"
    shutil.copytree(ckpt, partial)
    with pytest.raises(ValueError, match="partial checkpoint"):
        export_transformer(partial, tmp_path / "out", model_config="tiny")
    unmarked = tmp_path / "step-00000006"
    shutil.copytree(ckpt, unmarked)
    (unmarked / COMPLETE).unlink()
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        export_transformer(unmarked, tmp_path / "out", model_config="tiny")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_checkpoint(tmp_path / "empty")
    with pytest.raises(ValueError, match="does not store the model config.*--model-config"):
        export_transformer(ckpt, tmp_path / "out")
    with pytest.raises(ValueError, match="do not fit the model config.*missing"):
        export_transformer(ckpt, tmp_path / "out", model_config=TINY.replace(num_layers=3))
    assert not (tmp_path / "out").exists()


def test_lora_run_is_merged(tmp_path):
    pytest.importorskip("peft")
    from motif_video.core.lora import LoRAConfig, add_lora

    model = add_lora(_model(), LoRAConfig(rank=4, alpha=8))
    base = {k: v.clone() for k, v in model.state_dict().items() if "base_layer" in k}
    train(TrainConfig(steps=2, lr=1e-2, checkpoint_every=2, ema_decay=None), model, SyntheticBatches(), tmp_path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in base.items())  # only adapters trained
    with pytest.raises(ValueError, match="LoRA run.*--lora-alpha"):
        export_transformer(tmp_path, tmp_path / "out", model_config="tiny")
    export_transformer(tmp_path, tmp_path / "out", model_config="tiny", lora_alpha=8)
    assert_close_scaled(_out(MotifVideoTransformer.from_pretrained(tmp_path / "out")), _out(model))

    # what the recipe runner stores in trainer.json: no arguments needed; alpha None means alpha = rank
    ckpt = latest_checkpoint(tmp_path / "checkpoints")
    trainer = json.loads((ckpt / "trainer.json").read_text())
    stored = dict(trainer, model_config=TINY.to_dict(), lora={"rank": 4, "alpha": 8})
    (ckpt / "trainer.json").write_text(json.dumps(stored))
    export_transformer(tmp_path, tmp_path / "stored")
    assert torch.equal(_out(_load(tmp_path / "stored")), _out(_load(tmp_path / "out")))
    (ckpt / "trainer.json").write_text(json.dumps(dict(stored, lora={"rank": 4})))
    export_transformer(tmp_path, tmp_path / "alpha_none")
    export_transformer(tmp_path, tmp_path / "alpha_4", lora_alpha=4)
    assert torch.equal(_out(_load(tmp_path / "alpha_none")), _out(_load(tmp_path / "alpha_4")))


class _Wrapper(torch.nn.Module):  # like a TrainModule: transformer + a training-only head
    def __init__(self) -> None:
        super().__init__()
        self.transformer = _model(seed=4)
        self.head = torch.nn.Linear(3, 3)


def test_wrapped_model_checkpoint_exports_the_transformer_only(tmp_path):
    wrapper = _Wrapper()
    opt = torch.optim.AdamW(wrapper.parameters())
    save_checkpoint(tmp_path, 7, wrapper, opt, make_ema(wrapper), {"step": 7}, {})
    assert export_transformer(tmp_path, tmp_path / "out", model_config="tiny").step == 7
    exported = _weights(tmp_path / "out")
    assert all(torch.equal(exported[k], v) for k, v in wrapper.transformer.state_dict().items())
    export_transformer(wrapper, tmp_path / "mem")
    assert set(_weights(tmp_path / "mem")) == set(exported)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny release whose components fit the tiny transformer."""
    from motif_video.pipeline.tiny import save_tiny_release

    return save_tiny_release(tmp_path_factory.mktemp("base") / "release")


def test_release_from_base_and_cli(run, base, tmp_path, capsys):
    from motif_video.pipeline import MotifVideoPipeline

    out = tmp_path / "release"
    code = main(
        ["export", "--checkpoint", str(run[0]), "--output", str(out), "--model-config", "tiny"]
        + ["--base", str(base), "--no-ema"]
    )
    assert code == 0 and "step 2" in capsys.readouterr().out
    index = json.loads((out / "model_index.json").read_text())
    assert index == json.loads((base / "model_index.json").read_text())
    assert {p.name for p in base.iterdir()} == {p.name for p in out.iterdir()}
    pipe = MotifVideoPipeline.from_pretrained(str(out), fuse_qkv=False)
    for key, value in run[1].state_dict().items():
        assert torch.equal(pipe.transformer.state_dict()[key], value), key

    capsys.readouterr()
    code = main(["export", "--checkpoint", str(tmp_path / "nowhere"), "--output", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("motif-video export: error:") and "\n" not in err


def _edit_config(folder, component: str, **changes) -> None:
    path = folder / component / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        *parents, name = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    path.write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("component", "changes", "named"),
    [
        ("text_encoder", {"text_config.hidden_size": 64}, "text encoder width 64 vs transformer text_embed_dim 32"),
        ("text_encoder", {"vision_config.hidden_size": 32}, "SigLIP width 32 vs transformer image_embed_dim 24"),
        ("vae", {"z_dim": 8}, "VAE latent channels 8 vs transformer out_channels 16"),
        ("transformer", {"patch_size": 4}, "release transformer patch_size 4 vs 2"),
    ],
)
def test_base_that_does_not_fit_is_refused_before_anything_is_written(
    run, base, tmp_path, capsys, component, changes, named
):
    """The shipped small model's text encoder is 64 wide, a cpu-tiny run's transformer reads 32: such a release would
    load and then fail in `generate`, so export refuses it, naming the mismatch, and writes nothing."""
    mismatched = tmp_path / "base"
    shutil.copytree(base, mismatched)
    _edit_config(mismatched, component, **changes)
    out = tmp_path / "release"
    args = ["--checkpoint", str(run[0]), "--model-config", "tiny", "--output", str(out), "--base", str(mismatched)]
    code = main(["export", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err and "does not fit this transformer" in err and named in err
    assert not out.exists()
    with pytest.raises(ValueError, match=named):  # an in-memory model is checked the same way
        export_transformer(run[1], out, base=mismatched)
    assert not out.exists()


def test_exported_transformer_folder_becomes_a_release(run, base, tmp_path):
    """An export without --base (as a run's final/transformer) is a transformer folder; exported again with a base,
    from it or from the folder holding it, it becomes a complete release with the same weights."""
    from motif_video.core.release import read_index

    final = tmp_path / "final"
    assert export_transformer(run[0], final / "transformer", model_config="tiny").release_dir is None
    assert not (final / "transformer" / "model_index.json").exists()
    for source in (final, final / "transformer"):
        out = tmp_path / f"release-{source.name}"
        result = export_transformer(source, out, base=base)
        assert result.release_dir == out and result.step is None
        read_index(out)  # complete
        exported, again = _weights(final / "transformer"), _weights(out / "transformer")
        assert exported.keys() == again.keys() and all(torch.equal(again[k], v) for k, v in exported.items())


def test_written_files_get_ordinary_modes(run, base, tmp_path):
    """Under umask 022 every file export writes or copies is 0644, even when the base's copy is 0600."""
    import os
    import stat

    private = tmp_path / "base"
    shutil.copytree(base, private)
    os.chmod(private / "vae" / "config.json", 0o600)
    old = os.umask(0o022)
    try:
        export_transformer(run[0], tmp_path / "release", model_config="tiny", base=private)
        export_transformer(run[0], tmp_path / "transformer", model_config="tiny")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "release" / "model_index.json").stat().st_mode) == 0o644
    files = [p for p in (*(tmp_path / "release").rglob("*"), *(tmp_path / "transformer").iterdir()) if p.is_file()]
    assert files and {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}


def _export_on_rank_0(rank: int, port: int, checkpoint: str, out: str) -> None:
    import datetime
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60))
    try:
        if rank == 0:  # as `motif-video train` does after the run, with the process group still up
            export_transformer(checkpoint, out, model_config="tiny")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_export_on_one_rank_of_a_process_group(run, tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_export_on_rank_0, args=(free_port(), str(run[0]), str(tmp_path / "out")), nprocs=2, join=True)
    assert set(_weights(tmp_path / "out")) == set(run[1].state_dict())
