"""Attention backends, padding trimming, RoPE tables, and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from motif_video import set_attention_backend
from motif_video.cli import main
from motif_video.models.attention import attention, available_backends, get_attention_backend
from motif_video.models.rope import RotaryEmbedding3D, rope_tables
from motif_video.models.transformer import trim_text_padding


def test_rope_tables_match_diffusers():
    from diffusers.models.transformers.transformer_motif_video import MotifVideoRotaryPosEmbed

    ref = MotifVideoRotaryPosEmbed(2, 1, [16, 56, 56], 10000.0)
    cos_ref, sin_ref = ref(torch.zeros(1, 33, 3, 10, 14))
    cos, sin = rope_tables((3, 5, 7), (16, 56, 56), 10000.0)
    assert torch.equal(cos, cos_ref) and torch.equal(sin, sin_ref)


def test_rope_tables_are_cached_per_grid():
    rope = RotaryEmbedding3D((4, 6, 6), 10000.0, cache_size=2)
    a = rope((2, 3, 4), torch.device("cpu"))
    assert rope((2, 3, 4), torch.device("cpu")) is a
    rope((1, 1, 1), torch.device("cpu"))
    rope((2, 2, 2), torch.device("cpu"))
    assert rope((2, 3, 4), torch.device("cpu")) is not a  # evicted, rebuilt equal
    assert torch.equal(rope((2, 3, 4), torch.device("cpu"))[0], a[0])


def test_trim_text_padding():
    text = torch.randn(2, 6, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    trimmed, m = trim_text_padding(text, mask)
    assert trimmed.shape == (2, 3, 3) and m.tolist() == [[True] * 3, [True, True, False]]
    trimmed, m = trim_text_padding(text[:1], mask[:1])
    assert trimmed.shape == (1, 3, 3) and m is None  # every kept key valid: no mask at all
    trimmed, m = trim_text_padding(text, None)
    assert trimmed is text and m is None


def test_trimming_changes_no_attention_output():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 5, 8, generator=g) for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    full = attention(q, k, v, mask)
    trimmed = attention(q, k[:, :, :4], v[:, :, :4], mask[:, :4])
    torch.testing.assert_close(trimmed, full, rtol=0, atol=1e-6)


def test_backend_selection():
    assert get_attention_backend() == "sdpa"
    assert "sdpa" in available_backends()
    with pytest.raises(ValueError, match="Unknown attention backend"):
        set_attention_backend("xformerz")
    if "flash" not in available_backends():
        with pytest.raises(ValueError, match="flash-attn"):
            set_attention_backend("flash")
    set_attention_backend("sdpa")
    set_attention_backend(None)


def test_sage_takes_only_calls_its_kernel_gets_right(monkeypatch):
    """SageAttention 1.0.x scores the missing keys of a partial last 64-key block as 0 (they share the softmax):
    short key sequences such as the text cross-attention, and head dims it has no kernel for, take SDPA."""
    from motif_video.models import attention as attention_module

    calls = []
    monkeypatch.setattr(attention_module, "_backend", "sage")
    monkeypatch.setattr(attention_module, "_kernel_can_run", lambda q: True)  # as on CUDA in bf16
    monkeypatch.setitem(attention_module._KERNELS, "sage", lambda q, k, v: calls.append(k.shape) or torch.zeros_like(q))
    g = torch.Generator().manual_seed(0)
    for length, head_dim, kernel in ((120, 128, False), (128, 128, True), (20400, 128, True), (128, 32, False)):
        q, k, v = (torch.randn(1, 1, n, head_dim, generator=g) for n in (3, length, length))
        out = attention(q, k, v)
        assert (len(calls) == 1) == kernel, (length, head_dim)
        if not kernel:
            torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))
        calls.clear()
    assert attention_module._sage_fits(torch.empty(1, 1, 20380, 128))  # 36 phantom keys beside 20,380: 0.18%
    assert not attention_module._sage_fits(torch.empty(1, 1, 1000, 128))  # 24 beside 1,000: 2.4%


def test_cli_forward(capsys):
    assert main(["forward", "--preset", "tiny", "--image"]) == 0
    out = capsys.readouterr().out
    assert "output velocity (1, 16, 3, 8, 12) float32" in out


def test_cli_loads_a_folder(tmp_path, capsys):
    from motif_video import MotifVideoTransformer

    MotifVideoTransformer.from_preset("tiny-shared").save_pretrained(tmp_path)
    assert main(["forward", "--model", str(tmp_path), "--height", "32", "--width", "48", "--num-frames", "5"]) == 0
    assert "output velocity (1, 16, 2, 4, 6)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--height", "40"], "multiples of 16"),
        (["--num-frames", "8"], "4k+1"),
        (["--model", "/no/such/folder"], "is not a folder"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "motif_video", "forward", *args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
