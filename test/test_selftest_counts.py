"""``mobile-o selftest --limit N`` runs N items of each task, and says what it runs before it starts."""

from __future__ import annotations

import json

import pytest

from mobile_o_ros.shapes import embedded_model_dir, selftest, world

pytestmark = pytest.mark.runtime


def test_limits_are_items_per_task() -> None:
    assert selftest.split(7, world.EDIT_KINDS) == {"recolour": 3, "remove": 2, "move": 2}
    for n in (1, 3, 7, 20):
        assert len(selftest.vqa_items(n)) == n and len(selftest.editing_items(n)) == n
        assert len(selftest.generation_items(n)) == n
    questions = selftest.vqa_items(20)
    assert [sum(q.category == c for _, q in questions) for c in world.QUESTION_CATEGORIES] == [4] * 5


def test_the_default_sample_is_the_model_cards() -> None:
    assert selftest.DEFAULT_LIMITS == {"vqa": 500, "generation": 60, "editing": 60}
    edits = selftest.editing_items(selftest.DEFAULT_LIMITS["editing"])
    assert [sum(e.kind == k for e in edits) for k in world.EDIT_KINDS] == [20, 20, 20]
    plan = selftest.plan(selftest.DEFAULT_LIMITS, ("vqa", "generation", "editing"))
    assert plan == [
        "VQA: 500 questions on held-out scenes (100 colour, 100 shape, 100 count, 100 position, 100 yesno)",
        "generation: 60 captions of held-out scenes",
        "editing: 60 held-out edits (20 recolour, 20 remove, 20 move)",
    ]


@pytest.mark.slow
@pytest.mark.torch
def test_the_cli_says_what_it_runs_and_runs_that(capsys) -> None:
    if not (embedded_model_dir() / "model.safetensors").is_file():
        pytest.skip("the embedded model is not trained in this tree")
    from mobile_o_ros.cli import main

    assert main(["selftest", "--limit", "3", "--tasks", "vqa", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines()[0] == (
        "selftest: VQA: 3 questions on held-out scenes (1 colour, 1 shape, 1 count, 0 position, 0 yesno)"
    )
    result = json.loads(captured.out)
    assert result["vqa"]["n"] == 3 and result["limits"]["vqa"] == 3
    assert set(result["vqa"]) >= {"colour", "shape", "count"} and "yesno" not in result["vqa"]
