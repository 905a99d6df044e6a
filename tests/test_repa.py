"""REPA: teachers (tiny random DINOv2 / V-JEPA 2, no download), resampling, loss, routing and the transformer tap."""

from __future__ import annotations

import pytest
import torch

from model_helpers import make_inputs, random_ours
from motif_video import get_preset, random_route
from motif_video.core.teachers import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DinoV2Teacher,
    VJEPA2Teacher,
    gather_like_route,
    latent_token_grid,
    load_teacher,
    resample_to_latent_grid,
    teacher_targets,
)
from motif_video.models.routing import TokenRoute
from motif_video.training.repa import REPAConfig, REPAProjector, repa_loss, tap_keep

TEACHER_DIM = 32


def _video(batch: int, frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=g) * 2 - 1


def _save_dinov2(path, registers: int):
    from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(0)
    kwargs = dict(
        hidden_size=TEACHER_DIM, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8
    )
    if registers:
        config = Dinov2WithRegistersConfig(**kwargs, image_size=32, num_register_tokens=registers)
        Dinov2WithRegistersModel(config).save_pretrained(path)
    else:
        Dinov2Model(Dinov2Config(**kwargs, image_size=32)).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def dinov2_folder(tmp_path_factory):
    return _save_dinov2(tmp_path_factory.mktemp("dinov2"), registers=0)


@pytest.fixture(scope="module")
def vjepa2_folder(tmp_path_factory):
    from transformers import VJEPA2Config, VJEPA2Model

    torch.manual_seed(0)
    config = VJEPA2Config(
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=2,
        crop_size=32,
        patch_size=8,
        frames_per_clip=4,
        tubelet_size=2,
        pred_hidden_size=24,
        pred_num_attention_heads=2,
        pred_num_hidden_layers=1,
        num_pooler_layers=1,
    )
    path = tmp_path_factory.mktemp("vjepa2")
    VJEPA2Model(config).save_pretrained(path)
    return path


# ------------------------------------------------------------------------------------------------
# Teachers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("registers", [0, 2], ids=["plain", "registers"])
def test_dinov2_teacher_shapes_frozen_and_patch_tokens(tmp_path, dinov2_folder, registers):
    folder = _save_dinov2(tmp_path, registers) if registers else dinov2_folder
    teacher = load_teacher("dinov2", str(folder), torch.float32, "cpu", input_size=32)
    assert teacher.num_prefix_tokens == 1 + registers
    assert isinstance(teacher, DinoV2Teacher) and teacher.dim == TEACHER_DIM
    teacher.train()
    assert not teacher.model.training and not any(p.requires_grad for p in teacher.parameters())

    video = _video(2, 5, 32, 48)  # already at the teacher resolution: no resize
    features, grid = teacher.encode(video)
    assert grid == (5, 4, 6) and features.shape == (2, 5 * 4 * 6, TEACHER_DIM)
    assert not features.requires_grad
    # frame 3 of sample 1 equals the model's own patch tokens (CLS and registers dropped, ImageNet normalisation)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    pixels = ((video[1:, :, 3] + 1) / 2 - mean) / std
    with torch.no_grad():
        direct = teacher.model(pixel_values=pixels).last_hidden_state[:, teacher.num_prefix_tokens :]
    torch.testing.assert_close(features.reshape(2, 5, 24, -1)[1, 3], direct[0])

    # resized, aspect kept (short side 32, long 53.3 -> 56), images, frame stride
    assert teacher.encode(_video(1, 5, 24, 40))[1] == (5, 4, 7)
    assert teacher.encode(_video(1, 1, 40, 24))[1] == (1, 7, 4)
    assert load_teacher("dinov2", str(folder), torch.float32, input_size=32, frame_stride=4).encode(
        _video(1, 9, 32, 32)
    )[1] == (3, 4, 4)


def test_vjepa2_teacher_shapes_and_frame_padding(vjepa2_folder):
    teacher = load_teacher("vjepa2", str(vjepa2_folder), torch.float32, "cpu")
    assert isinstance(teacher, VJEPA2Teacher) and teacher.dim == 48
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.model.training

    video = _video(2, 5, 24, 40)  # F = 4K + 1: frame 0 gets its own tubelet, then pairs (1,2), (3,4)
    padded = teacher.pad_frames(video)
    assert padded.shape[2] == 6 and torch.equal(padded[:, :, 0], padded[:, :, 1])
    assert torch.equal(padded[:, :, 1:], video)
    features, grid = teacher.encode(video)  # squashed to the 32 x 32 crop
    assert grid == (3, 4, 4) and features.shape == (2, 48, 48) and not features.requires_grad

    assert teacher.encode(_video(1, 1, 32, 32))[1] == (1, 4, 4)  # an image: one tubelet
    assert teacher.pad_frames(_video(1, 4, 8, 8)).shape[2] == 6  # 1 + 4 -> end-padded to 6
    strided = load_teacher("vjepa2", str(vjepa2_folder), torch.float32, frame_stride=2)
    assert strided.encode(_video(1, 9, 32, 32))[1] == (3, 4, 4)  # 5 frames -> 6 -> one tubelet per latent frame


