"""Captions of procedural scenes, and the parser that reads what a caption (or any of our prompts) asks for.

Every caption, in every variant, states ALL of the scene's attributes in its FIRST sentence: the long caption adds
a second sentence of harmless filler, so the manifest's `first_sentence` variant (the long caption up to the first
'.', '!' or '?' followed by whitespace; data/manifest.py) is a complete, distinct prompt, and so is `short`.
NUM_PHRASINGS sentence structures per scene kind vary the wording; the attribute words themselves are fixed:

    object      "<size> <colour> <shape>"; two objects are written objects[0] first: "A ... is to the left of a ..."
    background  "<background> background"
    motion      "to the left" / "left", "to the right" / "right", "upward" / "up", "downward" / "down";
                speed "slowly" / "quickly"; still: "still", "motionless", "stationary", "neither moves", ...
    relation    "to the left of", "to the right of", "above", "below"

An image's caption has no motion words at all. `parse_prompt` inverts every template exactly (tested).
"""

from __future__ import annotations

import re

from motif_video_lab.procedural.scene import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    SIZES,
    ObjectPrompt,
    ObjectSpec,
    PromptSpec,
    SceneSpec,
)

CAPTION_VARIANTS = ("long", "short", "first_sentence")  # as data.schema.CAPTION_VARIANTS
NUM_PHRASINGS = 3
_SENTENCE_END = re.compile(r"[.!?](?=\s)")  # the rule of data.manifest.first_sentence
_DIR_A = {"left": "to the left", "right": "to the right", "up": "upward", "down": "downward"}
_DIR_B = {"left": "left", "right": "right", "up": "up", "down": "down"}
_SPEED = {"slow": "slowly", "fast": "quickly"}
_RELATION = {"left_of": "to the left of", "right_of": "to the right of", "above": "above", "below": "below"}

# {a}/{b}: "<size> <colour> <shape>" of objects 0/1; {c}/{s}: colour/shape of object 0; {bg}: background colour;
# {rel}: relation phrase; {da}/{db}: direction phrases; {v}: speed adverb.
_LONG = {
    "move1": (
        "A {a} moves {da} {v} on a {bg} background. The {c} {s} keeps its shape and size the whole time.",
        "A {a} against a {bg} background slides {v} {db}. It is the only object, and nothing else changes.",
        "A {a} drifts {da} {v} over a plain {bg} background. The motion is smooth and steady.",
    ),
    "still1": (
        "A {a} stays still on a {bg} background. The {c} {s} does not move.",
        "A {a} against a {bg} background remains motionless. Nothing in the scene moves.",
        "A {a} sits stationary over a plain {bg} background. The camera is fixed.",
    ),
    "image1": (
        "A {a} on a {bg} background. Flat colors, sharp edges.",
        "An image of a {a} against a {bg} background. The {c} {s} is the only object.",
        "A simple picture: a {a} over a plain {bg} background. No texture, no shading.",
    ),
    "move2": (
        "A {a} is {rel} a {b} on a {bg} background, and both move {da} {v}. The two shapes keep their distance.",
        "A {a} {rel} a {b} against a {bg} background, both sliding {v} {db}. They move together.",
        "Over a plain {bg} background, a {a} sits {rel} a {b}, and both drift {da} {v}. Nothing else is there.",
    ),
    "still2": (
        "A {a} is {rel} a {b} on a {bg} background, and neither moves. The two shapes stay in place.",
        "A {a} {rel} a {b} against a {bg} background, both motionless. Nothing in the scene moves.",
        "Over a plain {bg} background, a {a} sits {rel} a {b}, and both stay still. The camera is fixed.",
    ),
    "image2": (
        "A {a} {rel} a {b} on a {bg} background. Flat colors, sharp edges.",
        "An image of a {a} {rel} a {b} against a {bg} background. The two shapes do not overlap.",
        "A simple picture: a {a} is {rel} a {b} over a plain {bg} background. No texture, no shading.",
    ),
}
_SHORT = {
    "move1": (
        "{a} moving {db} {v}, {bg} background",
        "{bg} background, {a} going {da} {v}",
        "{a} moving {v} {db} on {bg} background",
    ),
    "still1": ("{a}, still, {bg} background", "{bg} background, motionless {a}", "stationary {a} on {bg} background"),
    "image1": ("{a}, {bg} background", "{bg} background with a {a}", "{a} on {bg} background"),
    "move2": (
        "{a} {rel} {b}, moving {db} {v}, {bg} background",
        "{bg} background, {a} {rel} {b}, both going {da} {v}",
        "{a} {rel} {b} moving {v} {db} on {bg} background",
    ),
    "still2": (
        "{a} {rel} {b}, still, {bg} background",
        "{bg} background, {a} {rel} {b}, motionless",
        "stationary {a} {rel} {b} on {bg} background",
    ),
    "image2": ("{a} {rel} {b}, {bg} background", "{bg} background, {a} {rel} {b}", "{a} {rel} {b} on {bg} background"),
}


