"""The training loop on CPU: the loss falls, a killed run resumes bit-identically (also when killed while
saving), and FSDP2 on 2 gloo ranks matches one process."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from model_helpers import free_port
from motif_video import MotifVideoTransformer
from motif_video.training import checkpoint as checkpoint_module
from motif_video.training.checkpoint import COMPLETE, latest_checkpoint
from motif_video.training.objective import ObjectiveConfig
from motif_video.training.parallel import ParallelConfig, parallelize
from motif_video.training.step import training_step
from motif_video.training.trainer import RouteConfig, StopTraining, TrainConfig, train
from training_helpers import kill_after

TEXT_DIM = 32


class SyntheticBatches:
    """A fixed set of clips, reshuffled each epoch by a seeded permutation; exact state for resume."""

    def __init__(self, num_samples: int = 8, batch_size: int = 2, seed: int = 0, frames: int = 3) -> None:
        g = torch.Generator().manual_seed(1234)
        self.latents = torch.randn(num_samples, 16, frames, 4, 4, generator=g) * 0.5 + 0.3
        self.first = self.latents[:, :, :1].clone()
        self.text = torch.randn(num_samples, 6, TEXT_DIM, generator=g)
        self.mask = torch.ones(num_samples, 6, dtype=torch.bool)
        self.mask[::2, 4:] = False
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.position = 0, 0

    def _order(self) -> torch.Tensor:
        return torch.randperm(len(self.latents), generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        if self.position + self.batch_size > len(self.latents):
            self.epoch, self.position = self.epoch + 1, 0
        idx = self._order()[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return dict(
            latents=self.latents[idx], first_frame=self.first[idx], text=self.text[idx], text_mask=self.mask[idx]
        )

    def state_dict(self) -> dict[str, Any]:
        return dict(epoch=self.epoch, position=self.position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _model(seed: int = 0, noise: float = 0.02) -> MotifVideoTransformer:
    model = MotifVideoTransformer.from_preset("tiny")
    g = torch.Generator().manual_seed(seed)
    model.init_weights(generator=g)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))
    return model


CONFIG = TrainConfig(
    steps=6,
    lr=2e-3,
    warmup_steps=2,
    checkpoint_every=2,
    log_every=1,
    ema_decay=0.9,
    route=RouteConfig(start=1, end=3, ratio=0.5),
    objective=ObjectiveConfig(i2v_ratio=0.5, prompt_dropout=0.2),
)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _eval_loss(model: torch.nn.Module, data: SyntheticBatches) -> float:
    """The loss on the whole set at fixed timesteps and noise (deterministic, unlike the training loss)."""
    config = TrainConfig(steps=1, objective=ObjectiveConfig(prompt_dropout=0.0, i2v_ratio=0.0))
    batch = dict(latents=data.latents, first_frame=data.first, text=data.text, text_mask=data.mask)
    null = (torch.zeros(1, TEXT_DIM), torch.ones(1, dtype=torch.bool))
    with torch.no_grad():
        losses = [
            training_step(model, batch, config, torch.Generator().manual_seed(s), null, torch.device("cpu"))[0]
            for s in range(4)
        ]
    return float(sum(losses) / len(losses))


def test_loss_falls_on_a_tiny_set(tmp_path):
    config = TrainConfig(
        steps=40,
        lr=5e-3,
        warmup_steps=5,
        checkpoint_every=1000,
        log_every=1,
        ema_decay=None,
        objective=ObjectiveConfig(prompt_dropout=0.0),
    )
    model, data = _model(), SyntheticBatches(num_samples=4)
    before = _eval_loss(model, data)
    logs = train(config, model, data, tmp_path)
    after = _eval_loss(model, data)
    assert after < 0.85 * before, (before, after)  # deterministic evaluation: no sampling noise
    assert len(logs) == 40 and all(row["grad_norm"] > 0 for row in logs)
    assert latest_checkpoint(tmp_path / "checkpoints").name == "step-00000040"


def test_difference_loss_is_added_and_logged():
    """With the difference loss on, the step's loss is the flow loss plus it (same draws: the flow part is the
    plain step's loss), and both parts are reported."""
    data = SyntheticBatches(num_samples=4)
    batch = dict(latents=data.latents, first_frame=data.first, text=data.text, text_mask=data.mask)
    null = (torch.zeros(1, TEXT_DIM), torch.ones(1, dtype=torch.bool))
    model, cpu = _model(), torch.device("cpu")
    plain = TrainConfig(steps=1, objective=ObjectiveConfig(i2v_ratio=0.5))
    diff = TrainConfig(steps=1, objective=ObjectiveConfig(i2v_ratio=0.5, temporal_difference_weight=2.0,
                                                          spatial_difference_weight=0.5))  # fmt: skip
    with torch.no_grad():
        base, base_parts, _ = training_step(model, batch, plain, torch.Generator().manual_seed(3), null, cpu)
        loss, parts, _ = training_step(model, batch, diff, torch.Generator().manual_seed(3), null, cpu)
    assert "difference_loss" not in base_parts and float(parts["difference_loss"]) > 0
    torch.testing.assert_close(parts["flow_loss"], base)
    torch.testing.assert_close(loss, parts["flow_loss"] + parts["difference_loss"])


