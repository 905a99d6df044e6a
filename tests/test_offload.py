"""Memory modes: block offload (exact outputs, move order, prefetch, undo), component offload, FP8 quantization.

CPU tests read the moves (the CPU build has no second device), logged by wrapping the offloaders' move methods
from the test (the `moves` fixture); GPU-marked tests check real
placement, CUDA parity and peak memory.
"""

from __future__ import annotations

import copy
import importlib.util
import sys

import pytest
import torch
from torch import nn

from model_helpers import assert_close_scaled, make_inputs, random_ours
from motif_video import get_preset
from motif_video.pipeline.offload import BlockOffloadHandle, ComponentOffloader, enable_block_offload
from motif_video.pipeline.quantization import is_fp8_available, quantize_fp8_weight_only
from motif_video.training.parallel import apply_activation_checkpointing

TINY = get_preset("tiny")
HAS_TORCHAO = importlib.util.find_spec("torchao") is not None


def _inputs(device: str = "cpu", **kwargs) -> dict:
    return {k: (v.to(device) if v is not None else None) for k, v in make_inputs(TINY, **kwargs).items()}


def _hook_counts(model: nn.Module) -> list[int]:
    return [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules()]


@pytest.fixture
def moves(monkeypatch) -> list[tuple[str, object]]:
    """Every move the offloaders make during the test, in order: ("load" | "prefetch" | "release", block index)
    and ("load" | "offload", component name); recorded by wrapping their move methods, nothing in the product."""
    log: list[tuple[str, object]] = []

    def wrap(cls: type, name: str, describe) -> None:
        original = getattr(cls, name)

        def wrapper(self, *args, **kwargs):
            entry = describe(self, *args, **kwargs)  # before the move: what it is about to do
            result = original(self, *args, **kwargs)
            if entry is not None:
                log.append(entry)
            return result

        monkeypatch.setattr(cls, name, wrapper)

    wrap(BlockOffloadHandle, "_load", lambda handle, index, ahead: ("prefetch" if ahead else "load", index))
    wrap(BlockOffloadHandle, "_release", lambda h, index: ("release", index) if index in h.resident_blocks else None)
    wrap(ComponentOffloader, "_load", lambda offloader, name: ("load", name))
    wrap(ComponentOffloader, "_release_resident", lambda o: None if o.resident is None else ("offload", o.resident))
    return log


def _expected_trace(num_blocks: int, prefetch: int) -> list[tuple[str, int]]:
    trace = []
    requested = set()
    for i in range(num_blocks):
        if i not in requested:
            trace.append(("load", i))
        for j in range(i + 1, min(i + prefetch + 1, num_blocks)):
            if j not in requested:
                trace.append(("prefetch", j))
                requested.add(j)
        trace.append(("release", i))
    return trace


# ----------------------------------------------------------------------------------------------------------
# Block offload on CPU
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_block_offload_cpu_is_bit_identical(prefetch):
    model = random_ours(TINY)
    inputs = _inputs(image_len=2)
    with torch.no_grad():
        expected = model(**inputs).sample
        handle = enable_block_offload(model, "cpu", prefetch=prefetch)
        actual = model(**inputs).sample
        again = model(**inputs).sample
    handle.remove()
    assert torch.equal(actual, expected) and torch.equal(again, expected)


def test_block_offload_moves_blocks_in_order_with_prefetch(moves):
    model = random_ours(TINY)
    trace = moves
    handle = enable_block_offload(model, "cpu", prefetch=1)
    seen = []  # what is resident when each block's own forward starts (hooks registered after ours)
    for index, block in enumerate(model.blocks):
        block.register_forward_pre_hook(lambda m, a, i=index: seen.append((i, handle.resident_blocks)))
    n = len(model.blocks)
    with torch.no_grad():
        model(**_inputs())
    assert trace == _expected_trace(n, prefetch=1)
    assert trace[:4] == [("load", 0), ("prefetch", 1), ("release", 0), ("prefetch", 2)]
    assert seen == [(i, [i, i + 1] if i + 1 < n else [i]) for i in range(n)]
    assert handle.resident_blocks == []
    trace.clear()
    with torch.no_grad():
        model(**_inputs())
    assert trace == _expected_trace(n, prefetch=1)  # every step starts cold and ends with nothing resident


def test_block_offload_survives_checkpoint_recomputation(moves):
    """Backward re-runs blocks in reverse (maybe stopped early): results and gradients must not change."""
    plain = random_ours(TINY)
    apply_activation_checkpointing(plain)
    offloaded = copy.deepcopy(plain)
    inputs = _inputs()
    plain(**inputs).sample.square().mean().backward()
    trace = moves
    handle = enable_block_offload(offloaded, "cpu", prefetch=1)
    offloaded(**inputs).sample.square().mean().backward()
    n = len(offloaded.blocks)
    assert trace[: len(_expected_trace(n, 1))] == _expected_trace(n, 1)
    assert sum(a in ("load", "prefetch") for a, _ in trace) > n  # the recomputation loaded blocks again
    assert len(handle.resident_blocks) <= 2
    for (name, p), q in zip(plain.named_parameters(), offloaded.parameters()):
        assert (p.grad is None and q.grad is None) or torch.equal(p.grad, q.grad), name
    handle.remove()