def test_load_teacher_errors(tmp_path, vjepa2_folder):
    with pytest.raises(OSError, match="cannot load the dinov2 REPA teacher"):
        load_teacher("dinov2", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a dinov2 teacher"):
        load_teacher("dinov2", str(vjepa2_folder), torch.float32)
    with pytest.raises(ValueError, match="unknown REPA teacher"):
        load_teacher("clip", "x")


# ------------------------------------------------------------------------------------------------
# Resampling to the latent token grid
# ------------------------------------------------------------------------------------------------
def _field(grid, fn, dim=3):
    t, h, w = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in grid), indexing="ij")
    values = fn(t, h, w).reshape(1, -1, 1)  # flattened t-h-w
    return values.expand(2, -1, dim).contiguous()


@pytest.mark.parametrize(
    "grid,latent",
    [((3, 4, 4), (2, 6, 10)), ((9, 16, 29), (3, 6, 10)), ((1, 4, 7), (1, 3, 5)), ((1, 4, 4), (3, 2, 2))],
    ids=str,
)
def test_resample_shapes_and_constants(grid, latent):
    features = _field(grid, lambda t, h, w: torch.full_like(t, 2.5), dim=5)
    out = resample_to_latent_grid(features, grid, latent)
    assert out.shape == (2, latent[0] * latent[1] * latent[2], 5)
    torch.testing.assert_close(out, torch.full_like(out, 2.5), rtol=0, atol=1e-6)
    for causal in (True, False):
        x = torch.randn(2, grid[0] * grid[1] * grid[2], 4)
        assert torch.equal(resample_to_latent_grid(x, grid, grid, causal_time=causal), x)


def test_resample_linear_fields():
    # time, causal: per-frame features of F = 9 frames -> latent frame 0 = frame 0, k = mean of frames 4k-3..4k
    out = resample_to_latent_grid(_field((9, 2, 2), lambda t, h, w: t), (9, 2, 2), (3, 2, 2))
    torch.testing.assert_close(out[0, :, 0].reshape(3, 4)[:, 0], torch.tensor([0.0, 2.5, 6.5]), rtol=0, atol=1e-6)
    # V-JEPA 2 tubelets of F = 9 frames (frame 0 alone, then pairs): 5 steps -> 3 latent frames, pairs averaged
    out = resample_to_latent_grid(_field((5, 1, 1), lambda t, h, w: t), (5, 1, 1), (3, 1, 1))
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.0, 1.5, 3.5]), rtol=0, atol=1e-6)
    # height shrinking 8 -> 4: box means of a linear field are exact everywhere
    out = resample_to_latent_grid(_field((1, 8, 3), lambda t, h, w: 10 * h + w), (1, 8, 3), (1, 4, 3))
    expected = 10 * (torch.arange(4.0) * 2 + 0.5)[:, None] + torch.arange(3.0)
    torch.testing.assert_close(out[0, :, 0].reshape(4, 3), expected, rtol=0, atol=1e-5)
    # width growing 4 -> 8: linear between cell centres, exact in the interior, held at the edges
    out = resample_to_latent_grid(_field((1, 2, 4), lambda t, h, w: w + 10 * h), (1, 2, 4), (1, 2, 8))
    row = out[0, :, 1].reshape(2, 8)[1] - 10
    interior = (torch.arange(8.0) + 0.5) / 2 - 0.5
    torch.testing.assert_close(row[1:7], interior[1:7], rtol=0, atol=1e-6)
    assert row[0] == 0 and row[7] == 3
    # uniform time (not causal): 4 -> 2 averages pairs
    out = resample_to_latent_grid(_field((4, 1, 1), lambda t, h, w: t), (4, 1, 1), (2, 1, 1), causal_time=False)
    torch.testing.assert_close(out[0, :, 0], torch.tensor([0.5, 2.5]))


def test_latent_token_grid():
    assert latent_token_grid(121, 480, 832) == (31, 30, 52)
    assert latent_token_grid(1, 256, 256) == (1, 16, 16)
    with pytest.raises(ValueError):
        latent_token_grid(120, 480, 832)


