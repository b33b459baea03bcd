"""`mobile-o inspect` on the real configurations, built on the meta device (no weights)."""

from __future__ import annotations

import json

import pytest

from mobile_o_ros.cli import main

TIMESTEPS_20 = [
    999,
    982,
    963,
    944,
    922,
    899,
    874,
    847,
    817,
    785,
    749,
    710,
    666,
    617,
    562,
    499,
    428,
    345,
    249,
    136,
]
TIMESTEPS_15 = [999, 976, 950, 922, 891, 856, 817, 773, 723, 666, 599, 521, 428, 315, 176]


@pytest.fixture(scope="module")
def real_05b() -> dict:
    from mobile_o_ros.model_config import preset
    from mobile_o_ros.reference.inspect_model import inspect_config

    return inspect_config(preset("real-0.5b"), steps=20)


def test_real_05b_parameter_counts(real_05b: dict) -> None:
    c = real_05b["components"]
    assert c["mcp"]["parameters"] == 2_440_452
    assert c["mm_projector"]["parameters"] == 3_557_120
    assert c["dit"]["parameters"] == pytest.approx(591.7e6, rel=1e-3)
    assert c["llm"]["parameters"] == pytest.approx(494e6, rel=2e-3)
    assert c["llm"]["tied_embeddings"] is True
    assert c["vae"]["parameters"] == pytest.approx(312e6, rel=2e-3)
    assert c["vae"]["encoder_parameters"] + c["vae"]["decoder_parameters"] == c["vae"]["parameters"]
    assert c["vision"]["parameters"] == pytest.approx(125e6, rel=5e-3)
    assert real_05b["scheduler"]["timesteps"] == TIMESTEPS_20
    assert real_05b["latent_shape"] == [32, 16, 16] and real_05b["output_size"] == 512


def test_cli_inspect_json_steps_15(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "--config", "real-0.5b", "--steps", "15", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scheduler"]["timesteps"] == TIMESTEPS_15
    assert report["components"]["mcp"]["parameters"] == 2_440_452


def test_real_15b_is_selectable() -> None:
    from mobile_o_ros.model_config import preset
    from mobile_o_ros.reference.inspect_model import inspect_config

    c = inspect_config(preset("real-1.5b"), steps=2)["components"]
    assert c["mcp"]["parameters"] == 2_768_132
    assert c["mm_projector"]["parameters"] == 7_080_960


def test_inspect_tiny_checkpoint(tiny_checkpoint, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tiny_checkpoint), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["unknown_keys"] == []
    assert report["components"]["mcp"]["checkpoint_keys"] == 26