def test_remove_restores_model_and_hooks(moves):
    model = random_ours(TINY)
    inputs = _inputs()
    params = dict(model.named_parameters())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hooks_before = _hook_counts(model)
    with torch.no_grad():
        expected = model(**inputs).sample
    handle = enable_block_offload(model, "cpu")
    assert _hook_counts(model) != hooks_before
    with pytest.raises(RuntimeError, match="already enabled"):
        enable_block_offload(model, "cpu")
    handle.remove("cpu")
    handle.remove()  # a second remove does nothing
    assert not handle.active
    assert _hook_counts(model) == hooks_before
    assert not hasattr(model, "_block_offload_handle")
    assert all(params[k] is p for k, p in model.named_parameters())  # the same Parameter objects
    assert all(torch.equal(v, state[k]) and v.device.type == "cpu" for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(**inputs).sample, expected)
        enable_block_offload(model, "cpu").remove()  # can be enabled again
    assert moves == []  # enabling and removing move nothing through the hooks


def test_block_offload_rejects_bad_arguments():
    model = random_ours(TINY)
    with pytest.raises(ValueError, match="prefetch"):
        enable_block_offload(model, "cpu", prefetch=-1)
    with pytest.raises(ValueError, match="only once"):
        enable_block_offload(model, "cpu", blocks=[model.blocks[0], model.blocks[0]])
    with pytest.raises(TypeError, match="blocks"):
        enable_block_offload(nn.Linear(2, 2), "cpu")


# ----------------------------------------------------------------------------------------------------------
# Component offload
# ----------------------------------------------------------------------------------------------------------
def _replay(trace: list) -> list[set]:
    """Resident set after each logged move."""
    resident, history = set(), []
    for action, name in trace:
        (resident.add if action == "load" else resident.discard)(name)
        history.append(set(resident))
    return history


def test_component_offloader_keeps_at_most_one_resident(moves):
    torch.manual_seed(0)
    parts = {"text_encoder": nn.Linear(4, 4), "transformer": nn.Linear(4, 4), "vae": nn.Linear(4, 4)}
    weights = {k: m.weight.detach().clone() for k, m in parts.items()}
    trace = moves
    offloader = ComponentOffloader(parts, "cpu")
    assert offloader.resident is None
    with offloader.use("text_encoder") as te:
        assert te is parts["text_encoder"] and offloader.resident == "text_encoder"
    for _ in range(3):
        with offloader.use("transformer") as dit:
            dit(torch.ones(1, 4))
    with offloader.use("vae"):
        with pytest.raises(RuntimeError, match="in use"):
            with offloader.use("transformer"):
                pass
        with offloader.use("vae"):  # re-entering the same component is fine
            pass
        assert offloader.resident == "vae"
    offloader.offload_all()
    assert offloader.resident is None
    assert trace == [
        ("load", "text_encoder"),
        ("offload", "text_encoder"),
        ("load", "transformer"),  # once: it stays resident across the three uses
        ("offload", "transformer"),
        ("load", "vae"),
        ("offload", "vae"),
    ]
    assert all(len(r) <= 1 for r in _replay(trace)) and _replay(trace)[-1] == set()
    with pytest.raises(KeyError, match="unknown component"):
        with offloader.use("unet"):
            pass
    offloader.remove()
    assert all(torch.equal(parts[k].weight, w) for k, w in weights.items())


def test_component_offloader_rejects_shared_tensors():
    shared = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="share a tensor"):
        ComponentOffloader({"a": shared, "b": nn.Sequential(shared)}, "cpu")


# ----------------------------------------------------------------------------------------------------------
# FP8 quantization
# ----------------------------------------------------------------------------------------------------------
def test_missing_torchao_error_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao", None)
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)
    assert not is_fp8_available("cpu")
    with pytest.raises(ImportError, match="pip install torchao"):
        quantize_fp8_weight_only(random_ours(TINY))


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao is not installed (pip install torchao)")
@pytest.mark.parametrize("preset", ["tiny", "tiny-shared"])
@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
def test_fp8_weight_only_on_cpu(preset, fused):
    if not is_fp8_available("cpu"):
        pytest.skip("this torch/torchao build cannot store float8 tensors on CPU")
    config = get_preset(preset)
    model = random_ours(config)
    if fused:
        model.fuse_qkv_projections()
    inputs = make_inputs(config, image_len=2)
    with torch.no_grad():
        expected = model(**inputs).sample
        count = quantize_fp8_weight_only(model)
        actual = model(**inputs).sample
    linears = [m for b in model.blocks for m in b.modules() if isinstance(m, nn.Linear)]
    assert count == len(linears) > 0
    assert all(type(m.weight) is not nn.Parameter for m in linears)  # float8 tensor subclass
    for outside in (model.proj_out, model.context_embedder.linear_1, model.norm_out.linear):
        assert type(outside.weight) is nn.Parameter and outside.weight.dtype == torch.float32
    assert quantize_fp8_weight_only(model) == 0  # idempotent
    assert_close_scaled(actual, expected, rel=0.1)