def test_killed_run_resumes_bit_identical(tmp_path, monkeypatch):
    full = _model()
    train(CONFIG, full, SyntheticBatches(), tmp_path / "full")
    expected = _state(full)

    # killed after step 3 (last complete checkpoint: step 2), then resumed in a fresh process state
    killed = tmp_path / "killed"
    with pytest.raises(StopTraining):
        train(CONFIG, _model(), SyntheticBatches(), killed, on_step_end=kill_after(3))
    assert latest_checkpoint(killed / "checkpoints").name == "step-00000002"
    resumed = _model(seed=99)  # different init: everything must come from the checkpoint
    train(CONFIG, resumed, SyntheticBatches(), killed)
    for k, v in _state(resumed).items():
        assert torch.equal(v, expected[k]), k

    # killed while writing the step-4 checkpoint: the partial folder must never be taken for a checkpoint
    crashed = tmp_path / "crashed"
    real_save = torch.save

    def dying_save(obj, path, *a, **kw):
        if "step-00000004" in str(path):
            raise KeyboardInterrupt("killed during save")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(checkpoint_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(CONFIG, _model(), SyntheticBatches(), crashed)
    monkeypatch.setattr(checkpoint_module.torch, "save", real_save)
    partial = crashed / "checkpoints" / "step-00000004.partial"
    assert partial.is_dir() and not (partial / COMPLETE).exists()
    assert latest_checkpoint(crashed / "checkpoints").name == "step-00000002"
    again = _model(seed=7)
    train(CONFIG, again, SyntheticBatches(), crashed)
    for k, v in _state(again).items():
        assert torch.equal(v, expected[k]), k


def test_incomplete_checkpoint_is_refused(tmp_path):
    (tmp_path / "step-00000001").mkdir()
    model = _model()
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        checkpoint_module.load_checkpoint(tmp_path / "step-00000001", model, opt, None)
    assert latest_checkpoint(tmp_path) is None


# --------------------------------------------------------------------------- FSDP2 on 2 gloo ranks


def _grads_and_loss(model: torch.nn.Module, batch: dict, seed: int) -> tuple[float, dict[str, torch.Tensor]]:
    config = TrainConfig(steps=1, objective=ObjectiveConfig(i2v_ratio=0.0, prompt_dropout=0.0))
    g = torch.Generator().manual_seed(seed)
    loss, _, _ = training_step(
        model, batch, config, g, (torch.zeros(1, TEXT_DIM), torch.ones(1, dtype=torch.bool)), torch.device("cpu")
    )
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.grad is None:  # e.g. the image embedder: no image tokens in this batch
            continue
        grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        grads[name] = grad.detach().clone()
    return float(loss), grads


def _worker(rank: int, world_size: int, port: int, batch: dict, out_path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model = parallelize(
            _model(), ParallelConfig(param_dtype="float32", activation_checkpointing=True), device_type="cpu"
        )
        half = {k: v[rank::world_size] for k, v in batch.items()}
        # the same per-sample noise as the 1-process run: rank r's rows are every other sample
        loss, grads = _grads_and_loss(model, half, seed=10 + rank)
        losses = [None] * world_size
        dist.all_gather_object(losses, loss)
        if rank == 0:
            torch.save(dict(losses=losses, grads=grads), out_path)
    finally:
        dist.destroy_process_group()


def test_fsdp2_two_gloo_ranks_match_one_process(tmp_path):
    data = SyntheticBatches(num_samples=4, batch_size=4)
    batch = next(data)
    out = tmp_path / "fsdp.pt"
    mp.spawn(_worker, args=(2, free_port(), batch, str(out)), nprocs=2, join=True)
    result = torch.load(out, weights_only=True)

    # one process: each rank's half separately (same generator streams), gradients averaged like FSDP's mean
    single = _model()
    grads_sum: dict[str, torch.Tensor] = {}
    losses = []
    for rank in range(2):
        single.zero_grad()
        loss, grads = _grads_and_loss(single, {k: v[rank::2] for k, v in batch.items()}, seed=10 + rank)
        losses.append(loss)
        for k, g in grads.items():
            grads_sum[k] = grads_sum.get(k, 0) + g / 2
    assert result["losses"] == pytest.approx(losses, rel=1e-5, abs=1e-7)
    for name, g in grads_sum.items():
        torch.testing.assert_close(result["grads"][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_training_from_shards_resumes_exactly(tmp_path):
    """prepare-format shards -> ShardReader -> train: a run killed after step 3 and resumed ends identical."""
    from motif_video.core.shard_reader import ShardReader
    from motif_video.core.synthetic_shards import write_synthetic_shards

    data = tmp_path / "shards"
    write_synthetic_shards(
        data,
        num_shards=3,
        buckets=[(1, 32, 32), (5, 32, 32)],
        samples_per_shard=(4, 6),
        image_tokens=False,
        teacher=False,
        text_dim=TEXT_DIM,
    )
    config = TrainConfig(steps=4, lr=1e-3, checkpoint_every=2, log_every=1, ema_decay=0.9)

    def reader() -> ShardReader:
        return ShardReader(data, rank=0, batch_sizes=2, seed=3, shuffle_window=8)

    full = _model()
    logs = train(config, full, reader(), tmp_path / "full")
    assert {row["step"] for row in logs} == {1, 2, 3, 4}
    killed = tmp_path / "killed"
    with pytest.raises(StopTraining):
        train(config, _model(), reader(), killed, on_step_end=kill_after(3))
    resumed = _model(seed=5)
    train(config, resumed, reader(), killed)
    expected = _state(full)
    for k, v in _state(resumed).items():
        assert torch.equal(v, expected[k]), k


def test_lr_warms_up_stays_then_decays_to_its_floor(tmp_path):
    import dataclasses

    from motif_video.training.recipe import Source, Stage
    from motif_video.training.trainer import lr_multiplier

    assert [lr_multiplier(2)(s) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]  # warmup, then constant
    wsd = [lr_multiplier(2, steps=8, decay_steps=4, decay_to=0.2)(s) for s in range(8)]
    assert wsd[:4] == [0.5, 1.0, 1.0, 1.0] and wsd[-1] == pytest.approx(0.2)  # the last step reaches the floor
    assert wsd[3:] == sorted(wsd[3:], reverse=True) and wsd[4] == pytest.approx(0.8)  # linear, 1 -> 0.2 over 4 steps
    assert lr_multiplier(4, steps=4, decay_steps=4)(3) == 0.0  # warmup and decay overlap: the lower one wins

    # the loop applies it: each logged row carries the lr its step was taken with
    config = dataclasses.replace(CONFIG, steps=4, warmup_steps=0, decay_steps=2, decay_to=0.5, checkpoint_every=4)
    rows = train(config, _model(), SyntheticBatches(), tmp_path)
    assert [row["lr"] for row in rows] == pytest.approx([2e-3, 2e-3, 1.5e-3, 1e-3])
    with pytest.raises(ValueError, match="decay_steps must be in"):
        Stage("s", 4, {"video": Source("runs/videos", 1)}, decay_steps=5)
