"""The embedded model's vocabulary and the unknown-word check (torch-free parts and the shapes world)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from mobile_o_ros import vocabulary
from mobile_o_ros.shapes import embedded_model_dir, world
from mobile_o_ros.shapes.vocabulary import world_vocabulary, write_vocabulary

pytestmark = pytest.mark.runtime


def test_the_shipped_vocabulary_is_the_worlds() -> None:
    shipped = json.loads((embedded_model_dir() / vocabulary.FILE_NAME).read_text())
    assert shipped == world_vocabulary(), (
        "regenerate: python -c 'from mobile_o_ros.shapes.vocabulary import ...'"
    )


def test_every_held_out_text_of_the_world_is_known() -> None:
    vocab = vocabulary.load(embedded_model_dir())
    assert vocab is not None
    rng = random.Random(7)
    for scene in world.make_scenes("heldout", 300):
        texts = [world.caption(scene, rng)] + [q.question for q in world.questions(scene, rng)]
        texts.append(world.make_edit(scene, rng).instruction)
        for text in texts:
            assert vocab.unknown(text) == [], text


def test_unknown_words_are_named_once_in_order() -> None:
    vocab = vocabulary.load(embedded_model_dir())
    assert vocab is not None
    assert vocab.unknown("a photo of a dog on a beach") == ["photo", "of", "dog", "beach"]
    assert vocab.unknown("A Dog, a DOG and a red circle!") == ["dog"]
    assert vocab.unknown("what color is the circle?") == ["color"]
    assert vocab.unknown("a small red circle on the left, on a white background") == []
    line = vocab.warning(["dog", "beach"])
    assert line.startswith(
        "the model never saw: dog, beach; it knows: shapes circle/square/triangle; colours "
    )
    assert "\n" not in line


def test_a_folder_without_a_vocabulary_knows_everything(tmp_path: Path) -> None:
    assert vocabulary.load(tmp_path) is None
    assert vocabulary.unknown_words(tmp_path, "a dog on a beach") == []
    (tmp_path / vocabulary.FILE_NAME).write_text("{not json")
    assert vocabulary.load(tmp_path) is None


def test_the_export_copies_and_records_the_vocabulary(tmp_path: Path) -> None:
    checkpoint, export = tmp_path / "ckpt", tmp_path / "export"
    checkpoint.mkdir()
    export.mkdir()
    manifest: dict = {"files": {}}
    vocabulary.add_to_export(checkpoint, export, manifest)
    assert manifest == {"files": {}} and not (export / vocabulary.FILE_NAME).exists()
    write_vocabulary(checkpoint)
    vocabulary.add_to_export(checkpoint, export, manifest)
    assert manifest["vocabulary"] == vocabulary.FILE_NAME and vocabulary.FILE_NAME in manifest["files"]
    assert vocabulary.unknown_words(export, "a dog") == ["dog"]


def test_the_runtime_names_unknown_words(vocab_export: Path, tiny_export: Path) -> None:
    from mobile_o_ros.runtime.engine import MobileORuntime

    runtime = MobileORuntime.load(vocab_export)
    assert runtime.unknown_words("a photo of a dog on a beach") == ["photo", "of", "dog", "beach"]
    assert runtime.unknown_words("make the red circle green") == []
    assert MobileORuntime.load(tiny_export).unknown_words("a dog") == []  # no vocabulary shipped


@pytest.mark.slow
@pytest.mark.torch
def test_mobile_o_export_ships_the_checkpoints_vocabulary(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from mobile_o_ros.export.onnx_export import export_model
    from mobile_o_ros.manifest import _sha256
    from mobile_o_ros.reference.checkpoint import load_checkpoint

    checkpoint = tmp_path / "ckpt"
    checkpoint.mkdir()
    for f in tiny_checkpoint.iterdir():
        (checkpoint / f.name).symlink_to(f)
    write_vocabulary(checkpoint)
    out = tmp_path / "export"
    manifest = export_model(load_checkpoint(checkpoint), out, only=["vision"])
    assert manifest["vocabulary"] == vocabulary.FILE_NAME
    assert manifest["files"][vocabulary.FILE_NAME] == _sha256(out / vocabulary.FILE_NAME)
    assert json.loads((out / "manifest.json").read_text())["vocabulary"] == vocabulary.FILE_NAME
    assert vocabulary.unknown_words(out, "a dog on a beach") == ["dog", "beach"]