@pytest.mark.skipif(not HAS_TORCHAO, reason="torchao is not installed (pip install torchao)")
def test_offload_moves_the_inner_tensors_of_fp8_weights():
    """The offloader moves a weight by swapping `.data`; for torchao's Float8Tensor that alone leaves the inner
    float8 data behind (seen on an H200: FP8 + block offload kept the weights on the CPU). Checked here by moving
    to a fresh copy on the CPU: the weight must then hold the copy's inner tensors."""
    from motif_video.pipeline.offload import _set_data

    if not is_fp8_available("cpu"):
        pytest.skip("this torch/torchao build cannot store float8 tensors on CPU")
    layer = nn.Sequential(nn.Linear(32, 32))
    assert quantize_fp8_weight_only(layer, blocks=[layer]) == 1
    weight = layer[0].weight
    inner = weight.__tensor_flatten__()[0]
    x = torch.randn(2, 32)
    with torch.no_grad():
        expected = layer(x)
        moved = weight.detach().clone()
        _set_data(weight, moved)
        assert all(getattr(weight, name) is getattr(moved, name) for name in inner)
        assert torch.equal(layer(x), expected)


# ----------------------------------------------------------------------------------------------------------
# CUDA
# ----------------------------------------------------------------------------------------------------------
BIG = TINY.replace(num_attention_heads=4, attention_head_dim=64, rope_axes_dim=(16, 24, 24), num_single_layers=8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_cuda_block_offload_matches_and_saves_memory(prefetch, moves):
    model = random_ours(BIG)
    inputs = {k: (v.cuda() if v is not None else None) for k, v in make_inputs(BIG, batch=1, valid=(5,)).items()}
    plain = copy.deepcopy(model).cuda()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        expected = plain(**inputs).sample
    plain_peak = torch.cuda.max_memory_allocated()
    del plain
    torch.cuda.empty_cache()

    trace = moves
    torch.cuda.reset_peak_memory_stats()
    handle = enable_block_offload(model, "cuda", prefetch=prefetch)
    assert model.proj_out.weight.is_cuda and not model.blocks[0].norm1.linear.weight.is_cuda
    with torch.no_grad():
        actual = model(**inputs).sample
        again = model(**inputs).sample
    torch.cuda.synchronize()
    offload_peak = torch.cuda.max_memory_allocated()
    assert trace[: len(_expected_trace(len(model.blocks), prefetch))] == _expected_trace(len(model.blocks), prefetch)
    assert_close_scaled(actual, expected, rel=1e-6)
    assert torch.equal(actual, again)
    assert offload_peak < 0.6 * plain_peak, (offload_peak, plain_peak)
    assert model.blocks[0].norm1.linear.weight.is_pinned()
    handle.remove("cuda")
    assert all(p.is_cuda for p in model.parameters())
    with torch.no_grad():
        assert_close_scaled(model(**inputs).sample, expected, rel=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_component_offloader_places_one_component():
    parts = {"a": nn.Linear(64, 64), "b": nn.Linear(64, 64)}
    offloader = ComponentOffloader(parts, "cuda")
    with offloader.use("a") as a:
        assert a.weight.is_cuda and not parts["b"].weight.is_cuda
        out = a(torch.ones(1, 64, device="cuda"))
    with offloader.use("b") as b:
        assert b.weight.is_cuda and not parts["a"].weight.is_cuda and parts["a"].weight.is_pinned()
    offloader.offload_all()
    assert not any(p.is_cuda for m in parts.values() for p in m.parameters())
    assert out.is_cuda


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TORCHAO), reason="needs a CUDA GPU and torchao")
def test_cuda_fp8_with_block_offload():
    model = random_ours(BIG).to(torch.bfloat16)
    inputs = {k: (v.cuda() if v is not None else None) for k, v in make_inputs(BIG, batch=1, valid=(5,)).items()}
    with torch.no_grad():
        expected = copy.deepcopy(model).cuda()(**inputs).sample.float()
        quantize_fp8_weight_only(model)
        handle = enable_block_offload(model, "cuda")
        actual = model(**inputs).sample.float()
    handle.remove()
    assert_close_scaled(actual, expected, rel=0.1)
