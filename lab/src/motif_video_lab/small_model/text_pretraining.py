"""Pretrain the small text encoder on captions, so each object's words carry that object and where it goes.

A frozen random encoder leaves binding to the transformer: with two objects, "red", "circle", "blue" and "square"
are four separate states, and which colour belongs to which shape, and which object goes on which side, is left
for the video tokens to work out from word order. That is what the small model fails at (two-object prompts, the
README). A real model reads a pretrained language encoder that has done this work; ours is pretrained here on the
language it will read, the train-split captions, with one supervised task per object word:

    every word of an object's phrase ("small", "red", "circle", also "The red circle" in a second sentence)
    predicts that object's colour, shape and size, and its SLOT: where it sits in the frame, "centre" for one
    object, and for two the side the relation gives it ("A is to the left of B": A "left", B "right"; above /
    below: "top" / "bottom"),

plus, at every token, its own token id (so no word's identity is lost, the background and motion words included).
Linear heads read the last hidden state; they are dropped afterwards. Colour, shape and size are predicted by
separate heads, so a held-out (colour, shape) pair is two known answers, and `evaluate_text_encoder` measures it
on held-out captions. Only the text half trains; the SigLIP tower is untouched.

Captions are drawn fresh every step (`sample_scene(split="train")`, images and videos, one and two objects, every
variant and phrasing), so the encoder never sees a held-out pair. Everything is a pure function of `seed`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from motif_video_lab.procedural import COLORS, SHAPES, SIZES, SceneSpec, caption, sample_scene
from motif_video_lab.procedural.captions import CAPTION_VARIANTS, NUM_PHRASINGS
from motif_video_lab.small_model.supervised import fit_probe, warmup_cosine

logger = logging.getLogger(__name__)

SLOTS = ("centre", "left", "right", "top", "bottom")
_SLOTS_OF = {  # relation of objects[0] to objects[1] -> (slot of objects[0], slot of objects[1])
    "left_of": ("left", "right"),
    "right_of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}
HEADS = {"color": tuple(COLORS), "shape": tuple(SHAPES), "size": tuple(SIZES), "slot": SLOTS}
IGNORE = -100


@dataclass(frozen=True)
class TextPretrainConfig:
    steps: int = 500  # as SmallModelPlan.text_pretrain_steps (300 steps already probe 99.7-100% on held-out)
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 100
    two_object_prob: float = 0.5
    image_prob: float = 0.3


def object_slots(spec: SceneSpec) -> tuple[str, ...]:
    """Where each object sits: ("centre",) for one object, else the two sides its relation gives."""
    return ("centre",) if spec.relation is None else _SLOTS_OF[spec.relation]


def token_targets(tokens: list[str], spec: SceneSpec) -> dict[str, list[int]]:
    """Per-token class ids of each head (IGNORE where a token is not an object's word).

    An object's words are a "<colour> <shape>" pair and the size word right before it; the pair names the object
    (two objects always differ in colour and shape)."""
    slots = object_slots(spec)
    which = {(o.color, o.shape): k for k, o in enumerate(spec.objects)}
    targets = {head: [IGNORE] * len(tokens) for head in HEADS}
    for i in range(len(tokens) - 1):
        k = which.get((tokens[i], tokens[i + 1]))
        if k is None:
            continue
        obj = spec.objects[k]
        values = {"color": obj.color, "shape": obj.shape, "size": obj.size, "slot": slots[k]}
        span = [i, i + 1] + ([i - 1] if i > 0 and tokens[i - 1] in SIZES else [])
        for head, classes in HEADS.items():
            for j in span:
                targets[head][j] = classes.index(values[head])
    return targets


def sample_captions(
    rng: np.random.Generator, count: int, config: TextPretrainConfig, split: str = "train"
) -> list[tuple[str, SceneSpec]]:
    """`count` (caption, scene) pairs of `split`, each in a random caption variant and phrasing."""
    out = []
    for _ in range(count):
        image = bool(rng.random() < config.image_prob)
        spec = sample_scene(rng, split=split, image=image, num_frames=1 if image else 17,
                            two_object_prob=config.two_object_prob)  # fmt: skip
        variant = CAPTION_VARIANTS[rng.integers(len(CAPTION_VARIANTS))]
        out.append((caption(spec, variant, int(rng.integers(NUM_PHRASINGS))), spec))
    return out


Tensors = dict[str, torch.Tensor]


def _batch(tokenizer: Any, pairs: list[tuple[str, SceneSpec]]) -> tuple[Tensors, Tensors]:
    """Tokenized captions and each head's per-token targets (IGNORE at padding and at non-object words)."""
    batch = tokenizer([text for text, _ in pairs], padding="longest", return_tensors="pt")
    per_head: dict[str, list[list[int]]] = {head: [] for head in HEADS}
    for ids, (_, spec) in zip(batch["input_ids"], pairs):
        for head, values in token_targets(tokenizer.convert_ids_to_tokens(ids.tolist()), spec).items():
            per_head[head].append(values)
    ids = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, IGNORE)
    return batch, {"token": ids, **{head: torch.tensor(v) for head, v in per_head.items()}}


