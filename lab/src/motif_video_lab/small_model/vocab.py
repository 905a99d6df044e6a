"""The small model's word list: every word our procedural captions and prompts can contain, and its tokenizer.

The words are not typed in by hand: `caption_words` renders captions of many random scenes (videos, stills and
images, one and two objects) in every variant and phrasing and splits them exactly as the tokenizer will (its own
NFKC + lowercase normaliser and whitespace / punctuation pre-tokeniser, so no second implementation can drift).
`EXTRA_WORDS` adds the attribute words a hand-written prompt may use that no template writes ("slow", "fast",
"moving", the bare relation words) so `parse_prompt`-style prompts tokenize too. The list is sorted, so token ids
are a pure function of the templates, not of the sampling order.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import numpy as np

from motif_video.pipeline.tiny import build_tokenizer
from motif_video_lab.procedural import (
    BACKGROUNDS,
    COLORS,
    DIRECTIONS,
    RELATIONS,
    SHAPES,
    SIZES,
    SPEEDS,
    caption,
    sample_scene,
)
from motif_video_lab.procedural.captions import CAPTION_VARIANTS, NUM_PHRASINGS

VOCAB_SCENES = 400  # scenes per kind (video / image); every template word appears within far fewer (tested)
EXTRA_WORDS = (
    *BACKGROUNDS, *COLORS, *SHAPES, *SIZES, *DIRECTIONS, *SPEEDS,
    *(word for relation in RELATIONS for word in relation.split("_")),
    "still", "motionless", "stationary", "moving", "moves", "slowly", "quickly", "upward", "downward",
    "background", "a", "an", "the", "and", "on", "to", "of", "is", "both",
)  # fmt: skip
PUNCTUATION = (".", ",", "!", "?", ";", ":", "'", '"', "-", "(", ")")


def split_words(texts: Iterable[str]) -> set[str]:
    """The pre-tokens of `texts` under the tokenizer's own normaliser and pre-tokeniser."""
    backend = build_tokenizer([]).backend_tokenizer
    words: set[str] = set()
    for text in set(texts):
        normalised = backend.normalizer.normalize_str(text)
        words.update(piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(normalised))
    return words


def template_captions(num_scenes: int = VOCAB_SCENES, seed: int = 0) -> list[str]:
    """Captions of `num_scenes` random videos and as many images, in every variant and phrasing."""
    rng = np.random.default_rng(seed)
    texts = []
    for index in range(2 * num_scenes):
        image = index >= num_scenes
        spec = sample_scene(rng, split="any", image=image, num_frames=1 if image else 17)
        texts += [caption(spec, v, p) for v in CAPTION_VARIANTS for p in range(NUM_PHRASINGS)]
    return texts


def small_vocab() -> list[str]:
    """The tokenizer's ordinary tokens (no special tokens), sorted."""
    return list(_vocab())


@functools.cache
def _vocab() -> tuple[str, ...]:  # ~3 s of caption rendering and splitting, done once per process
    return tuple(sorted(split_words(template_captions()) | split_words(EXTRA_WORDS) | set(PUNCTUATION)))


def build_small_tokenizer(model_max_length: int = 512) -> Any:
    """A word-level `PreTrainedTokenizerFast` over `small_vocab()` (Gemma's special ids 0..3, `<bos>` first)."""
    return build_tokenizer(small_vocab(), model_max_length=model_max_length)


__all__ = ["EXTRA_WORDS", "build_small_tokenizer", "small_vocab", "split_words", "template_captions"]
