"""Tiny random stand-ins for every component of the official Motif-Video release, built locally.

Design: each builder mirrors the official component's class and wiring at toy size, so the whole system
(diffusers' `MotifVideoPipeline`, our own pipeline, training loops, the CLI) runs on CPU in seconds with
no network:

- `transformer`: our `MotifVideoTransformer` (a preset, `tiny` by default). A freshly initialised model has
  zeroed output/modulation layers and predicts zero velocity, which would make every video a constant; so
  after `init_weights` every parameter gets seeded Gaussian noise and the output depends on text and image.
- `vae`: diffusers `AutoencoderKLWan` with the real 8x spatial / 4x temporal compression and z_dim 16, and
  non-trivial `latents_mean` / `latents_std`.
- `text_encoder`: transformers `T5Gemma2Encoder` whose text width is the preset's `text_embed_dim` and whose
  SigLIP `vision_tower` width is the preset's `image_embed_dim` (the pipeline takes image tokens from it).
- `tokenizer`: a word-level `PreTrainedTokenizerFast` over a fixed English vocabulary, with Gemma's special
  token ids (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3), a prepended `<bos>` and right padding.
- `scheduler`, `guider`, `feature_extractor`: the official classes with the official settings.

Everything is a pure function of `seed`: the builders run under `torch.random.fork_rng` with a seeded global
RNG (module constructors draw from it) plus explicit generators, so the caller's RNG state is untouched.
`save_tiny_release` writes the diffusers folder layout of the official release (`model_index.json` and one
sub-folder per component) that `diffusers.MotifVideoPipeline.from_pretrained` loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from motif_video.core.release_writer import new_index, open_release, write_index
from motif_video.models.config import get_preset
from motif_video.models.transformer import MotifVideoTransformer

SPECIAL_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>")  # ids 0..3, as in Gemma's vocabulary
TEXT_VOCAB_SIZE = 384  # the tiny text encoder's embedding rows; the tokenizer must fit in it
DEFAULT_IMAGE_SIZE = 32  # SigLIP input side; patch 8 -> 16 image tokens
VISION_PATCH_SIZE = 8
TRANSFORMER_WEIGHT_NOISE = 0.1  # std of the noise added to every transformer parameter after init_weights
RELEASE_CLASSES: dict[str, list[str]] = {  # component folder -> [library, class], as model_index.json lists them
    "feature_extractor": ["transformers", "SiglipImageProcessor"],
    "guider": ["diffusers", "AdaptiveProjectedGuidance"],
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "T5Gemma2Encoder"],
    "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    "transformer": ["diffusers", "MotifVideoTransformer3DModel"],
    "vae": ["diffusers", "AutoencoderKLWan"],
}

# A few hundred common English words (lowercase) for prompts like "a dog runs on the beach at sunset".
_WORDS = """
a an the and or but of in on at to from with without by for as into onto over under above below near
behind beside between through across around along up down out off is are was were be been being has
have had it its this that these those there here he she they we you i his her their our my your who
what which when where while then than very slowly quickly gently softly suddenly still again
man woman boy girl child children people person baby family friend crowd dancer runner
dog cat bird horse fish cow sheep lion tiger bear rabbit fox wolf deer elephant monkey duck
car bus train boat ship plane bike bicycle truck road street bridge city town village house building
room kitchen window door table chair bed wall floor roof garden park forest tree trees flower flowers
grass leaf leaves river lake sea ocean beach wave waves water rain snow ice fire smoke cloud clouds sky
sun moon star stars light shadow wind storm mountain hill hills field desert sand rock stone island
day night morning evening sunset sunrise winter summer spring autumn
red orange yellow green blue purple pink brown black white gray golden silver dark bright
big small large tiny tall short long old young new happy sad calm wild warm cold wet dry soft
beautiful quiet busy empty full clear foggy sunny cloudy
walk walks walking run runs running jump jumps jumping fly flies flying swim swims swimming
dance dances dancing sit sits sitting stand stands standing look looks looking turn turns turning
play plays playing smile smiles smiling talk talks talking eat eats eating drink drinks drinking
move moves moving fall falls falling ride rides riding drive drives driving hold holds holding
open opens close closes sing sings singing read reads reading write writes writing sleep sleeps
shot camera close-up wide view scene video frame slow motion pan zoom tracking aerial cinematic
realistic style background foreground left right center top bottom front back side
one two three four five many some all each every other another same different
hair face eyes hand hands head arm arms leg legs shirt dress coat hat glasses
"""

_PUNCTUATION = (".", ",", "!", "?", ";", ":", "'", '"', "-", "(", ")")


def default_vocab() -> list[str]:
    """The tokenizer's ordinary tokens (no specials), in id order after the special tokens."""
    seen: dict[str, None] = {}
    for word in (*_WORDS.split(), *_PUNCTUATION):
        seen.setdefault(word, None)
    return list(seen)


