"""Camera frames for ``make demo``: held-out shapes-world scenes with their captions and known answers.

:func:`mobile_o_ros.demo.make_scenes` uses :func:`demo_scenes` when this package is importable. The scenes
come from their own slice of the held-out seed range (:data:`DEMO_OFFSET`), apart from the self-test's
VQA, generation and editing sets, so the demo never shows a training scene.
"""

from __future__ import annotations

import random

import numpy as np

from mobile_o_ros.scenes import Prompt, Scene
from mobile_o_ros.shapes import world

#: Offset of the demo's scenes inside the held-out range (the self-test uses 0, 100 000 and 200 000).
DEMO_OFFSET = 300_000
#: Seeds per demo seed: demo seed ``s`` draws scenes ``DEMO_OFFSET + SEED_STRIDE * s + i``.
SEED_STRIDE = 1000
#: Side of the rendered frames (the model's output size; the node resizes camera frames itself).
FRAME_SIZE = 512


def demo_scenes(n: int, seed: int = 0) -> list[Scene]:
    """``n`` held-out scenes as demo camera frames: RGB uint8 ``[512, 512, 3]`` renders, their captions, and
    one question per category (colour, shape, count, position, yes/no) with its one-word answer.

    Deterministic in ``(n, seed)``. The question list of scene ``i`` is rotated by ``i``, so a demo that asks
    only the first question or two of each scene still covers several categories.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    out: list[Scene] = []
    for i in range(n):
        s = world.HELDOUT_SEED_BASE + DEMO_OFFSET + SEED_STRIDE * seed + i
        scene = world.make_scene(s)
        qs = world.questions(scene, random.Random(f"demo:{s}"))
        k = i % len(qs)
        qa = [(q.question, q.answer) for q in qs[k:] + qs[:k]]
        edit = world.make_edit(scene, random.Random(f"demo-edit:{s}"))
        out.append(
            Scene(
                image=world.render(scene, FRAME_SIZE),
                caption=world.caption(scene),
                qa=qa,
                edit=edit.instruction,
                edit_check=lambda image, e=edit: _edit_check(e, image),
            )
        )
    return out


def demo_prompts(n: int, seed: int = 0) -> list[Prompt]:
    """Captions of ``n`` held-out scenes (after the camera's), each with the detector as its checker."""
    out = []
    for i in range(n):
        scene = world.make_scene(world.HELDOUT_SEED_BASE + DEMO_OFFSET + SEED_STRIDE * seed + 500 + i)
        out.append(Prompt(world.caption(scene), check=lambda image, sc=scene: _generation_check(sc, image)))
    return out


def _seen(detections: object) -> str:
    objects = getattr(detections, "objects", [])
    if not objects:
        return "saw no shape"
    return "saw " + ", ".join(f"{d.colour} {d.shape} {world.POSITION_PHRASES[d.position]}" for d in objects)


def _generation_check(scene: world.Scene, image: np.ndarray) -> tuple[bool, str]:
    from mobile_o_ros.shapes.detector import score_generation

    s = score_generation(scene, image)
    return s.correct, _seen(s.detections)


def _edit_check(edit: world.Edit, image: np.ndarray) -> tuple[bool, str]:
    from mobile_o_ros.shapes.detector import score_edit

    s = score_edit(edit, image)
    return s.correct, _seen(s.detections)