class _Heads(torch.nn.Module):
    def __init__(self, dim: int, vocab_size: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleDict({head: torch.nn.Linear(dim, len(c)) for head, c in HEADS.items()})
        self.layers["token"] = torch.nn.Linear(dim, vocab_size)

    def forward(self, states: torch.Tensor, targets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        losses, correct = {}, {}
        for head, layer in self.layers.items():
            logits = layer(states)
            losses[head] = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets[head].flatten(),
                                                             ignore_index=IGNORE)  # fmt: skip
            valid = targets[head] != IGNORE
            correct[head] = ((logits.argmax(-1) == targets[head]) & valid).sum().item() / max(valid.sum().item(), 1)
        return sum(losses.values()), correct


def pretrain_text_encoder(encoder: Any, tokenizer: Any, seed: int = 0,
                          config: TextPretrainConfig = TextPretrainConfig()) -> dict[str, float]:  # fmt: skip
    """Train `encoder`'s text half in place (it is returned frozen, in eval mode); returns the last step's
    per-head accuracy on its training batch."""
    text = encoder.text_model
    dim = text.config.hidden_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = _Heads(dim, text.config.vocab_size)
        text.requires_grad_(True).train()
        params = list(text.parameters()) + list(heads.parameters())
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
        rng = np.random.default_rng([seed, 7])
        correct: dict[str, float] = {}
        for step in range(config.steps):
            scale = warmup_cosine(step, config.steps, config.warmup)
            for group in optimizer.param_groups:
                group["lr"] = config.lr * scale
            batch, targets = _batch(tokenizer, sample_captions(rng, config.batch_size, config))
            states = text(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
            loss, correct = heads(states, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if (step + 1) % 100 == 0:
                logger.info("text pretraining step %d loss %.4f %s", step + 1, loss.item(),
                            {k: round(v, 3) for k, v in correct.items()})  # fmt: skip
    text.requires_grad_(False).eval()
    encoder.requires_grad_(False).eval()
    return correct


@torch.no_grad()
def probe_accuracy(encoder: Any, tokenizer: Any, splits: tuple[str, ...] = ("heldout",), count: int = 512,
                   seed: int = 0, probe_steps: int = 300) -> dict[str, dict[str, float]]:  # fmt: skip
    """How well each object word's state tells its object's colour / shape / size / slot: {split: {head: accuracy}}.

    Fits fresh linear heads once on the frozen states of train captions, then scores them on fresh captions of each
    split: a measure of the encoder alone (for a random encoder too), not of the pretraining heads."""
    config = TextPretrainConfig(two_object_prob=0.5)
    rng = np.random.default_rng([seed, 11])
    text = encoder.text_model

    def states_of(pairs):
        batch, targets = _batch(tokenizer, pairs)
        return text(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state, targets

    train_states, train_targets = states_of(sample_captions(rng, count, config))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = _Heads(text.config.hidden_size, text.config.vocab_size)
        fit_probe(heads, train_states, train_targets, probe_steps)
    return {split: heads(*states_of(sample_captions(rng, count, config, split=split)))[1] for split in splits}


__all__ = ["HEADS", "SLOTS", "TextPretrainConfig", "object_slots", "pretrain_text_encoder", "probe_accuracy",
           "token_targets"]  # fmt: skip
