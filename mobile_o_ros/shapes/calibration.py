"""The default int8 calibration set: renders, questions, captions and edits from the shapes world.

Drawn from the training split (never the held-out scenes :mod:`mobile_o_ros.shapes.selftest` scores), so a
quantized export of the embedded model is scored on data its calibration never saw. It is also the default
for real weights when the user gives no ``--calibration`` folder.
"""

from __future__ import annotations

import random

from mobile_o_ros.export.calibration import CalibrationSet
from mobile_o_ros.shapes import world

#: Scenes in the default set: each gives a render, a question, a caption and an edit instruction.
DEFAULT_ITEMS = 6
#: Where in the training split the calibration scenes start.
SEED_OFFSET = 50_000


def shapes_set(items: int = DEFAULT_ITEMS, render_size: int = 512) -> CalibrationSet:
    """``items`` training-split scenes: their renders (``render_size`` px), one question each (the
    categories in turn), their captions as generation prompts and one edit each (the kinds in turn)."""
    scenes = world.make_scenes("train", items, start=SEED_OFFSET)
    images = [world.render(s, render_size) for s in scenes]
    questions, prompts, instructions = [], [], []
    for i, scene in enumerate(scenes):
        rng = random.Random(f"calibration:{scene.seed}")
        asked = world.questions(scene, rng)
        questions.append(asked[i % len(asked)].question)
        prompts.append(world.caption(scene, rng))
        kind = world.EDIT_KINDS[i % len(world.EDIT_KINDS)]
        if kind == "remove" and len(scene.objects) < 2:
            kind = "recolour"
        instructions.append(world.make_edit(scene, rng, kind).instruction)
    return CalibrationSet(images, questions, prompts, instructions, "shapes world (train split)")


def calibration_set(folder: str | None = None) -> CalibrationSet:
    """The user's folder (:func:`~mobile_o_ros.export.calibration.folder_set`) when given, else
    :func:`shapes_set`."""
    from mobile_o_ros.export.calibration import folder_set

    return folder_set(folder) if folder else shapes_set()
