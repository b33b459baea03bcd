"""A procedural, seeded world of flat coloured shapes: scenes, renders, captions, questions and edits.

A scene holds one to three shapes (circle, square, triangle) in saturated named colours, each at a distinct
named position (left, right, top, bottom, centre) and in a named size (small, large), on a plain background
(white, black, grey). Everything is a pure function of a seed, and renders at any resolution with OpenCV
(anti-aliased), so the same scene is the same picture at 512 (the model's output) or 1024 (its input).

Language is fixed and single-word where it is an answer: captions such as ``"a small red circle on the left
and a large blue square at the top, on a white background"``; questions in five categories (colour, shape,
count, position, yes/no); edit instructions in three (recolour, remove, move). Train and held-out sets come
from disjoint seed ranges (:data:`TRAIN_SEED_BASE`, :data:`HELDOUT_SEED_BASE`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

import cv2
import numpy as np

#: Shape names.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Named colours (RGB), saturated and far apart in CIELAB.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "green": (30, 175, 50),
    "blue": (35, 75, 230),
    "yellow": (245, 215, 25),
    "purple": (150, 45, 195),
}
#: Background colours (RGB).
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "grey": (128, 128, 128),
}
#: Named positions: centre (x, y) as fractions of the image side.
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.18, 0.5),
    "right": (0.82, 0.5),
    "top": (0.5, 0.18),
    "bottom": (0.5, 0.82),
    "centre": (0.5, 0.5),
}
#: Named sizes: half-extent (radius, half side) as a fraction of the image side.
#: (Large enough that a 128 px render shows every shape's corners through the f8 autoencoder.)
SIZES: dict[str, float] = {"small": 0.10, "large": 0.14}
#: How positions read in captions and questions.
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
#: How positions read as a move target.
MOVE_PHRASES: dict[str, str] = {p: f"to the {p}" for p in POSITIONS}
#: Number words used as count answers.
NUMBERS: tuple[str, ...] = ("zero", "one", "two", "three")
#: Question categories, in report order.
QUESTION_CATEGORIES: tuple[str, ...] = ("colour", "shape", "count", "position", "yesno")
#: Edit kinds, in report order.
EDIT_KINDS: tuple[str, ...] = ("recolour", "remove", "move")
#: Seed ranges of the split: train scenes use ``TRAIN_SEED_BASE + i``, held-out ``HELDOUT_SEED_BASE + i``.
TRAIN_SEED_BASE = 0
HELDOUT_SEED_BASE = 1_000_000_000
#: Per-object jitter of the centre (fraction of the side) and of the size (relative). Zero: every object
#: sits exactly at its named position in its named size, which a small DiT trained for minutes on a CPU
#: learns far faster than a jittered layout (the detector does not need it either way).
POSITION_JITTER = 0.0
SIZE_JITTER = 0.0


@dataclass(frozen=True)
class Shape:
    """One object: what, which colour, where, how big, plus its small seeded jitter."""

    shape: str
    colour: str
    position: str
    size: str
    dx: float = 0.0
    dy: float = 0.0
    scale: float = 1.0

    def describe(self, with_size: bool = True) -> str:
        """``"small red circle"`` (or ``"red circle"``)."""
        return f"{self.size} {self.colour} {self.shape}" if with_size else f"{self.colour} {self.shape}"

    def centre(self) -> tuple[float, float]:
        """Centre (x, y) in fractions of the side, jitter included."""
        x, y = POSITIONS[self.position]
        return x + self.dx, y + self.dy

    def radius(self) -> float:
        """Half-extent in fractions of the side, jitter included."""
        return SIZES[self.size] * self.scale


@dataclass(frozen=True)
class Scene:
    """A background and one to three shapes at distinct positions."""

    background: str
    objects: tuple[Shape, ...]
    seed: int = -1

    def positions(self) -> set[str]:
        """Occupied position names."""
        return {o.position for o in self.objects}

    def at(self, position: str) -> Shape | None:
        """The object at a named position, if any."""
        return next((o for o in self.objects if o.position == position), None)


@dataclass(frozen=True)
class Question:
    """A question about a scene with its one-word answer, and the indices (into ``scene.objects``) of the
    objects it is about (empty when none is: "how many shapes", "is there a ...?" answered "no")."""

    category: str
    question: str
    answer: str
    objects: tuple[int, ...] = ()


@dataclass(frozen=True)
class Edit:
    """An edit triple: source scene, instruction, edited scene (plus what changed, for scoring)."""

    kind: str
    source: Scene
    instruction: str
    target: Scene
    obj: Shape
    new_colour: str | None = None
    new_position: str | None = None
    details: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------- sampling
def _random_shape(rng: random.Random, position: str, jitter: bool = True) -> Shape:
    return Shape(
        shape=rng.choice(SHAPES),
        colour=rng.choice(list(COLOURS)),
        position=position,
        size=rng.choice(list(SIZES)),
        dx=rng.uniform(-POSITION_JITTER, POSITION_JITTER) if jitter else 0.0,
        dy=rng.uniform(-POSITION_JITTER, POSITION_JITTER) if jitter else 0.0,
        scale=rng.uniform(1 - SIZE_JITTER, 1 + SIZE_JITTER) if jitter else 1.0,
    )


def make_scene(seed: int, max_objects: int = 3, jitter: bool = True) -> Scene:
    """The scene of a seed: a background and 1..``max_objects`` shapes at distinct random positions."""
    rng = random.Random(f"scene:{seed}")
    n = rng.randint(1, max_objects)
    positions = rng.sample(list(POSITIONS), n)
    objects = tuple(_random_shape(rng, p, jitter) for p in positions)
    return Scene(background=rng.choice(list(BACKGROUNDS)), objects=objects, seed=seed)


def scene_seeds(split: str, count: int, start: int = 0) -> list[int]:
    """Seeds of a split (``"train"`` or ``"heldout"``): disjoint ranges, so no scene is in both."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', not {split!r}")
    base = TRAIN_SEED_BASE if split == "train" else HELDOUT_SEED_BASE
    return [base + start + i for i in range(count)]


