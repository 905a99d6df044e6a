"""`motif-video train` and `motif-video plan` end to end on CPU (in process; tiny synthetic data)."""

from __future__ import annotations

import json

import pytest
import torch

from motif_video import MotifVideoTransformer
from motif_video.cli import main

RECIPE = """
log_every = 1
checkpoint_every = 2
ema_decay = 0.9
tensorboard = false
[model]
preset = "tiny"
[model.overrides]
enable_text_cross_attention_single = false
[parallel]
param_dtype = "float32"
activation_checkpointing = false
[[stages]]
name = "only"
steps = 3
lr = 1e-3
insert_cross_attention = true
[stages.route]
start = 1
end = 5
[stages.sources.video]
path = "synthetic"
buckets = ["5x32x32"]
batch_size = 2
synthetic_shards = 2
"""


def test_train_command_runs_resumes_and_exports(tmp_path, capsys):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    run = tmp_path / "run"
    assert main(["train", "--config", str(recipe), "--output", str(run)]) == 0
    out = capsys.readouterr().out
    assert "step 3" in out and "tread 0.50" in out and "final model (EMA weights)" in out
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] > 0 for r in rows)
    model = MotifVideoTransformer.from_pretrained(str(run / "final" / "transformer"))
    assert model.config.enable_text_cross_attention_single  # inserted by the stage, kept in the export
    first = {k: v.clone() for k, v in model.state_dict().items()}

    assert main(["train", "--config", str(recipe), "--output", str(run)]) == 0  # already done: nothing to train
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    again = MotifVideoTransformer.from_pretrained(str(run / "final" / "transformer")).state_dict()
    assert all(torch.equal(again[k], v) for k, v in first.items())


def test_train_command_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(RECIPE.replace("lr = 1e-3", "lr = 1e-3\nlearning_rate = 2"))
    assert main(["train", "--config", str(bad), "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key(s) ['learning_rate']" in err[0]
    missing = tmp_path / "missing.toml"
    missing.write_text(RECIPE.replace('path = "synthetic"', 'path = "no/such/folder"'))
    assert main(["train", "--config", str(missing), "--output", str(tmp_path / "m")]) == 2
    assert "is not a folder of shards" in capsys.readouterr().err
    assert main(["train", "--preset", "cpu-tiny"]) == 2
    assert "--output is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--preset", "cpu-tiny", "--config", str(bad)])


def test_print_config_round_trips(tmp_path, capsys):
    from motif_video.training.recipe import get_recipe_preset, load_recipe

    assert main(["train", "--preset", "motif-video-2b", "--print-config"]) == 0
    path = tmp_path / "2b.json"
    path.write_text(capsys.readouterr().out)
    assert load_recipe(path) == get_recipe_preset("motif-video-2b")


def test_plan_command_balances_a_skewed_shard_set(tmp_path, capsys):
    from motif_video.core.plan_files import read_plan
    from motif_video.core.synthetic_shards import write_synthetic_shards

    buckets = [(1, 32, 32), (5, 32, 32), (9, 32, 32)]
    write_synthetic_shards(tmp_path / "data", 16, buckets, samples_per_shard=(4, 30), teacher=False)
    out = tmp_path / "plan"
    assert main(["plan", "--data", str(tmp_path / "data"), "--world-size", "4", "--batch-size", "2",
                 "--out", str(out), "--moves", "3000"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "used before" in printed and "all (mean CV)" in printed
    assert sum(len(read_plan(out, r).shards) for r in range(4)) == 16
    assert main(["plan", "--data", str(tmp_path / "data"), "--world-size", "4", "--batch-size", "1x32x32=x",
                 "--out", str(out)]) == 2  # fmt: skip
    assert "FxHxW=N" in capsys.readouterr().err


def test_lora_recipe_trains_adapters_only_across_stages(tmp_path, capsys):
    pytest.importorskip("peft")
    from motif_video.training.recipe import load_recipe
    from motif_video.training.run import build_transformer

    pretrained = MotifVideoTransformer.from_preset("tiny")  # LoRA adapts trained weights: a fresh model's zero
    g = torch.Generator().manual_seed(0)  # gates and output would pass no gradient to the adapters
    with torch.no_grad():
        for p in pretrained.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    pretrained.save_pretrained(str(tmp_path / "base"))
    text = (
        RECIPE.replace("ema_decay = 0.9", "ema_decay = 0.9\nlora = {rank = 4}")
        .replace(
            'preset = "tiny"\n[model.overrides]\nenable_text_cross_attention_single = false',
            f'pretrained = "{tmp_path / "base"}"',
        )
        .replace("insert_cross_attention = true", "lr = 1e-2")
        .replace("lr = 1e-3\n", "")
    )
    second = text[text.index("[[stages]]") :].replace('name = "only"', 'name = "second"')
    recipe_path = tmp_path / "lora.toml"
    recipe_path.write_text(text + second)
    run = tmp_path / "run"
    assert main(["train", "--config", str(recipe_path), "--output", str(run)]) == 0
    assert "final model" in capsys.readouterr().out
    base = build_transformer(load_recipe(recipe_path)).state_dict()
    merged = MotifVideoTransformer.from_pretrained(str(run / "final" / "transformer"), fuse_qkv=False).state_dict()
    assert set(merged) == set(base)  # a plain model: the adapters are merged into the exported weights
    changed = [k for k, v in base.items() if not torch.equal(merged[k], v)]
    assert changed and all(k.startswith(("transformer_blocks", "single_transformer_blocks")) for k in changed)
    assert not any("norm" in k or "embedder" in k for k in changed)  # only LoRA targets moved
