"""Analytic FLOP count of one `MotifVideoTransformer` forward, training-step FLOPs and MFU.

Follows the real graph of `models/transformer.py` (and `blocks.py`, `joint_attention.py`, `cross_attention.py`):
- matmuls (Linear and the patchify Conv3d) count 2*M*N*K; attention counts QK^T and AV, 4*Lq*Lkv*Dh per head,
  exactly what `torch.utils.flop_counter.FlopCounterMode` counts for them (no bias adds, no softmax);
- dual-stream block: two AdaLN-Zero linears on temb, q/k/v + output projection per stream, one joint attention
  over [video; image; text], an FFN per stream (and diffusers- or shared-layout cross-attention if enabled);
- encoder single-stream block: AdaLN on temb, q/k/v and the MLP over [video; context], one joint attention,
  Shared Cross-Attention (video queries, text-only keys; the shared layout reuses the block's text K/V, the
  diffusers layout projects its own), proj_out over [attn; mlp];
- DDT decoder block: the same single-stream block over [decoder stream; encoder's final video tokens], i.e.
  2N tokens (2K when routed: the route gathers both halves), no text, no cross-attention;
- embedders (timestep MLP, patchify, text MLP, SigLIP MLP) and the final AdaLN + proj_out.
`text_len` is the text length AFTER the model trims trailing padding (the longest valid prompt of the batch).
A TREAD route keeps `max(1, round(N * (1 - ratio)))` video tokens in global blocks [start, end), as
`models.routing.random_route` does.

Elementwise work (norms, modulation, RoPE, GELU, softmax, bias adds) is only a rough estimate and is left out
by default (`elementwise=False`), following the usual MFU convention of counting matmul FLOPs only.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from motif_video.models.config import MotifVideoConfig

BLOCK_KINDS = ("dual", "single", "decoder")  # global order: dual, encoder single, DDT decoder
KINDS = ("embed", *BLOCK_KINDS, "final")

# Rough per-element costs, used only for the optional elementwise estimate.
_LN_MODULATE = 7  # LayerNorm (mean, centre, square, sum, scale) + x * (1 + scale) + shift
_RMS = 4  # per-head RMSNorm with weight
_ROPE = 3  # x * cos + rotate(x) * sin
_GELU = 8  # tanh approximation
_GATED_ADD = 2  # x + gate * y
_SOFTMAX = 5  # scale, max, exp, sum, divide per score

# Peak dense bf16 tensor-core FLOP/s by device-name substring, most specific first (vendor datasheets).
PEAK_BF16_FLOPS: dict[str, float] = {
    "H200": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,  # SXM
    "A100": 312e12,
}


@dataclass
class FlopCount:
    """FLOPs split into matmul (`linear`), `attention` (QK^T and AV) and optional `elementwise`;
    `by_kind` splits them by part of the model: embed, dual, single (encoder), decoder, final."""

    linear: int = 0
    attention: int = 0
    elementwise: int = 0
    by_kind: dict[str, FlopCount] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.linear + self.attention + self.elementwise

    @property
    def matmul(self) -> int:
        """Linear + attention: what FlopCounterMode sees and what MFU counts."""
        return self.linear + self.attention

    def __add__(self, other: FlopCount) -> FlopCount:
        present = [k for k in KINDS if k in self.by_kind or k in other.by_kind]
        return FlopCount(
            self.linear + other.linear,
            self.attention + other.attention,
            self.elementwise + other.elementwise,
            {k: self.by_kind.get(k, FlopCount()) + other.by_kind.get(k, FlopCount()) for k in present},
        )

    def scaled(self, factor: int) -> FlopCount:
        return FlopCount(
            self.linear * factor,
            self.attention * factor,
            self.elementwise * factor,
            {k: v.scaled(factor) for k, v in self.by_kind.items()},
        )

    def only(self, kinds: tuple[str, ...]) -> FlopCount:
        """The sum over the given kinds."""
        out = FlopCount()
        for k in kinds:
            part = self.by_kind.get(k, FlopCount())
            out = out + FlopCount(part.linear, part.attention, part.elementwise, {k: part})
        return out


class _Acc:
    """Accumulates one part of the graph for batch size b."""

    def __init__(self, b: int, elementwise: bool) -> None:
        self.b, self.count_elementwise = b, elementwise
        self.linear = self.attention = self.elementwise = 0

    def lin(self, rows: int, fin: int, fout: int) -> None:
        self.linear += 2 * self.b * rows * fin * fout
        self.ew(rows * fout, 1)  # bias add

    def attn(self, heads: int, lq: int, lk: int, head_dim: int) -> None:
        self.attention += 4 * self.b * heads * lq * lk * head_dim
        self.ew(heads * lq * lk, _SOFTMAX)

    def ew(self, elements: int, cost: int) -> None:
        if self.count_elementwise:
            self.elementwise += self.b * elements * cost

    def result(self) -> FlopCount:
        return FlopCount(self.linear, self.attention, self.elementwise)


def _cross_attention(a: _Acc, c: MotifVideoConfig, layout: str, n: int, lt: int, reuse_text_kv: bool) -> None:
    """Shared Cross-Attention: n video queries over lt text keys, added to the video attention output."""
    d, heads, dh = c.hidden_size, c.num_attention_heads, c.attention_head_dim
    a.lin(n, d, d)  # to_q (diffusers) or cross_attn_query_proj (shared)
    a.ew(n * d, _RMS + _ROPE + (_LN_MODULATE if layout == "shared" else 0))
    if layout == "diffusers" or not reuse_text_kv:  # the shared layout in single blocks reuses the block's text K/V
        a.lin(lt, d, 2 * d)
        a.ew(lt * d, _RMS)
    a.attn(heads, n, lt, dh)
    a.lin(n, d, d)  # to_out / cross_attn_out_proj
    a.ew(n * d, 1)


def _dual_block(a: _Acc, c: MotifVideoConfig, n: int, lc: int, lt: int) -> None:
    d, heads, dh, m = c.hidden_size, c.num_attention_heads, c.attention_head_dim, int(c.hidden_size * c.mlp_ratio)
    a.lin(1, d, 6 * d)  # norm1 and norm1_context on temb
    a.lin(1, d, 6 * d)
    a.lin(n, d, 3 * d)  # to_q/k/v
    a.lin(lc, d, 3 * d)  # add_q/k/v_proj
    a.ew((n + lc) * d, _LN_MODULATE + 2 * _RMS)
    a.ew(2 * n * d, _ROPE)
    a.attn(heads, n + lc, n + lc, dh)
    a.lin(n, d, d)  # to_out
    a.lin(lc, d, d)  # to_add_out
    a.ew((n + lc) * d, _GATED_ADD)
    if c.enable_text_cross_attention_dual:
        _cross_attention(a, c, c.cross_attention_layout, n, lt, reuse_text_kv=False)
    for rows in (n, lc):  # ff and ff_context
        a.lin(rows, d, m)
        a.lin(rows, m, d)
        a.ew(rows * m, _GELU)
        a.ew(rows * d, _LN_MODULATE + _GATED_ADD)


def _single_block(a: _Acc, c: MotifVideoConfig, n: int, lc: int, lt: int, cross: bool) -> None:
    d, heads, dh, m = c.hidden_size, c.num_attention_heads, c.attention_head_dim, int(c.hidden_size * c.mlp_ratio)
    length = n + lc
    a.lin(1, d, 3 * d)  # AdaLN-Zero-single on temb
    a.lin(length, d, m)  # proj_mlp
    a.lin(length, d, 3 * d)  # to_q/k/v
    a.ew(length * d, _LN_MODULATE + 2 * _RMS)
    a.ew(length * m, _GELU)
    a.ew(2 * n * d, _ROPE)
    a.attn(heads, length, length, dh)
    if cross:
        _cross_attention(a, c, c.cross_attention_layout, n, lt, reuse_text_kv=True)
    a.lin(length, d + m, d)  # proj_out over [attn; mlp]
    a.ew(length * d, _GATED_ADD)


def kept_tokens(num_tokens: int, ratio: float) -> int:
    """Video tokens a TREAD route keeps (as `routing.random_route`)."""
    return max(1, round(num_tokens * (1.0 - ratio)))


def _route_span(route: Any) -> tuple[int, int, float]:
    if isinstance(route, tuple):
        start, end, ratio = route
        return int(start), int(end), float(ratio)
    return int(route.start), int(route.end), float(route.ratio)


def forward_flops(
    config: MotifVideoConfig,
    *,
    batch: int,
    latent_frames: int,
    latent_height: int,
    latent_width: int,
    text_len: int,
    image_len: int = 0,
    route: Any = None,
    elementwise: bool = False,
) -> FlopCount:
    """FLOPs of one forward on (batch, in_channels, latent_frames, latent_height, latent_width) latents.

    text_len: text tokens after padding trimming; image_len: SigLIP tokens (I2V); route: a TREAD span as
    (start, end, ratio) over global block indices or any object with those attributes (`trainer.RouteConfig`).
    """
    c = config
    d, pt, p = c.hidden_size, c.patch_size_t, c.patch_size
    n = (latent_frames // pt) * (latent_height // p) * (latent_width // p)
    lc, lt = image_len + text_len, text_len
    start, end, ratio = _route_span(route) if route is not None else (0, 0, 0.0)
    if route is not None and not 0 <= start < end <= c.num_blocks:
        raise ValueError(f"route span [{start}, {end}) must lie in [0, {c.num_blocks})")
    k = kept_tokens(n, ratio) if route is not None else n

    emb = _Acc(batch, elementwise)
    emb.lin(1, 256, d)  # timestep MLP (256-channel sinusoid)
    emb.lin(1, d, d)
    emb.lin(n, c.in_channels * pt * p * p, d)  # Conv3d patchify, kernel = stride
    emb.lin(lt, c.text_embed_dim, d)  # context_embedder
    emb.lin(lt, d, d)
    emb.ew(lt * d, _GELU)
    if image_len:
        e = c.image_embed_dim
        emb.lin(image_len, e, e)
        emb.lin(image_len, e, d)
        emb.ew(image_len * (2 * e + d), _LN_MODULATE)
    parts = {"embed": emb.result(), **{kind: FlopCount() for kind in BLOCK_KINDS}}
    for index in range(c.num_blocks):
        tokens = k if start <= index < end else n  # routed blocks see the kept video tokens only
        a = _Acc(batch, elementwise)
        if index < c.num_layers:
            kind = "dual"
            _dual_block(a, c, tokens, lc, lt)
        elif index < c.num_encoder_blocks:
            kind = "single"
            _single_block(a, c, tokens, lc, lt, cross=c.enable_text_cross_attention_single)
        else:  # [decoder stream; encoder video tokens]: both halves gathered when routed
            kind = "decoder"
            _single_block(a, c, tokens, tokens, 0, cross=False)
        parts[kind] = parts[kind] + a.result()

    fin = _Acc(batch, elementwise)
    fin.lin(1, d, 2 * d)  # norm_out on temb
    fin.ew(n * d, _LN_MODULATE)
    fin.lin(n, d, pt * p * p * c.out_channels)
    parts["final"] = fin.result()

    total = FlopCount()
    for kind, part in parts.items():
        total = total + FlopCount(part.linear, part.attention, part.elementwise, {kind: part})
    return total


def training_step_flops(
    config: MotifVideoConfig,
    *,
    batch: int,
    latent_frames: int,
    latent_height: int,
    latent_width: int,
    text_len: int,
    image_len: int = 0,
    route: Any = None,
    checkpointing: bool = False,
    elementwise: bool = False,
) -> FlopCount:
    """Forward + backward = 3x forward (backward computes grads of inputs and of weights); with per-block
    activation checkpointing the blocks' forward runs once more in the backward (embedders and final layer
    are not checkpointed). MFU conventionally uses `checkpointing=False` (model FLOPs, not hardware FLOPs)."""
    grid = dict(latent_frames=latent_frames, latent_height=latent_height, latent_width=latent_width)
    fwd = forward_flops(
        config, batch=batch, **grid, text_len=text_len, image_len=image_len, route=route, elementwise=elementwise
    )
    step = fwd.scaled(3)
    return step + fwd.only(BLOCK_KINDS) if checkpointing else step


def step_flops_fn(config: MotifVideoConfig, *, checkpointing: bool = False) -> Callable[..., float]:
    """The trainer's `step_flops` hook: (latents shape (B, C, F', H', W'), text length, image-token length,
    route) -> matmul FLOPs of one training step. Cached per distinct batch geometry."""

    @functools.lru_cache(maxsize=256)
    def count(shape: tuple[int, ...], text_len: int, image_len: int, route: Any) -> float:
        b, _, f, h, w = shape
        kw = dict(batch=b, latent_frames=f, latent_height=h, latent_width=w, text_len=text_len, image_len=image_len)
        return float(training_step_flops(config, **kw, route=route, checkpointing=checkpointing).matmul)

    def hook(shape: tuple[int, ...], text_len: int, image_len: int, route: Any) -> float:
        return count(tuple(shape), int(text_len), int(image_len), None if route is None else _route_span(route))

    return hook


ENCODER_KINDS = ("dual", "single")  # what step reuse skips; embed, decoder and final run at every call


def sampling_flops(
    config: MotifVideoConfig, *, latent_frames: int, latent_height: int, latent_width: int, calls: Any
) -> FlopCount:
    """FLOPs of a denoising run with step reuse: `calls` lists each branch of each model call as an object with
    `rows`, `text_len`, `image_len` and `encoder` (False: the encoder's output was reused, so only the embedders,
    the DDT decoder and the head ran) and optionally `model` (False: the whole step's velocity was reused, no
    FLOPs), as `pipeline.step_cache.EncoderCall` records them."""
    grid = dict(latent_frames=latent_frames, latent_height=latent_height, latent_width=latent_width)
    total = FlopCount()
    for call in calls:
        if not getattr(call, "model", True):
            continue
        fwd = forward_flops(config, batch=call.rows, **grid, text_len=call.text_len, image_len=call.image_len)
        kinds = KINDS if call.encoder else tuple(k for k in KINDS if k not in ENCODER_KINDS)
        total = total + fwd.only(kinds)
    return total


def mfu(flops_per_step: float, step_seconds: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation in [0, 1]: achieved FLOP/s over the device's peak; None without a peak."""
    if peak_flops is None or step_seconds <= 0:
        return None
    return flops_per_step / step_seconds / peak_flops


def peak_flops_for(device: torch.device | str | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of a CUDA device (a torch device, "cuda:0", or a device name such as
    "NVIDIA H100 80GB HBM3"); None for CPU and unknown devices (MFU is then not reported)."""
    name = None
    if isinstance(device, str):
        try:
            device = torch.device(device)
        except RuntimeError:
            name = device
    if name is None:
        if device is None:
            device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        if device.type != "cuda" or not torch.cuda.is_available():
            return None
        name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16_FLOPS.items():
        if key.lower() in name.lower():
            return peak
    return None


__all__ = [
    "FlopCount",
    "PEAK_BF16_FLOPS",
    "forward_flops",
    "kept_tokens",
    "mfu",
    "peak_flops_for",
    "sampling_flops",
    "step_flops_fn",
    "training_step_flops",
]