def make_scenes(split: str, count: int, start: int = 0, max_objects: int = 3) -> list[Scene]:
    """``count`` scenes of a split."""
    return [make_scene(s, max_objects) for s in scene_seeds(split, count, start)]


# ------------------------------------------------------------------------------------------- rendering
def _polygon(o: Shape, side: int) -> np.ndarray | None:
    cx, cy = o.centre()
    r = o.radius()
    if o.shape == "square":
        pts = [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    elif o.shape == "triangle":
        pts = [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    else:
        return None
    return np.round(np.array(pts) * side * 16).astype(np.int32)  # 4 fractional bits


def render(scene: Scene, size: int = 512) -> np.ndarray:
    """Draw a scene: uint8 RGB [size, size, 3], anti-aliased edges."""
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = BACKGROUNDS[scene.background]
    for o in scene.objects:
        colour = tuple(int(c) for c in COLOURS[o.colour])
        poly = _polygon(o, size)
        if poly is None:
            cx, cy = o.centre()
            centre = (round(cx * size * 16), round(cy * size * 16))
            cv2.circle(img, centre, round(o.radius() * size * 16), colour, -1, cv2.LINE_AA, shift=4)
        else:
            cv2.fillPoly(img, [poly], colour, cv2.LINE_AA, shift=4)
    return img


def render_labels(scene: Scene, size: int = 512) -> np.ndarray:
    """Object index map (uint8 [size, size]): 0 background, ``k + 1`` where ``scene.objects[k]`` is drawn
    (no anti-aliasing; later objects on top, as in :func:`render`)."""
    labels = np.zeros((size, size), dtype=np.uint8)
    for k, o in enumerate(scene.objects):
        poly = _polygon(o, size)
        if poly is None:
            cx, cy = o.centre()
            centre = (round(cx * size * 16), round(cy * size * 16))
            cv2.circle(labels, centre, round(o.radius() * size * 16), k + 1, -1, cv2.LINE_8, shift=4)
        else:
            cv2.fillPoly(labels, [poly], k + 1, cv2.LINE_8, shift=4)
    return labels


# ------------------------------------------------------------------------------------------- language
def caption(scene: Scene, rng: random.Random | None = None, with_background: bool = True) -> str:
    """``"a small red circle on the left and a large blue square at the top, on a white background"``.

    Objects are listed in the scene's order, or shuffled by ``rng``.
    """
    objects = list(scene.objects)
    if rng is not None:
        rng.shuffle(objects)
    parts = [f"a {o.describe()} {POSITION_PHRASES[o.position]}" for o in objects]
    text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"{text}, on a {scene.background} background" if with_background else text


def parse_caption(text: str) -> Scene:
    """The scene a caption in the world's own phrasing describes (the inverse of :func:`caption`).

    Accepts ``"a small red circle on the left and a large blue square at the top, on a white background"``;
    the background part is optional (white). Raises ``ValueError`` naming the part it cannot read.
    """
    body = text.strip().rstrip(".").lower()
    background = "white"
    if ", on a " in body:
        body, tail = body.rsplit(", on a ", 1)
        background = tail.removesuffix(" background").strip()
        if background not in BACKGROUNDS:
            raise ValueError(f"unknown background {background!r} (one of: {', '.join(BACKGROUNDS)})")
    parts = [p.strip() for chunk in body.split(" and ") for p in chunk.split(", ") if p.strip()]
    phrases = {phrase: name for name, phrase in POSITION_PHRASES.items()}
    objects: list[Shape] = []
    for part in parts:
        words = part.removeprefix("a ").split(" ", 3)
        position = phrases.get(words[3]) if len(words) == 4 else None
        if (
            len(words) != 4
            or words[0] not in SIZES
            or words[1] not in COLOURS
            or words[2] not in SHAPES
            or position is None
        ):
            raise ValueError(
                f"cannot read {part!r}: expected 'a SIZE COLOUR SHAPE POSITION' with SIZE one of "
                f"{'/'.join(SIZES)}, COLOUR one of {'/'.join(COLOURS)}, SHAPE one of {'/'.join(SHAPES)}, "
                f"POSITION one of: {', '.join(POSITION_PHRASES.values())}"
            )
        objects.append(Shape(words[2], words[1], position, words[0]))
    if not 1 <= len(objects) <= 3:
        raise ValueError(f"a scene holds one to three shapes, the caption names {len(objects)}")
    if len({o.position for o in objects}) != len(objects):
        raise ValueError("two shapes share a position")
    return Scene(background, tuple(objects))


def reference(scene: Scene, o: Shape) -> str:
    """The shortest unambiguous name of ``o`` in ``scene``: ``"circle"``, ``"red circle"`` or a position."""
    if sum(x.shape == o.shape for x in scene.objects) == 1:
        return o.shape
    if sum(x.shape == o.shape and x.colour == o.colour for x in scene.objects) == 1:
        return f"{o.colour} {o.shape}"
    return f"{o.shape} {POSITION_PHRASES[o.position]}"


def _plural(shape: str) -> str:
    return shape + "s"


def questions(scene: Scene, rng: random.Random) -> list[Question]:
    """One question per category (colour, shape, count, position, yes/no), each with a one-word answer."""
    objs = list(scene.objects)
    out: list[Question] = []
    k = rng.randrange(len(objs))
    o = objs[k]
    out.append(Question("colour", f"what colour is the {reference(scene, o)}?", o.colour, (k,)))
    k = rng.randrange(len(objs))
    o = objs[k]
    out.append(Question("shape", f"what shape is {POSITION_PHRASES[o.position]}?", o.shape, (k,)))
    if rng.random() < 0.5:
        out.append(Question("count", "how many shapes are there?", NUMBERS[len(objs)]))
    else:
        s = rng.choice(SHAPES)
        which = tuple(i for i, x in enumerate(objs) if x.shape == s)
        out.append(Question("count", f"how many {_plural(s)} are there?", NUMBERS[len(which)], which))
    kinds = [(x.colour, x.shape) for x in objs]
    unique = [i for i, kind in enumerate(kinds) if kinds.count(kind) == 1]
    if unique:
        k = rng.choice(unique)
        o = objs[k]
        out.append(Question("position", f"where is the {o.colour} {o.shape}?", o.position, (k,)))
    if rng.random() < 0.5:
        o = rng.choice(objs)
        which = tuple(i for i, x in enumerate(objs) if (x.colour, x.shape) == (o.colour, o.shape))
        out.append(Question("yesno", f"is there a {o.colour} {o.shape}?", "yes", which))
    else:
        present = {(x.colour, x.shape) for x in objs}
        absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present]
        c, s = rng.choice(absent)
        out.append(Question("yesno", f"is there a {c} {s}?", "no"))
    return out


def all_questions(scene: Scene, rng: random.Random, per_category: int = 1) -> list[Question]:
    """``per_category`` rounds of :func:`questions`, duplicates removed (order kept)."""
    seen: set[str] = set()
    out: list[Question] = []
    for _ in range(per_category):
        for q in questions(scene, rng):
            if q.question not in seen:
                seen.add(q.question)
                out.append(q)
    return out


# ------------------------------------------------------------------------------------------- editing
def make_edit(scene: Scene, rng: random.Random, kind: str | None = None) -> Edit:
    """A random edit of ``scene``: recolour an object, remove one (scenes of two or more), or move one.

    The edited scene keeps the background and every other object (jitter included); a moved object keeps
    its shape, colour, size and jitter at the new position.
    """
    kinds = [k for k in EDIT_KINDS if k != "remove" or len(scene.objects) > 1]
    kinds = [k for k in kinds if k != "move" or len(scene.objects) < len(POSITIONS)]
    if kind is None:
        kind = rng.choice(kinds)
    elif kind not in kinds:
        raise ValueError(f"edit {kind!r} does not apply to this scene")
    o = rng.choice(scene.objects)
    ref = reference(scene, o)
    others = [x for x in scene.objects if x is not o]
    if kind == "recolour":
        colour = rng.choice([c for c in COLOURS if c != o.colour])
        new = replace(o, colour=colour)
        objects = tuple(new if x is o else x for x in scene.objects)
        return Edit(
            kind,
            scene,
            f"make the {ref} {colour}",
            replace(scene, objects=objects, seed=-1),
            o,
            new_colour=colour,
        )
    if kind == "remove":
        return Edit(kind, scene, f"remove the {ref}", replace(scene, objects=tuple(others), seed=-1), o)
    free = [p for p in POSITIONS if p not in scene.positions()]
    pos = rng.choice(free)
    new = replace(o, position=pos)
    objects = tuple(new if x is o else x for x in scene.objects)
    return Edit(
        kind,
        scene,
        f"move the {ref} {MOVE_PHRASES[pos]}",
        replace(scene, objects=objects, seed=-1),
        o,
        new_position=pos,
    )


def edit_into(target: Scene, rng: random.Random, kind: str | None = None) -> Edit:
    """An edit whose result is ``target``: a source scene is drawn so that :func:`make_edit`-style
    instructions turn it into ``target`` (recolour: the object had another colour; remove: the source had one
    more object at a free position; move: the object stood at another free position).

    Lets training reuse a target's cached latents for editing.
    """
    kinds = [k for k in EDIT_KINDS if k != "remove" or len(target.objects) < 3]
    kinds = [k for k in kinds if k != "move" or len(target.objects) < len(POSITIONS)]
    if kind is None:
        kind = rng.choice(kinds)
    free = [p for p in POSITIONS if p not in target.positions()]
    if kind == "remove":
        extra = _random_shape(rng, rng.choice(free))
        source = replace(target, objects=(*target.objects, extra), seed=-1)
        return Edit(kind, source, f"remove the {reference(source, extra)}", target, extra)
    t = rng.choice(target.objects)
    if kind == "recolour":
        old = replace(t, colour=rng.choice([c for c in COLOURS if c != t.colour]))
        source = replace(target, objects=tuple(old if x is t else x for x in target.objects), seed=-1)
        return Edit(
            kind, source, f"make the {reference(source, old)} {t.colour}", target, old, new_colour=t.colour
        )
    old = replace(t, position=rng.choice(free))
    source = replace(target, objects=tuple(old if x is t else x for x in target.objects), seed=-1)
    return Edit(
        kind,
        source,
        f"move the {reference(source, old)} {MOVE_PHRASES[t.position]}",
        target,
        old,
        new_position=t.position,
    )


def edit_for_seed(seed: int, kind: str | None = None) -> Edit:
    """The edit triple of a seed (scene and edit both drawn from it)."""
    scene = make_scene(seed)
    rng = random.Random(f"edit:{seed}")
    if kind is not None and kind == "remove" and len(scene.objects) < 2:
        kind = None
    return make_edit(scene, rng, kind)


def language_corpus(count: int = 1500, seed: int = 0) -> list[str]:
    """The world's language for tokenizer training: captions, questions with answers and edit instructions
    of ``count`` training scenes, each inside the model's prompt templates, so that every word of the world
    (and of the templates) becomes one token and an object's phrase has the same token layout every time."""
    from mobile_o_ros import prompts

    rng = random.Random(f"corpus:{seed}")
    lines: list[str] = []
    for s in scene_seeds("train", count):
        scene = make_scene(s)
        lines.append(prompts.generation_prompt(caption(scene, rng)))
        for q in questions(scene, rng):
            lines.append(prompts.vqa_prompt(q.question) + q.answer)
        if len(scene.objects) > 1 or rng.random() < 0.5:
            lines.append(prompts.edit_prompt(make_edit(scene, rng).instruction))
    return lines
