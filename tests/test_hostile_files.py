"""Files that would run code: planted pickles in a training checkpoint, remote code named by `auto_map`, pickled
weights, shards outside their folder. Each is refused, and a payload that would create a marker file proves that
nothing ran."""

from __future__ import annotations

import io
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from hostile_helpers import Payload, copy_release, edit_json, error_line
from motif_video.cli import main
from motif_video.models.checkpoint_io import CheckpointError
from training_helpers import tiny_recipe

RECIPE = tiny_recipe(2)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished two-step run (its checkpoint is where payloads are planted)."""
    root = tmp_path_factory.mktemp("hostile-run")
    (root / "recipe.toml").write_text(RECIPE)
    assert main(["train", "--config", str(root / "recipe.toml"), "--output", str(root / "run"), "--no-export"]) == 0
    return root


def _copy(finished_run: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(a copy of the run, its step-2 checkpoint, a recipe that lengthens the stage so a rerun resumes from it)."""
    run = Path(shutil.copytree(finished_run / "run", tmp_path / "run"))
    (tmp_path / "longer.toml").write_text(RECIPE.replace("steps = 2", "steps = 4"))
    return run, run / "stages" / "00-only" / "checkpoints" / "step-00000002", tmp_path / "longer.toml"


def _refused(argv: list[str], capsys, message: str, marker: Path) -> None:
    assert main(argv) == 2
    line = error_line(capsys.readouterr().err)
    assert message in line, line
    assert not marker.exists(), "the planted payload ran"


def _rewrite_metadata(checkpoint: Path, change) -> None:
    """Load a checkpoint's own (trusted, test-written) metadata, change it, pickle it back."""
    metadata = pickle.loads((checkpoint / ".metadata").read_bytes())
    change(metadata)
    (checkpoint / ".metadata").write_bytes(pickle.dumps(metadata))


@pytest.mark.parametrize("command", ["export", "resume"])
def test_a_planted_dcp_metadata_pickle_never_runs(finished_run, tmp_path, capsys, command):
    run, checkpoint, longer = _copy(finished_run, tmp_path)
    marker = tmp_path / "marker"
    (checkpoint / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    argv = {
        "export": ["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")],
        "resume": ["train", "--config", str(longer), "--output", str(run)],
    }[command]
    _refused(argv, capsys, "refusing to unpickle it", marker)
    assert not (tmp_path / "out").exists()


def test_a_planted_rank_state_pickle_never_runs(finished_run, tmp_path, capsys):
    run, checkpoint, longer = _copy(finished_run, tmp_path)
    marker = tmp_path / "marker"
    torch.save({"generator": Payload(marker)}, checkpoint / "rank-00000.pt")
    _refused(["train", "--config", str(longer), "--output", str(run)], capsys, "not a rank state", marker)


