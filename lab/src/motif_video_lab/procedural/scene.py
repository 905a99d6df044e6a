"""The procedural world: its vocabulary, one scene as a typed spec, the scene sampler and the held-out rule.

A scene is one or two flat-coloured shapes on a plain background. Every attribute is visually LARGE, so a tiny
model trained for an hour can learn it, and the attributes combine freely, so held-out COMBINATIONS of known
words can test composition:

    background  black, gray, white, navy                         (never an object colour)
    colour      red, green, blue, yellow, purple, cyan           (saturated; >= 116 RGB units from every background)
    shape       circle, square, triangle (apex up)               (bbox fill ratios 0.79 / 1.0 / 0.5)
    size        small, large: half-extent 7 / 13 px at 64x64     (areas differ ~3.4x)
    motion      left, right, up, down at slow / fast = 1 / 2 px per frame at 64x64, or still
    relation    with two objects: objects[0] is left of / right of / above / below objects[1]

Lengths scale with u = min(H, W) / 64. Speeds are per FRAME, so a clip cut short (a bucket with fewer frames than
the file) keeps its speed. Two objects always differ in colour and in shape, share one motion, and keep their
offset, so the relation holds in every frame. A position is the centre of an object's bounding box at frame 0, as
fractions of (W, H); a scene is sampled for one (num_frames, H, W) and every object stays fully inside the frame,
at least MARGIN_PX from the edge, for the whole clip.

Layout (`sample_scene(layout=...)`): "centred" (the default, the world the small model is trained and scored in)
places the scene's group (one object, or two at a fixed gap GAP_PX + EXTRA_GAP_PX / 2, no perpendicular offset) so
its path over the clip is centred in the frame, then jitters it by up to LAYOUT_JITTER_PX on each axis, so the
caption decides the layout. "uniform" draws the start anywhere the path fits, with a random gap and perpendicular
offset: a model must then DECIDE the layout from noise, which a toy transformer does not learn in an hour
(`lab/scripts/completion_by_noise.py`: the small model trained on "uniform" clips gets the two objects' relation right
4% of the time from pure noise, 83% once the layout is in x_t at t = 0.6).

Held-out rule (fixed; `is_heldout`): a scene is held out when any object has a (colour, shape) pair in
HELDOUT_COLOR_SHAPE, or any MOVING object has a (colour, direction) pair in HELDOUT_COLOR_DIRECTION. Every colour,
shape and direction still appears in training; only these pairings never do.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np

RGB = tuple[int, int, int]

BACKGROUNDS: dict[str, RGB] = {
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
    "white": (255, 255, 255),
    "navy": (20, 30, 80),
}
# Object colours differ from every background in LUMA too (BT.709 luma, |difference| >= 42): mp4 (yuv420p) keeps
# chroma at half resolution, so a shape that differs from its background only in chroma loses its corners.
COLORS: dict[str, RGB] = {
    "red": (225, 40, 40),  # luma 79
    "green": (60, 220, 60),  # luma 174
    "blue": (30, 70, 240),  # luma 74
    "yellow": (240, 220, 40),  # luma 211
    "purple": (150, 40, 200),  # luma 75
    "cyan": (70, 230, 230),  # luma 196
}
SHAPES = ("circle", "square", "triangle")
SIZES: dict[str, float] = {"small": 7.0, "large": 13.0}  # half-extent (bbox half-side) in px at 64x64
DIRECTIONS = ("left", "right", "up", "down")
MOTIONS = ("still", *DIRECTIONS)
SPEEDS: dict[str, float] = {"slow": 1.0, "fast": 2.0}  # px per frame at 64x64
RELATIONS = ("left_of", "right_of", "above", "below")  # objects[0] relative to objects[1]
REFERENCE_SIZE = 64  # the frame side the px constants above are given for
MARGIN_PX = 1.0  # every object stays this far inside the frame
GAP_PX = 6.0  # least gap between the bounding boxes of two objects, at 64x64
EXTRA_GAP_PX = 10.0  # the gap is GAP_PX + uniform(0, EXTRA_GAP_PX) ("uniform" layout; "centred": + half of it)
PERP_JITTER = 0.3  # perpendicular offset <= this fraction of the along-axis offset: the relation is unambiguous
LAYOUT_JITTER_PX = 4.0  # "centred" layout: the group's centre moves by up to this on each axis, at 64x64
GEOMETRY_TRIES = 100  # redraws of a scene's attributes before its object count is redrawn
UNIT_VECTORS = {"still": (0.0, 0.0), "left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}

HELDOUT_COLOR_SHAPE = frozenset({("red", "triangle"), ("blue", "circle"), ("yellow", "square")})
HELDOUT_COLOR_DIRECTION = frozenset({("green", "left"), ("purple", "up"), ("cyan", "down"), ("red", "right")})

Split = Literal["train", "heldout", "any"]
Layout = Literal["centred", "uniform"]
LAYOUTS: tuple[str, ...] = get_args(Layout)


@dataclass(frozen=True)
class ObjectPrompt:
    """What a prompt asks of one object; `size` None when the prompt does not say."""

    color: str
    shape: str
    size: str | None = None


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for; a field is None when the prompt does not mention it (it is then not scored)."""

    objects: tuple[ObjectPrompt, ...]
    background: str | None = None
    direction: str | None = None  # one of MOTIONS
    speed: str | None = None
    relation: str | None = None


