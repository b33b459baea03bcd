"""`mobile-o generate/edit` images: one seed gives one image on every backend, and --dtype bf16/fp16 run."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from mobile_o_ros.cli import main
from mobile_o_ros.export.parity import psnr

pytestmark = pytest.mark.slow

PROMPT = "a blue sphere"
INSTRUCTION = "make it blue"
SEED = "11"


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    img = np.zeros((240, 320, 3), np.uint8)
    cv2.circle(img, (100, 120), 50, (0, 0, 255), -1)
    cv2.rectangle(img, (200, 60), (280, 140), (0, 255, 0), -1)
    cv2.imwrite(str(path), img)
    return path


def _run(task: str, model: Path, image_file: Path, out: Path, *extra: str) -> np.ndarray:
    """One CLI run of ``task`` with the shared prompt and seed; returns the PNG it wrote."""
    if task == "generate":
        argv = ["generate", str(model), PROMPT]
    else:
        argv = ["edit", str(model), "--image", str(image_file), INSTRUCTION]
    assert main([*argv, "--seed", SEED, "-o", str(out), *extra]) == 0
    image = cv2.imread(str(out), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (512, 512, 3)
    return image


@pytest.mark.parametrize("task", ["generate", "edit"])
def test_one_seed_gives_one_image_on_torch_and_onnxruntime(
    task: str, tiny_checkpoint: Path, tiny_export: Path, image_file: Path, tmp_path: Path
) -> None:
    """The checkpoint on torch and its export with no --backend: the same seed, the same image."""
    ref = _run(task, tiny_checkpoint, image_file, tmp_path / "torch.png", "--backend", "torch")
    rt = _run(task, tiny_export, image_file, tmp_path / "export.png")
    assert psnr(ref, rt) >= 40.0, f"{task}: {psnr(ref, rt):.2f} dB"


@pytest.mark.parametrize("task", ["generate", "edit"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_runs_and_stays_close_to_fp32(
    task: str, dtype: str, tiny_checkpoint: Path, image_file: Path, tmp_path: Path
) -> None:
    """--dtype bf16/fp16 on the torch backend writes an image close to the fp32 one."""
    fp32 = _run(task, tiny_checkpoint, image_file, tmp_path / "fp32.png", "--backend", "torch")
    low = _run(task, tiny_checkpoint, image_file, tmp_path / f"{dtype}.png", "--dtype", dtype)
    value = psnr(fp32, low)
    assert np.isfinite(value) or np.array_equal(fp32, low)
    assert value > 20.0, f"{task} {dtype}: {value:.2f} dB"
