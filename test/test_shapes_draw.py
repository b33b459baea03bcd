"""``mobile-o draw-scene`` and the caption parser it uses: a scene a user can draw is one the world knows."""

from __future__ import annotations

import json
import random

import cv2
import numpy as np
import pytest

from mobile_o_ros.cli import main
from mobile_o_ros.shapes import world

pytestmark = pytest.mark.runtime


def test_every_held_out_caption_parses_back_to_its_scene() -> None:
    for i in range(300):
        scene = world.make_scene(world.HELDOUT_SEED_BASE + i)
        parsed = world.parse_caption(world.caption(scene))
        assert parsed.background == scene.background
        assert [(o.shape, o.colour, o.position, o.size) for o in parsed.objects] == [
            (o.shape, o.colour, o.position, o.size) for o in scene.objects
        ]


def test_a_caption_without_background_is_on_white() -> None:
    scene = world.parse_caption("a small red circle on the left")
    assert scene.background == "white"
    assert scene.objects == (world.Shape("circle", "red", "left", "small"),)


@pytest.mark.parametrize(
    ("caption", "names"),
    [
        ("a photo of a dog on a beach", "SIZE COLOUR SHAPE POSITION"),
        ("a small red circle on the left, on a pink background", "unknown background 'pink'"),
        ("a small red circle on the left and a large blue square on the left", "share a position"),
    ],
)
def test_a_caption_outside_the_world_is_refused_with_what_it_knows(caption: str, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        world.parse_caption(caption)


def test_draw_scene_writes_the_world_render_and_its_answers(tmp_path, capsys) -> None:
    out = tmp_path / "scene.png"
    caption = "a large red circle on the left and a small blue square at the top, on a grey background"
    assert main(["draw-scene", caption, "-o", str(out), "--size", "256", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["caption"] == caption
    expected = world.questions(world.parse_caption(caption), random.Random(0))
    assert [(q["question"], q["answer"]) for q in report["questions"]] == [
        (q.question, q.answer) for q in expected
    ]
    assert {q.category for q in expected} == set(world.QUESTION_CATEGORIES)
    rgb = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert np.array_equal(rgb, world.render(world.parse_caption(caption), 256))


def test_draw_scene_bad_input_is_one_line_and_exit_2(tmp_path, capsys) -> None:
    assert main(["draw-scene", "a dog", "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mobile-o: error: cannot read 'a dog'")
    assert main(["draw-scene", "a small red circle on the left", "--seed", "1", "-o", "x.png"]) == 2
    assert main(["draw-scene", "--seed", "1", "-o", str(tmp_path)]) == 2