def test_a_planted_optimizer_entry_never_runs(finished_run, tmp_path, capsys):
    """A non-tensor DCP entry (an optimizer hyperparameter) pointed at a payload: decoded as weights only."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo

    run, checkpoint, longer = _copy(finished_run, tmp_path)
    marker = tmp_path / "marker"
    buffer = io.BytesIO()
    torch.save(Payload(marker), buffer)
    data = checkpoint / "__0_0.distcp"
    offset = data.stat().st_size
    data.write_bytes(data.read_bytes() + buffer.getvalue())

    def plant(metadata) -> None:
        index = next(i for i in metadata.storage_data if i.fqn.endswith("param_groups.0.lr"))
        old = metadata.storage_data[index]
        metadata.storage_data[index] = _StorageInfo(old.relative_path, offset, len(buffer.getvalue()))

    _rewrite_metadata(checkpoint, plant)
    _refused(["train", "--config", str(longer), "--output", str(run)], capsys, "is not plain data", marker)


def test_a_checkpoint_that_points_outside_its_folder_is_refused(finished_run, tmp_path, capsys):
    run, checkpoint, _ = _copy(finished_run, tmp_path)

    def escape(metadata) -> None:
        for index, info in list(metadata.storage_data.items()):
            metadata.storage_data[index] = type(info)("../../../x.distcp", info.offset, info.length)

    _rewrite_metadata(checkpoint, escape)
    _refused(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")], capsys,
             "points outside the folder", tmp_path / "marker")  # fmt: skip


def test_a_truncated_metadata_file_is_one_line(finished_run, tmp_path, capsys):
    run, checkpoint, _ = _copy(finished_run, tmp_path)
    metadata = checkpoint / ".metadata"
    metadata.write_bytes(metadata.read_bytes()[:100])
    _refused(["export", "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out")], capsys,
             "truncated or corrupt", tmp_path / "marker")  # fmt: skip


def test_a_latest_pointer_outside_the_folder_is_ignored(finished_run, tmp_path):
    from motif_video.training.checkpoint import latest_checkpoint

    run, checkpoint, _ = _copy(finished_run, tmp_path)
    (checkpoint.parent / "latest").write_text("../../../../elsewhere\n")
    assert latest_checkpoint(checkpoint.parent) == checkpoint


def test_the_metadata_allow_list_reads_every_real_checkpoint(finished_run):
    """The allow-list admits what DCP writes (model, EMA, optimizer state) and the read is the one DCP makes."""
    from torch.distributed.checkpoint import FileSystemReader

    from motif_video.training.dcp_reader import read_metadata

    checkpoint = finished_run / "run" / "stages" / "00-only" / "checkpoints" / "step-00000002"
    ours, theirs = read_metadata(checkpoint), FileSystemReader(str(checkpoint)).read_metadata()
    assert ours.state_dict_metadata == theirs.state_dict_metadata and ours.storage_data == theirs.storage_data
    assert any(k.startswith("optimizer.") for k in ours.state_dict_metadata)


# ---------------------------------------------------------------------------------------------------- releases


def _remote_code(folder: Path, config: str, marker: Path, kind: str = "AutoTokenizer") -> None:
    """Python in the folder that creates `marker` when imported, and a config whose auto_map names it."""
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w')\nclass Evil: pass\n")
    edit_json(folder / config, auto_map={kind: ["evil.Evil", None] if kind == "AutoTokenizer" else "evil.Evil"})


@pytest.mark.parametrize("component, config", [("tokenizer", "tokenizer_config.json"), ("text_encoder", "config.json")])
def test_auto_map_remote_code_never_runs(tiny_release, tmp_path, component, config):
    from motif_video.core.release import load_components

    release = copy_release(tiny_release, tmp_path / "release")
    marker = tmp_path / "marker"
    _remote_code(release / component, config, marker, "AutoTokenizer" if component == "tokenizer" else "AutoModel")
    with pytest.raises(CheckpointError, match="names remote code"):
        load_components(release, ("text_encoder", "tokenizer"))
    assert not marker.exists()


def test_a_teacher_folder_with_remote_code_never_runs(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    from motif_video.core.teachers import load_teacher

    config = dict(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, patch_size=8)
    Dinov2Model(Dinov2Config(**config, image_size=32)).save_pretrained(tmp_path / "teacher")
    marker = tmp_path / "marker"
    _remote_code(tmp_path / "teacher", "config.json", marker, "AutoModel")
    with pytest.raises(CheckpointError, match="names remote code"):
        load_teacher("dinov2", str(tmp_path / "teacher"), torch.float32)
    assert not marker.exists()


def test_pickled_text_encoder_weights_are_refused_with_the_conversion(tiny_release, tmp_path):
    from hostile_helpers import replace_weights_with_pickle
    from motif_video.core.release import load_components

    release = copy_release(tiny_release, tmp_path / "release")
    marker = tmp_path / "marker"
    replace_weights_with_pickle(release / "text_encoder", "pytorch_model.bin", marker)
    with pytest.raises(CheckpointError, match=r"never loads pickled weights.*save_file\(torch.load"):
        load_components(release, ("text_encoder",))
    assert not marker.exists()


def test_a_transformer_shard_outside_its_folder_is_refused(tmp_path):
    """The shard outside is a perfectly good weight file: it is refused for where it is, not for what it holds."""
    import json

    from motif_video import MotifVideoTransformer

    MotifVideoTransformer.from_preset("tiny").save_pretrained(str(tmp_path / "model"))
    folder = tmp_path / "model"
    (folder / "diffusion_pytorch_model.safetensors").rename(tmp_path / "elsewhere.safetensors")
    keys = json.loads(json.dumps(list(MotifVideoTransformer.from_preset("tiny").state_dict())))
    index = {"metadata": {}, "weight_map": {k: "../elsewhere.safetensors" for k in keys}}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="points outside the folder"):
        MotifVideoTransformer.from_pretrained(str(folder))