def build_tokenizer(vocab: list[str] | None = None, model_max_length: int = 512) -> Any:
    """A word-level `transformers.PreTrainedTokenizerFast`: lowercase, whitespace/punctuation split,
    `<bos>` prepended (as Gemma does), `<pad>` = 0, right padding. Unknown words map to `<unk>`."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = [w for w in (default_vocab() if vocab is None else vocab) if w not in SPECIAL_TOKENS]
    token_to_id = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *dict.fromkeys(words)))}
    backend = Tokenizer(WordLevel(token_to_id, unk_token="<unk>"))
    backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    bos = ("<bos>", token_to_id["<bos>"])
    backend.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B", special_tokens=[bos])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        padding_side="right",
        model_max_length=model_max_length,
    )


def build_text_encoder(text_dim: int, image_dim: int, image_size: int = DEFAULT_IMAGE_SIZE) -> Any:
    """A tiny `T5Gemma2Encoder` (text width `text_dim`) with a SigLIP tower (width `image_dim`); global RNG."""
    from transformers import SiglipVisionConfig, T5Gemma2Encoder, T5Gemma2EncoderConfig, T5Gemma2TextConfig

    text = T5Gemma2TextConfig(
        vocab_size=TEXT_VOCAB_SIZE,
        hidden_size=text_dim,
        intermediate_size=2 * text_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        max_position_embeddings=1024,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention"],  # Gemma 3's local/global interleave, shortened
    )
    vision = SiglipVisionConfig(
        hidden_size=image_dim,
        intermediate_size=2 * image_dim,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=VISION_PATCH_SIZE,
        vision_use_head=False,
    )
    config = T5Gemma2EncoderConfig(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    # Normally copied in by the encoder-decoder T5Gemma2Config; the encoder's text layers read them.
    config.text_config.dropout_rate = 0.0
    config.text_config.attention_dropout = 0.0
    return T5Gemma2Encoder(config).eval()


def build_vae() -> Any:
    """A tiny `AutoencoderKLWan`: z_dim 16, 8x spatial / 4x temporal, non-trivial latent stats; global RNG."""
    from diffusers import AutoencoderKLWan

    z_dim = 16
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=z_dim,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=torch.linspace(-0.5, 0.5, z_dim).tolist(),
        latents_std=torch.linspace(0.5, 1.5, z_dim).tolist(),
    ).eval()


@torch.no_grad()
def _transformer(preset: str, generator: torch.Generator) -> MotifVideoTransformer:
    model = MotifVideoTransformer(get_preset(preset))
    model.init_weights(generator=generator)
    for p in model.parameters():
        p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * TRANSFORMER_WEIGHT_NOISE)
    return model.eval()


def build_guider() -> Any:
    """diffusers' `AdaptiveProjectedGuidance` with the settings the official release runs with."""
    from diffusers import AdaptiveProjectedGuidance

    from motif_video.pipeline.guidance import GuidanceConfig

    settings = GuidanceConfig().to_diffusers_config()  # our official defaults, one source of truth
    return AdaptiveProjectedGuidance(**{k: v for k, v in settings.items() if not k.startswith("_")})


def build_tiny_components(
    seed: int = 0, *, transformer_preset: str = "tiny", image_size: int = DEFAULT_IMAGE_SIZE
) -> dict[str, Any]:
    """All seven pipeline components at toy size, random but fully determined by `seed`.

    Keys: transformer, vae, text_encoder, tokenizer, scheduler, guider, feature_extractor. The global torch
    RNG is left as it was. `image_size` is the SigLIP input side (a multiple of 16)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import SiglipImageProcessor

    if image_size % (2 * VISION_PATCH_SIZE):
        raise ValueError(f"image_size must be a multiple of {2 * VISION_PATCH_SIZE}, got {image_size}")
    preset = get_preset(transformer_preset)
    if preset.image_embed_dim is None:
        raise ValueError(f"preset {transformer_preset!r} has no image tokens; the tiny release needs image_embed_dim")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = _transformer(transformer_preset, torch.Generator().manual_seed(seed))
        vae = build_vae()
        text_encoder = build_text_encoder(preset.text_embed_dim, preset.image_embed_dim, image_size)
    tokenizer = build_tokenizer()
    if len(tokenizer) > TEXT_VOCAB_SIZE:
        raise AssertionError(f"tokenizer has {len(tokenizer)} tokens, more than the encoder's {TEXT_VOCAB_SIZE}")
    return dict(
        transformer=transformer,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=15.0),  # the model card's static T2V shift
        guider=build_guider(),
        feature_extractor=SiglipImageProcessor(
            size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
    )


# Sizes the tiny components generate at by default (the official 1280x736x121 would take minutes on a CPU).
TINY_DEFAULTS = dict(height=64, width=64, num_frames=17, fps=8, num_inference_steps=10)


def model_index() -> dict[str, Any]:
    """The `model_index.json` dict of the official release layout (diffusers' format) with the tiny defaults.

    Classes are named by their stable public names (the loaders resolve them with `getattr(library, name)`).
    The transformer is listed as diffusers' model, as in the official release: ours is key-compatible with it.
    The tokenizer is our word-level `PreTrainedTokenizerFast` rather than the release's Gemma tokenizer."""
    return new_index(RELEASE_CLASSES, TINY_DEFAULTS)


def save_tiny_release(directory: str | Path, seed: int = 0, **build_kwargs: Any) -> Path:
    """Write a tiny random release in the official diffusers layout under `directory`; returns its path."""
    components = build_tiny_components(seed, **build_kwargs)
    layout = components["transformer"].config.cross_attention_layout
    if layout != "diffusers":
        raise ValueError(f"the release layout needs diffusers' cross-attention layout, the preset has {layout!r}")
    root = open_release(directory)
    for name, component in components.items():
        component.save_pretrained(str(root / name))
    write_index(root, model_index())  # last: the folder is complete once it has an index
    return root


__all__ = [
    "RELEASE_CLASSES",
    "TINY_DEFAULTS",
    "SPECIAL_TOKENS",
    "TEXT_VOCAB_SIZE",
    "build_guider",
    "build_tiny_components",
    "build_tokenizer",
    "default_vocab",
    "model_index",
    "save_tiny_release",
]
