"""The small Motif-Video model's frozen / pretrained parts (everything but the transformer), built on CPU.

vocab.py         the procedural captions' word list and its word-level tokenizer
text_encoder.py  a frozen random T5Gemma2 encoder (1 layer, width 64) with a SigLIP tower (width 32, 16 tokens)
vae.py           a Wan VAE (z_dim 16, 8x / 4x) trained on procedural clips; its evaluation
components.py    the release folder in the official layout, then `finish_release` adds the transformer

Heavy imports (diffusers, transformers) happen inside the functions that need them.
"""

from motif_video_lab.small_model.components import (
    SMALL_DEFAULTS,
    build_release_components,
    finish_release,
    load_trained_vae,
)
from motif_video_lab.small_model.text_encoder import (
    SMALL_TEXT_ENCODER,
    SmallTextEncoderConfig,
    build_small_text_encoder,
    text_dims,
    token_similarity,
)
from motif_video_lab.small_model.vae import SMALL_VAE, SmallVAEConfig, build_small_vae, evaluate_vae, train_vae
from motif_video_lab.small_model.vocab import build_small_tokenizer, small_vocab

__all__ = [
    "SMALL_DEFAULTS",
    "SMALL_TEXT_ENCODER",
    "SMALL_VAE",
    "SmallTextEncoderConfig",
    "SmallVAEConfig",
    "build_release_components",
    "build_small_text_encoder",
    "build_small_tokenizer",
    "build_small_vae",
    "evaluate_vae",
    "finish_release",
    "load_trained_vae",
    "small_vocab",
    "text_dims",
    "token_similarity",
    "train_vae",
]
