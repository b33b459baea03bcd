"""The shapes world's vocabulary: the ``vocabulary.json`` the embedded model ships.

Built from the world's own lists (shapes, colours, sizes, positions, backgrounds, numbers, position and move
phrases) and from the words of the captions, questions and edit instructions it writes for a fixed range of
training scenes, so that every word the model was trained on is in it and nothing else.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from mobile_o_ros import vocabulary
from mobile_o_ros.shapes import world

#: Training scenes whose language is collected (the phrasing words of captions, questions and edits).
SCENES = 200


def _language(seeds: list[int]) -> tuple[list[str], list[str]]:
    """(captions, questions and answers; edit instructions of every kind) the world writes for ``seeds``."""
    texts: list[str] = []
    edits: list[str] = []
    for seed in seeds:
        scene = world.make_scene(seed)
        rng = random.Random(f"vocabulary:{seed}")
        texts.append(world.caption(scene, rng))
        texts += [t for q in world.questions(scene, rng) for t in (q.question, q.answer)]
        for kind in world.EDIT_KINDS:
            if kind != "remove" or len(scene.objects) > 1:
                edits.append(world.make_edit(scene, rng, kind).instruction)
    return texts, edits


def world_vocabulary() -> dict[str, Any]:
    """The content of the embedded model's ``vocabulary.json``."""
    lists = [
        *world.SHAPES,
        *world.COLOURS,
        *world.SIZES,
        *world.POSITIONS,
        *world.BACKGROUNDS,
        *world.NUMBERS,
        *world.POSITION_PHRASES.values(),
        *world.MOVE_PHRASES.values(),
    ]
    texts, edits = _language(world.scene_seeds("train", SCENES))
    words = sorted({w for t in (*lists, *texts, *edits) for w in vocabulary.words_of(t)})
    verbs = list(dict.fromkeys(e.split()[0] for e in edits))
    summary = (
        f"shapes {'/'.join(world.SHAPES)}; colours {'/'.join(world.COLOURS)}; sizes {'/'.join(world.SIZES)}; "
        f"positions {'/'.join(world.POSITIONS)}; backgrounds {'/'.join(world.BACKGROUNDS)}; "
        f"edits {'/'.join(verbs)}"
    )
    scene = world.make_scene(3)
    rng = random.Random("vocabulary:examples")
    examples = {
        "generate": world.caption(scene, rng),
        **{f"ask ({q.category})": q.question for q in world.questions(scene, rng)},
        **{f"edit ({e})": world.make_edit(scene, rng, e).instruction for e in ("recolour", "move")},
    }
    return {
        "format": vocabulary.FORMAT,
        "version": 1,
        "source": "the shapes world (mobile_o_ros/shapes/world.py)",
        "summary": summary,
        "examples": examples,
        "words": words,
    }


def write_vocabulary(folder: str | Path) -> Path:
    """Write :func:`world_vocabulary` as ``folder/vocabulary.json``; returns its path."""
    path = Path(folder) / vocabulary.FILE_NAME
    path.write_text(json.dumps(world_vocabulary(), indent=2) + "\n")
    return path
