"""The training driver (shapes/train/driver.py): the quick recipe end to end, stage (a)'s worker process."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mobile_o_ros.reference.checkpoint import load_checkpoint, read_shapes
from mobile_o_ros.shapes.train.driver import AutoencoderJob, shapes_model, train_demo
from mobile_o_ros.shapes.train.recipe import Recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shapes_quick")
    report = train_demo(out, seed=0, quick=True, log=lambda _m: None)
    return out, report


def test_quick_recipe_losses_fall_in_every_stage(quick_run: tuple[Path, dict]) -> None:
    _, report = quick_run
    assert set(report["stages"]) == {"autoencoder", "vision", "vqa", "conditioning", "dit", "joint"}
    for name, stage in report["stages"].items():
        assert stage["loss_last"] < stage["loss_first"], (name, stage)
    assert report["stages"]["vision"]["object_tokens_right_last"] >= 0.0  # reported (speed: not a test)


def test_autoencoder_stage_gives_the_same_weights_in_a_worker_process(tmp_path: Path) -> None:
    """Stage (a) runs in a spawned worker during (b1)/(b2); its seed alone fixes the weights."""
    reports, vaes = {}, {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the worker, so that both runs reduce in the same order
    try:
        for parallel in (True, False):
            model, _ = shapes_model(tmp_path / str(parallel), seed=0)
            recipe = dataclasses.replace(Recipe.quick(), ae_steps=3, parallel_autoencoder=parallel)
            with AutoencoderJob(model, recipe, 123, lambda _m: None) as job:
                reports[parallel] = job.result()
            vaes[parallel] = model.vae.state_dict()
    finally:
        torch.set_num_threads(threads)
    assert reports[True].losses == pytest.approx(reports[False].losses, rel=1e-4)
    for k, v in vaes[True].items():
        assert torch.allclose(v, vaes[False][k], atol=1e-5), k


def test_quick_checkpoint_loads_strictly(quick_run: tuple[Path, dict]) -> None:
    out, _ = quick_run
    loaded = load_checkpoint(out)
    assert loaded.config.name == "shapes"
    assert loaded.config.latent_shape == (32, 16, 16) and loaded.config.output_size == 128
    assert loaded.config.image_size == 256 and loaded.config.num_image_tokens == 64
    shapes = read_shapes(out)
    assert any(k.startswith("model.vision_tower.vision_tower.model.") for k in shapes)
    assert any(k.endswith("reparam_conv.weight") for k in shapes)  # released (folded) vision form
    assert (out / "model.safetensors").stat().st_size < 30 * 2**20
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["mobile_o_ros"]["vae"]["scaling_factor"] != 0.41407  # re-measured by stage (a)