def _phrase(obj: ObjectSpec) -> str:
    return f"{obj.size} {obj.color} {obj.shape}"


def _kind(spec: SceneSpec) -> str:
    motion = "image" if spec.image else ("still" if spec.direction == "still" else "move")
    return f"{motion}{len(spec.objects)}"


def caption(spec: SceneSpec, variant: str = "long", phrasing: int = 0) -> str:
    """The caption of `spec` in a manifest variant ('long', 'short', 'first_sentence') and phrasing (any int)."""
    if variant not in CAPTION_VARIANTS:
        raise ValueError(f"unknown caption variant {variant!r}; expected one of {', '.join(CAPTION_VARIANTS)}")
    kind = _kind(spec)
    obj = spec.objects
    fields = {
        "a": _phrase(obj[0]),
        "b": _phrase(obj[1]) if len(obj) > 1 else "",
        "c": obj[0].color,
        "s": obj[0].shape,
        "bg": spec.background,
        "rel": _RELATION.get(spec.relation or "", ""),
        "da": _DIR_A.get(spec.direction, ""),
        "db": _DIR_B.get(spec.direction, ""),
        "v": _SPEED.get(spec.speed or "", ""),
    }
    if variant == "short":
        return _SHORT[kind][phrasing % NUM_PHRASINGS].format(**fields)
    text = _LONG[kind][phrasing % NUM_PHRASINGS].format(**fields)
    return first_sentence(text) if variant == "first_sentence" else text


def first_sentence(text: str) -> str:
    """As data.manifest.first_sentence (re-implemented here so this package needs no torch)."""
    text = text.strip()
    match = _SENTENCE_END.search(text)
    return text[: match.end()] if match else text


# ---------------------------------------------------------------------------------------------------- parsing

_WORDS = "|".join
_OBJECT_RE = re.compile(rf"\b(?:({_WORDS(SIZES)})\s+)?({_WORDS(COLORS)})\s+({_WORDS(SHAPES)})\b")
_BACKGROUND_RE = re.compile(rf"\b({_WORDS(BACKGROUNDS)})\s+background\b")
_RELATION_RE = re.compile(r"\b(to the left of|to the right of|above|below)\b")
_STILL_RE = re.compile(r"\b(still|motionless|stationary|neither moves|does not move|do not move)\b")
_DIRECTION_RE = re.compile(r"\b(?:to the\s+)?(left|right)\b|\b(up|down)(?:ward)?\b")
_SPEED_RE = re.compile(r"\b(slowly|slow|quickly|fast)\b")
_SPEED_WORDS = {"slowly": "slow", "slow": "slow", "quickly": "fast", "fast": "fast"}
_RELATION_WORDS = {v: k for k, v in _RELATION.items()}


def parse_prompt(text: str) -> PromptSpec:
    """What a prompt asks for: objects in order of first mention, background, motion, speed, relation.

    Reads our own templates exactly; an attribute the text does not mention is None. Raises ValueError when the
    text names no '<colour> <shape>' object, or more than two.
    """
    lowered = " ".join(text.lower().split())
    objects: dict[tuple[str, str], str | None] = {}
    for match in _OBJECT_RE.finditer(lowered):
        size, color, shape = match.groups()
        if objects.get((color, shape)) is None:
            objects[(color, shape)] = size
    if not 1 <= len(objects) <= 2:
        raise ValueError(
            f"cannot parse prompt {text!r}: expected 1 or 2 '<colour> <shape>' objects, got {len(objects)}"
        )
    background = _BACKGROUND_RE.search(lowered)
    relation = _RELATION_RE.search(lowered)
    rest = _RELATION_RE.sub(" ", _OBJECT_RE.sub(" ", lowered))  # left/right/above/below of a relation are not motion
    direction = "still" if _STILL_RE.search(rest) else None
    moving = _DIRECTION_RE.search(rest)
    if direction is None and moving is not None:
        direction = moving.group(1) or moving.group(2)
    speed = _SPEED_RE.search(rest)
    return PromptSpec(
        objects=tuple(ObjectPrompt(color, shape, size) for (color, shape), size in objects.items()),
        background=background.group(1) if background else None,
        direction=direction,
        speed=_SPEED_WORDS[speed.group(1)] if speed and direction not in (None, "still") else None,
        relation=_RELATION_WORDS[relation.group(1)] if relation and len(objects) == 2 else None,
    )
