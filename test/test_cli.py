"""The `mobile-o` CLI: real runs on the tiny checkpoint, and one-line errors with nonzero exits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from mobile_o_ros.cli import main

# The tests marked torch run a checkpoint folder (the torch backend); the export-folder ones need neither.
pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    img = np.zeros((240, 320, 3), np.uint8)
    cv2.circle(img, (100, 120), 50, (0, 0, 255), -1)
    cv2.imwrite(str(path), img)
    return path


@pytest.mark.slow
@pytest.mark.torch
def test_generate_edit_ask(tiny_checkpoint: Path, image_file: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen.png"
    assert (
        main(
            [
                "generate",
                str(tiny_checkpoint),
                "a red circle",
                "--steps",
                "2",
                "--seed",
                "3",
                "-o",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["seed"] == 3 and cv2.imread(str(out)).shape == (512, 512, 3)
    out2 = tmp_path / "edit.png"
    assert (
        main(
            [
                "edit",
                str(tiny_checkpoint),
                "--image",
                str(image_file),
                "make it blue",
                "--steps",
                "2",
                "-o",
                str(out2),
            ]
        )
        == 0
    )
    assert cv2.imread(str(out2)).shape == (512, 512, 3)
    capsys.readouterr()
    assert (
        main(
            [
                "ask",
                str(tiny_checkpoint),
                "--image",
                str(image_file),
                "what colour?",
                "--max-new-tokens",
                "4",
                "--json",
            ]
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert isinstance(answer["answer"], str) and answer["num_tokens"] <= 4


@pytest.mark.torch
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "{ckpt}", "", "-o", "{out}"], "empty prompt"),
        (["generate", "{ckpt}", "a cat", "--steps", "0", "-o", "{out}"], "steps must be >= 1"),
        (["generate", "{ckpt}", "a cat", "--guidance", "nan", "-o", "{out}"], "guidance must be finite"),
        (["generate", "{ckpt}", "a cat", "--guidance", "inf", "-o", "{out}"], "guidance must be finite"),
        (["generate", "{missing}", "a cat", "-o", "{out}"], "model not found"),
        (["edit", "{ckpt}", "--image", "{missing}", "x", "-o", "{out}"], "image not found"),
        (["edit", "{ckpt}", "--image", "{bad_image}", "x", "-o", "{out}"], "cannot read image"),
        (["ask", "{ckpt}", "--image", "{bad_image}", "what?"], "cannot read image"),
        (["ask", "{ckpt}", "--image", "{image}", "  "], "empty question"),
        (["generate", "{corrupt}", "a cat", "-o", "{out}"], "cannot read model.safetensors"),
        (["inspect"], "give either MODEL or --config"),
    ],
)
def test_bad_input_gives_one_line_and_nonzero_exit(
    argv: list[str], message: str, tiny_checkpoint: Path, image_file: Path, tmp_path: Path, capsys
) -> None:
    bad_image = tmp_path / "bad.png"
    bad_image.write_bytes(b"not a png")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes(b"\x01\x02")
    subs = {
        "ckpt": tiny_checkpoint,
        "out": tmp_path / "o.png",
        "missing": tmp_path / "missing",
        "bad_image": bad_image,
        "image": image_file,
        "corrupt": corrupt,
    }
    code = main([a.format(**subs) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("mobile-o: error:") and message in err[0], err


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "mobile_o_ros", "inspect", "--config", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_export_folder_runs_with_the_default_backend(
    tiny_export: Path, image_file: Path, tmp_path: Path, capsys
) -> None:
    """No ``--backend``: an export folder runs on onnxruntime for ask, generate and edit."""
    gen = tmp_path / "gen.png"
    assert (
        main(["generate", str(tiny_export), "a red circle", "--steps", "2", "--seed", "3", "-o", str(gen)])
        == 0
    )
    assert cv2.imread(str(gen)).shape == (512, 512, 3)
    edit = tmp_path / "edit.png"
    argv = [
        "edit",
        str(tiny_export),
        "--image",
        str(image_file),
        "make it blue",
        "--steps",
        "2",
        "-o",
        str(edit),
    ]
    assert main(argv) == 0
    assert cv2.imread(str(edit)).shape == (512, 512, 3)
    capsys.readouterr()
    argv = [
        "ask",
        str(tiny_export),
        "--image",
        str(image_file),
        "what colour?",
        "--max-new-tokens",
        "4",
        "--json",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    answer = json.loads(captured.out)
    assert isinstance(answer["answer"], str) and answer["num_tokens"] <= 4
    assert "error" not in captured.err


@pytest.mark.torch
@pytest.mark.parametrize(
    ("backend", "folder", "message", "code"),
    [
        ("torch", "export", "is an export folder", 2),
        ("onnxruntime", "checkpoint", "no manifest.json", 2),
        ("onnxruntime", "broken_export", "corrupt manifest.json", 2),
        ("tensorrt", "export", "cannot load", 1),  # no TensorRT here, or no engines built on a GPU
    ],
)
def test_backend_load_errors_are_one_line(
    backend: str,
    folder: str,
    message: str,
    code: int,
    tiny_checkpoint: Path,
    tiny_export: Path,
    image_file: Path,
    tmp_path: Path,
    capsys,
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    model = {"export": tiny_export, "checkpoint": tiny_checkpoint, "broken_export": broken}[folder]
    argv = ["ask", str(model), "--image", str(image_file), "what?", "--backend", backend]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mobile-o: error:") and message in err[0], err


def test_words_the_model_never_saw_are_named_and_it_still_runs(
    vocab_export: Path, image_file: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "dog.png"
    argv = [
        "generate",
        str(vocab_export),
        "a photo of a dog on a beach",
        "--steps",
        "1",
        "-o",
        str(out),
        "--json",
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        "mobile-o: warning: the model never saw: photo, of, dog, beach; it knows: shapes "
    )
    assert json.loads(captured.out)["unknown_words"] == ["photo", "of", "dog", "beach"]
    assert cv2.imread(str(out)).shape[:2] == (512, 512)

    caption = "a small red circle on the left and a large blue square at the top, on a white background"
    assert main(["generate", str(vocab_export), caption, "--steps", "1", "-o", str(out)]) == 0
    argv = ["edit", str(vocab_export), "--image", str(image_file), "make the circle green", "--steps", "1"]
    assert main([*argv, "-o", str(out)]) == 0
    argv = ["ask", str(vocab_export), "--image", str(image_file), "what colour is the circle?"]
    assert main([*argv, "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().err == ""  # the world's own phrasing: no warning


@pytest.mark.torch
def test_the_embedded_model_warns_about_a_dog(image_file: Path, capsys) -> None:
    from mobile_o_ros.shapes import embedded_model_dir

    model = embedded_model_dir()
    if not (model / "model.safetensors").is_file():
        pytest.skip("the embedded model is not trained in this tree")
    argv = ["ask", str(model), "--image", str(image_file), "is there a dog on the beach?", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "mobile-o: warning: the model never saw: dog, beach; it knows:"
    )
    assert json.loads(captured.out)["answer"] in ("yes", "no", "Yes", "No")
