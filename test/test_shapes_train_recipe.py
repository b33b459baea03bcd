"""The training recipe (shapes/train/recipe.py) and the shipped model's record of it."""

from __future__ import annotations

import dataclasses
import json

from mobile_o_ros.shapes import embedded_model_dir
from mobile_o_ros.shapes.train.recipe import Recipe


def test_shipped_model_was_trained_with_the_default_recipe() -> None:
    """The shipped model's training report holds the recipe that made it: the defaults, field for field, so
    that ``mobile-o train-demo OUT`` reproduces it."""
    report = json.loads((embedded_model_dir() / "training_report.json").read_text())
    assert list(report["recipe"]) == [f.name for f in dataclasses.fields(Recipe)]
    assert report["recipe"] == json.loads(json.dumps(dataclasses.asdict(Recipe())))
