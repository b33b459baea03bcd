"""What the demo shows: camera scenes with known answers and generation prompts, each optionally checked.

The demo (:mod:`mobile_o_ros.demo`) and the shapes world's demo frames
(:mod:`mobile_o_ros.shapes.demo_scenes`) both use these types; this module imports neither.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: A checker of an output image: (right?, what was seen), e.g. the shapes-world detector.
Check = Callable[[np.ndarray], tuple[bool, str]]


@dataclass
class Scene:
    """A synthetic camera frame with questions whose answers are known (and, optionally, an edit
    instruction that applies to it with a checker of the edited image)."""

    image: np.ndarray
    caption: str
    qa: list[tuple[str, str]] = field(default_factory=list)
    edit: str | None = None
    edit_check: Check | None = None


@dataclass
class Prompt:
    """A generation prompt, optionally with a checker of the generated image."""

    text: str
    check: Check | None = None
