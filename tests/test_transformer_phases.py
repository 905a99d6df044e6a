"""The forward is its phases: embed -> encode -> decode -> head, each callable alone, equal to `forward` bit for bit."""

from __future__ import annotations

import pytest
import torch

from model_helpers import make_inputs, random_ours
from motif_video import get_preset, random_route

TINY = get_preset("tiny")  # blocks: dual 0-1, encoder single 2-3, DDT decoder 4-5
NUM_TOKENS = 5 * 3 * 5  # grid (5, 6, 10) patchified by (1, 2, 2)


def _by_hand(model, inputs, route=None, repa_block=None):
    emb = model.embed(**inputs)
    encoded = model.encode(emb, route=route, repa_block=repa_block)
    decoded = model.decode(emb, encoded.video, route=route, repa_block=repa_block)
    tap = encoded.repa_features if encoded.repa_features is not None else decoded.repa_features
    return model.head(decoded.video, emb), tap


@pytest.mark.parametrize("preset", ["tiny", "tiny-shared", "tiny-no-decoder"])
@pytest.mark.parametrize("image_len", [0, 2])
@pytest.mark.parametrize(
    "span, repa_block",
    # no route; inside the encoder; across the dual/single change; across the encoder/decoder change (tap inside
    # the route in each phase, and at its last block); inside the decoder
    [(None, None), (None, 5), ((0, 2), 1), ((1, 4), 2), ((3, 6), 3), ((1, 5), 4), ((4, 6), 5)],
    ids=str,
)
def test_phases_by_hand_equal_forward(preset, image_len, span, repa_block):
    config = TINY.replace(num_decoder_layers=0) if preset == "tiny-no-decoder" else get_preset(preset)
    model = random_ours(config)
    inputs = make_inputs(config, batch=2, image_len=image_len)
    route = (
        None if span is None else random_route(2, NUM_TOKENS, 0.5, *span, generator=torch.Generator().manual_seed(1))
    )
    with torch.no_grad():
        out = model(**inputs, route=route, repa_block=repa_block)
        sample, tap = _by_hand(model, inputs, route, repa_block)
    assert torch.equal(sample, out.sample)
    assert (tap is None and out.repa_features is None) or torch.equal(tap, out.repa_features)


def test_phase_shapes_and_taps():
    model = random_ours(TINY)
    inputs = make_inputs(TINY, batch=2, image_len=2)
    route = random_route(2, NUM_TOKENS, 0.5, 1, 5, generator=torch.Generator().manual_seed(2))
    k = route.keep.shape[1]
    with torch.no_grad():
        emb = model.embed(**inputs)
        encoded = model.encode(emb, route=route, repa_block=2)
        decoded = model.decode(emb, encoded.video, route=route, repa_block=2)
    d = TINY.hidden_size
    assert emb.patches.shape == encoded.video.shape == decoded.video.shape == (2, NUM_TOKENS, d)
    assert emb.context.shape == (2, 2 + 7, d) and emb.temb.shape == (2, d)
    assert encoded.repa_features.shape == (2, k, d)  # inside the open route: the kept tokens
    assert decoded.repa_features is None  # the tap is an encoder block
    assert model.head(decoded.video, emb).shape == (2, TINY.out_channels, 5, 6, 10)


def test_decoder_reads_no_text_so_an_encoder_output_can_be_reused():
    """What step reuse builds on: the decoder depends on the step's patches and time and on the encoder's video
    tokens only, so a kept encoder output decodes the same whatever the text of the step."""
    model = random_ours(TINY)
    inputs = make_inputs(TINY, batch=2, image_len=2)
    other = {**inputs, "encoder_hidden_states": torch.randn_like(inputs["encoder_hidden_states"])}
    with torch.no_grad():
        emb, emb_other = model.embed(**inputs), model.embed(**other)
        encoded = model.encode(emb).video
        assert not torch.equal(model.encode(emb_other).video, encoded)
        assert torch.equal(model.decode(emb_other, encoded).video, model.decode(emb, encoded).video)


def test_each_phase_checks_the_route():
    model = random_ours(TINY)
    with torch.no_grad():
        emb = model.embed(**make_inputs(TINY, batch=2))
    route = random_route(3, NUM_TOKENS, 0.5, 0, 2)
    with pytest.raises(ValueError, match="batch=2"):
        model.encode(emb, route=route)
    with pytest.raises(ValueError, match="repa_block"):
        model.decode(emb, emb.patches, repa_block=TINY.num_blocks)