# ------------------------------------------------------------------------------------------------
# Loss, projector, routing
# ------------------------------------------------------------------------------------------------
def test_repa_loss_values_and_mask():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 8, generator=g)
    assert repa_loss(x, x).abs() < 1e-6
    assert repa_loss(3.0 * x, x).abs() < 1e-6  # scale-free
    torch.testing.assert_close(repa_loss(-x, x), torch.tensor(2.0))
    e = torch.eye(8)[:2].expand(2, 6, 2, 8)
    torch.testing.assert_close(repa_loss(e[..., 0, :], e[..., 1, :]), torch.tensor(1.0))  # orthogonal

    y = torch.randn(2, 6, 8, generator=g)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, :2] = mask[1, 3:] = True
    expected = repa_loss(torch.cat((x[0, :2], x[1, 3:]))[None], torch.cat((y[0, :2], y[1, 3:]))[None])
    torch.testing.assert_close(repa_loss(x, y, mask), expected)
    garbage = torch.where(mask[..., None], x, torch.randn_like(x))
    torch.testing.assert_close(repa_loss(garbage, y, mask), expected)
    assert repa_loss(x, y, torch.zeros_like(mask)) == 0
    with pytest.raises(ValueError):
        repa_loss(x, y[..., :4])


def test_gradients_reach_projector_and_student_not_teacher(dinov2_folder):
    teacher = load_teacher("dinov2", str(dinov2_folder), torch.float32, input_size=32)
    targets = teacher_targets(teacher, _video(2, 5, 32, 32), (2, 2, 2))  # (B, 8, D_t)
    student = torch.randn(2, 8, 16, requires_grad=True)
    projector = REPAProjector(16, TEACHER_DIM, width=24)
    assert [type(m).__name__ for m in projector.net] == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    repa_loss(projector(student), targets).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in projector.parameters())
    assert all(p.grad is None for p in teacher.parameters()) and not targets.requires_grad


def test_gather_like_route_and_tap_keep():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 20, 5, generator=g)
    route = random_route(3, 20, 0.6, 1, 4, generator=g)
    manual = torch.stack([x[i, route.keep[i]] for i in range(3)])
    assert torch.equal(gather_like_route(x, route.keep), manual)
    assert gather_like_route(x, None) is x
    assert [tap_keep(route, i) is not None for i in range(6)] == [False, True, True, False, False, False]
    assert tap_keep(None, 2) is None


def test_config():
    config = REPAConfig(enabled=True, teacher="vjepa2", stop_step=100)
    assert config.active(99) and not config.active(100) and not REPAConfig().active(0)
    assert config.teacher_source == "facebook/vjepa2-vitl-fpc64-256" and config.teacher_options() == {"frame_stride": 1}
    assert (config.weight, config.projector_width, config.feature_source) == (0.5, 2048, "online")
    with pytest.raises(ValueError):
        REPAConfig(feature_source="disk")
    with pytest.raises(ValueError):
        REPAConfig(teacher="clip")


# ------------------------------------------------------------------------------------------------
# With our transformer
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("span,tap", [((1, 5), 2), ((1, 3), 2), (None, 1)], ids=["routed", "after-span", "dense"])
def test_transformer_tap_loss_backpropagates(dinov2_folder, span, tap):
    tiny = get_preset("tiny")
    model = random_ours(tiny).train()
    inputs = make_inputs(tiny, batch=2)  # latents (5, 6, 10) -> tokens (5, 3, 5): a 17 x 48 x 80 clip
    latent = latent_token_grid(17, 48, 80)
    assert latent == (5, 3, 5)
    route = None if span is None else random_route(2, 75, 0.5, *span, generator=torch.Generator().manual_seed(3))
    keep = tap_keep(route, tap)
    assert (keep is not None) == (span == (1, 5))

    teacher = load_teacher("dinov2", str(dinov2_folder), torch.float32, input_size=32)
    targets = teacher_targets(teacher, _video(2, 17, 48, 80), latent, keep)
    out = model(**inputs, route=route, repa_block=tap)
    assert out.repa_features.shape[:2] == targets.shape[:2] == (2, 75 if keep is None else keep.shape[1])

    projector = REPAProjector(tiny.hidden_size, TEACHER_DIM, width=64)
    loss = out.sample.square().mean() + 0.5 * repa_loss(projector(out.repa_features), targets)
    loss.backward()
    assert model.x_embedder.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.transformer_blocks[0].parameters())
    assert all(p.grad is not None for p in projector.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_route_keep_all_tap_matches_dense_tap():
    """Sanity of `tap_keep`: a route keeping every token taps the same features as the dense pass."""
    tiny = get_preset("tiny")
    model = random_ours(tiny)
    inputs = make_inputs(tiny, batch=2)
    route = TokenRoute(1, 5, torch.arange(75).expand(2, -1))
    with torch.no_grad():
        dense = model(**inputs, repa_block=2).repa_features
        routed = model(**inputs, route=route, repa_block=2).repa_features
    torch.testing.assert_close(routed, gather_like_route(dense, tap_keep(route, 2)), rtol=0, atol=1e-5)
