"""The small model's frozen text encoder: a random `T5Gemma2Encoder` (one layer) with a tiny SigLIP vision tower.

It is never trained with the transformer: the transformer learns to read it. (`text_pretraining` can instead
train a two-layer full-attention variant, `PRETRAINED_TEXT_ENCODER`, on captions first; this module draws both.)
So its random weights are drawn for READABILITY, not taken as `_init_weights` gives them, whose tiny embeddings
(RMS 0.02 sqrt(d)) sit under two unit-RMS branches and whose peaked random attention depends on the seed.
Measured with `token_similarity` (cosine of token states; "A small <colour> circle moves to the left slowly on a
black background."; seeds 0-3):

                                          as drawn here          as initialised (same sizes)
    two colour words, mean / worst pair   0.31-0.37 / 0.51-0.64  0.26-0.49 / 0.60-0.87
    two shape words, mean                 0.23-0.46              0.20-0.68
    "circle" after two colours, mean      0.88-0.90              0.56-0.81  (the noun carries its adjective)
    "circle" 1st vs 2nd object            0.63-0.88              0.14-0.75  (order: weaker here, see below)

So words stay apart in the worst case, and binding is the same whatever the seed.

Design (one residual layer; every branch ends in Gemma's post-norm, so its gain sets its share exactly):
- embeddings: rows N(0, 1/d), so after Gemma's sqrt(d) scale a token enters at RMS 1 (init gives 0.02 sqrt(d));
- attention: bidirectional sliding window of 5 (a token and two neighbours each side), near UNIFORM inside the
  window (query_pre_attn_scalar 16 x head_dim makes the q-k-normed logits ~0.25 std): a "bag of neighbours" that
  binds adjectives to nouns for any seed. It is the only place word order enters (the transformer gives text no
  RoPE): an object's role (first / second) shows only through its neighbours ("is to the" vs "of a"); branch
  gain 1.0;
- MLP: a per-token random nonlinearity, branch gain 0.5;
- vision tower: SigLIP, 64 x 64 input (the clip size), patch 16 -> 16 image tokens of width 32, one layer.
Everything is a pure function of `seed`; the caller's RNG state is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from motif_video_lab.small_model.vocab import build_small_tokenizer


@dataclass(frozen=True)
class SmallTextEncoderConfig:
    text_dim: int = 64  # the transformer's text_embed_dim
    num_layers: int = 1
    num_heads: int = 2
    head_dim: int = 32
    window: int = 5  # bidirectional sliding window: the token and 2 neighbours each side
    full_attention: bool = False  # every layer attends to the whole caption instead of the window
    logit_scalar: int = 512  # query_pre_attn_scalar: 16 x head_dim -> near-uniform attention in the window
    embed_rms: float = 1.0  # RMS of a token's input embedding (after Gemma's sqrt(d) scale)
    attention_gain: float = 1.0  # RMS of the attention branch (its post-norm's 1 + weight)
    mlp_gain: float = 0.5
    vocab_size: int = 128  # embedding rows: the 114-token tokenizer rounded up to a multiple of 64
    image_dim: int = 32  # the transformer's image_embed_dim (SigLIP width)
    image_size: int = 64  # SigLIP input side = the clip side: no detail is resized away
    patch_size: int = 16  # -> (64 / 16)^2 = 16 image tokens
    image_layers: int = 1


SMALL_TEXT_ENCODER = SmallTextEncoderConfig()
# The encoder that `text_pretraining` trains: two full-attention layers, so an object's words can read the relation
# words and the other object, with ordinary attention logits (1 / sqrt(head_dim)) so attention can sharpen.
PRETRAINED_TEXT_ENCODER = SmallTextEncoderConfig(num_layers=2, full_attention=True, logit_scalar=32)


def text_dims(config: SmallTextEncoderConfig = SMALL_TEXT_ENCODER) -> tuple[int, int]:
    """(text_embed_dim, image_embed_dim) for the transformer config that reads this encoder."""
    return config.text_dim, config.image_dim


def _encoder_config(c: SmallTextEncoderConfig) -> Any:
    from transformers import SiglipVisionConfig, T5Gemma2EncoderConfig, T5Gemma2TextConfig

    text = T5Gemma2TextConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.text_dim,
        intermediate_size=2 * c.text_dim,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        num_key_value_heads=1,
        head_dim=c.head_dim,
        query_pre_attn_scalar=c.logit_scalar,
        max_position_embeddings=512,
        sliding_window=c.window,
        layer_types=["full_attention" if c.full_attention else "sliding_attention"] * c.num_layers,
    )
    vision = SiglipVisionConfig(
        hidden_size=c.image_dim,
        intermediate_size=2 * c.image_dim,
        num_hidden_layers=c.image_layers,
        num_attention_heads=2,
        image_size=c.image_size,
        patch_size=c.patch_size,
        vision_use_head=False,
    )
    config = T5Gemma2EncoderConfig(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    config.text_config.dropout_rate = 0.0  # normally copied in by the encoder-decoder T5Gemma2Config
    config.text_config.attention_dropout = 0.0
    return config


@torch.no_grad()
def build_small_text_encoder(seed: int = 0, config: SmallTextEncoderConfig = SMALL_TEXT_ENCODER) -> Any:
    """The frozen random encoder (eval mode, requires_grad False), a pure function of `seed`."""
    from transformers import T5Gemma2Encoder

    tokenizer_size = len(build_small_tokenizer())
    if tokenizer_size > config.vocab_size:
        raise ValueError(f"the tokenizer has {tokenizer_size} tokens, more than vocab_size {config.vocab_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5Gemma2Encoder(_encoder_config(config))
    generator = torch.Generator().manual_seed(seed)
    text = model.text_model
    embed = text.embed_tokens.weight
    embed.copy_(torch.randn(embed.shape, generator=generator) * config.embed_rms / config.text_dim**0.5)
    embed[text.padding_idx].zero_()  # <pad> stays zero (it is masked anyway)
    for layer in text.layers:
        layer.post_self_attn_layernorm.weight.fill_(config.attention_gain - 1.0)  # Gemma norms scale by 1 + w
        layer.post_feedforward_layernorm.weight.fill_(config.mlp_gain - 1.0)
    return model.requires_grad_(False).eval()


@torch.no_grad()
def encode(text_encoder: Any, tokenizer: Any, prompts: list[str]) -> tuple[torch.Tensor, list[list[str]]]:
    """prompts -> (token states (B, L, D), the tokens of each prompt, padding dropped)."""
    batch = tokenizer(prompts, padding="longest", return_tensors="pt")
    states = text_encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    tokens = [
        tokenizer.convert_ids_to_tokens(ids[mask.bool()].tolist())
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]
    return states, tokens


def token_similarity(text_encoder: Any, tokenizer: Any, first: tuple[str, str], second: tuple[str, str]) -> float:
    """Cosine similarity of the state of word first[1] in prompt first[0] and of word second[1] in second[0]
    (each word's first occurrence)."""
    states, tokens = encode(text_encoder, tokenizer, [first[0], second[0]])
    a = states[0, tokens[0].index(first[1].lower())]
    b = states[1, tokens[1].index(second[1].lower())]
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


__all__ = [
    "PRETRAINED_TEXT_ENCODER",
    "SMALL_TEXT_ENCODER",
    "SmallTextEncoderConfig",
    "build_small_text_encoder",
    "encode",
    "text_dims",
    "token_similarity",
]