@dataclass(frozen=True)
class ObjectSpec:
    color: str
    shape: str
    size: str
    x: float  # bbox centre at frame 0, fraction of the width
    y: float  # fraction of the height


@dataclass(frozen=True)
class SceneSpec:
    """One scene. `direction`/`speed` are shared by all objects; an image is still and its caption has no motion."""

    background: str
    objects: tuple[ObjectSpec, ...]
    direction: str = "still"
    speed: str | None = None  # None exactly when still
    relation: str | None = None  # exactly when there are two objects
    image: bool = False

    def __post_init__(self) -> None:
        _check(self.background, BACKGROUNDS, "background")
        if len(self.objects) not in (1, 2):
            raise ValueError(f"a scene has 1 or 2 objects, got {len(self.objects)}")
        for obj in self.objects:
            _check(obj.color, COLORS, "colour")
            _check(obj.shape, SHAPES, "shape")
            _check(obj.size, SIZES, "size")
        if len(self.objects) == 2 and (
            self.objects[0].color == self.objects[1].color or self.objects[0].shape == self.objects[1].shape
        ):
            raise ValueError(f"two objects must differ in colour and shape, got {self.objects}")
        _check(self.direction, MOTIONS, "direction")
        if (self.direction == "still") != (self.speed is None):
            raise ValueError(f"speed must be None exactly when still, got {self.direction!r} at {self.speed!r}")
        if self.speed is not None:
            _check(self.speed, SPEEDS, "speed")
        if (len(self.objects) == 2) != (self.relation is not None):
            raise ValueError(f"a relation is needed exactly when there are two objects, got {self.relation!r}")
        if self.relation is not None:
            _check(self.relation, RELATIONS, "relation")
        if self.image and self.direction != "still":
            raise ValueError("an image cannot move: direction must be 'still'")

    def prompt(self) -> PromptSpec:
        """The attributes a caption of this scene states (an image's caption states no motion)."""
        return PromptSpec(
            objects=tuple(ObjectPrompt(o.color, o.shape, o.size) for o in self.objects),
            background=self.background,
            direction=None if self.image else self.direction,
            speed=self.speed,
            relation=self.relation,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SceneSpec:
        objects = tuple(ObjectSpec(**o) for o in data["objects"])
        return cls(**{**data, "objects": objects})


def _check(value: str, allowed: Any, what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {', '.join(allowed)}")


# ---------------------------------------------------------------------------------------------------- geometry


def unit(height: int, width: int) -> float:
    """Pixels per reference pixel: lengths scale with min(H, W) / 64."""
    return min(height, width) / REFERENCE_SIZE


def half_extent(size: str, height: int, width: int) -> float:
    return SIZES[size] * unit(height, width)


def velocity(spec: SceneSpec, height: int, width: int) -> tuple[float, float]:
    """(vx, vy) in px per frame, y pointing down."""
    ux, uy = UNIT_VECTORS[spec.direction]
    speed = 0.0 if spec.speed is None else SPEEDS[spec.speed] * unit(height, width)
    return ux * speed, uy * speed


def trajectory(spec: SceneSpec, num_frames: int, height: int, width: int) -> np.ndarray:
    """Bbox centres in px: (T, N, 2) as (x, y) for frame t and object n."""
    vx, vy = velocity(spec, height, width)
    t = np.arange(num_frames, dtype=np.float64)[:, None]
    x = np.array([o.x * width for o in spec.objects])[None] + vx * t
    y = np.array([o.y * height for o in spec.objects])[None] + vy * t
    return np.stack([x, y], axis=-1)


def fits(spec: SceneSpec, num_frames: int, height: int, width: int, tol: float = 1e-6) -> bool:
    """Whether every object stays fully inside the frame (MARGIN_PX from the edge) in every frame."""
    centres = trajectory(spec, num_frames, height, width)
    r = np.array([half_extent(o.size, height, width) for o in spec.objects])[None]
    x, y = centres[..., 0], centres[..., 1]
    low, high_x, high_y = MARGIN_PX - tol, width - MARGIN_PX + tol, height - MARGIN_PX + tol
    return bool((x - r >= low).all() and (x + r <= high_x).all() and (y - r >= low).all() and (y + r <= high_y).all())


# ---------------------------------------------------------------------------------------------------- held-out rule


def heldout_pairs(spec: SceneSpec | PromptSpec) -> set[tuple[str, str]]:
    """The held-out (colour, shape) and (colour, direction) pairs the scene or prompt contains."""
    found = {(o.color, o.shape) for o in spec.objects} & HELDOUT_COLOR_SHAPE
    if spec.direction in DIRECTIONS:
        found |= {(o.color, spec.direction) for o in spec.objects} & HELDOUT_COLOR_DIRECTION
    return found


def is_heldout(spec: SceneSpec | PromptSpec) -> bool:
    return bool(heldout_pairs(spec))


# ---------------------------------------------------------------------------------------------------- sampler


def check_scene_options(two_object_prob: float, still_prob: float, layout: str) -> None:
    """The sampler's mix options, checked before anything is drawn; a bad one is a ValueError saying what to pass."""
    for name, value in (("two_object_prob", two_object_prob), ("still_prob", still_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} is a probability in [0, 1], got {value}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {', '.join(LAYOUTS)}")


def sample_scene(
    rng: np.random.Generator,
    *,
    split: Split = "train",
    image: bool = False,
    num_frames: int = 17,
    height: int = 64,
    width: int = 64,
    two_object_prob: float = 0.4,
    still_prob: float = 0.15,
    layout: Layout = "centred",
    where: Callable[[SceneSpec], bool] | None = None,
    max_tries: int = 10_000,
) -> SceneSpec:
    """A random scene that fits (num_frames, height, width).

    split: "train" never contains a held-out pair, "heldout" contains at least one, "any" is unrestricted.
    layout: "centred" (the path centred in the frame, jittered) or "uniform" (anywhere it fits); module docstring.
    where: an extra acceptance test (rejection sampling, like the split). Deterministic in the rng's state.
    """
    if image and num_frames != 1:
        raise ValueError(f"an image has num_frames=1, got {num_frames}")
    check_scene_options(two_object_prob, still_prob, layout)
    for _ in range(max_tries):
        count = 2 if rng.random() < two_object_prob else 1
        spec: SceneSpec | None = None
        for _ in range(GEOMETRY_TRIES):  # redraw the rest, not the count: two_object_prob stays the real share
            spec = _draw(rng, count, image, num_frames, height, width, still_prob, layout)
            if spec is not None:
                break
        if spec is None:
            continue
        if split == "train" and is_heldout(spec) or split == "heldout" and not is_heldout(spec):
            continue
        if where is None or where(spec):
            return spec
    raise ValueError(f"no scene fits {num_frames}x{height}x{width} (split={split}) in {max_tries} tries")


def _draw(
    rng: np.random.Generator,
    count: int,
    image: bool,
    frames: int,
    height: int,
    width: int,
    still_prob: float,
    layout: Layout,
) -> SceneSpec | None:
    """A scene of `count` objects, or None when the drawn sizes, relation and motion cannot fit the frame."""
    colors = [list(COLORS)[i] for i in rng.choice(len(COLORS), count, replace=False)]
    shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), count, replace=False)]
    sizes = [list(SIZES)[i] for i in rng.integers(len(SIZES), size=count)]
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    direction, speed = "still", None
    if not image and rng.random() >= still_prob:
        direction, speed = DIRECTIONS[rng.integers(4)], list(SPEEDS)[rng.integers(len(SPEEDS))]
    relation = RELATIONS[rng.integers(4)] if count == 2 else None
    u = unit(height, width)
    radii = [SIZES[s] * u for s in sizes]
    offsets = [(0.0, 0.0)]
    if count == 2:  # object 1 relative to object 0
        if layout == "centred":
            along, perp = radii[0] + radii[1] + (GAP_PX + EXTRA_GAP_PX / 2) * u, 0.0
        else:
            along = radii[0] + radii[1] + (GAP_PX + rng.uniform(0, EXTRA_GAP_PX)) * u
            perp = rng.uniform(-PERP_JITTER, PERP_JITTER) * along
        sign = 1.0 if relation in ("left_of", "above") else -1.0
        offsets.append((sign * along, perp) if relation in ("left_of", "right_of") else (perp, sign * along))
    ux, uy = UNIT_VECTORS[direction]
    travel = (0.0 if speed is None else SPEEDS[speed] * u) * (frames - 1)
    jitter = LAYOUT_JITTER_PX * u if layout == "centred" else None
    x0 = _place(rng, [o[0] for o in offsets], radii, ux * travel, width, jitter)
    y0 = _place(rng, [o[1] for o in offsets], radii, uy * travel, height, jitter)
    if x0 is None or y0 is None:
        return None
    objects = tuple(
        ObjectSpec(c, s, z, (x0 + ox) / width, (y0 + oy) / height)
        for c, s, z, (ox, oy) in zip(colors, shapes, sizes, offsets)
    )
    return SceneSpec(background, objects, direction, speed, relation, image)


def _place(
    rng: np.random.Generator,
    offsets: list[float],
    radii: list[float],
    travel: float,
    side: int,
    jitter: float | None,
) -> float | None:
    """A start coordinate for object 0 so every object stays inside [MARGIN, side - MARGIN] while moving: the
    middle of that range moved by uniform(-jitter, jitter) and clipped to it, or (jitter None) uniform in it."""
    low = MARGIN_PX - min(o - r for o, r in zip(offsets, radii)) - min(0.0, travel)
    high = side - MARGIN_PX - max(o + r for o, r in zip(offsets, radii)) - max(0.0, travel)
    if low > high:
        return None
    if jitter is not None:
        return float(np.clip((low + high) / 2 + rng.uniform(-jitter, jitter), low, high))
    return float(rng.uniform(low, high)) if not math.isclose(low, high) else low
